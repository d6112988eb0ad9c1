"""Load any Qwen2.5-VL-style model: a bundle folder, a Hugging Face id, or `models:/<name>@<alias>`.

`trust_remote_code` is passed through from params and is off by default: a hub repo's own code
never runs unless the user turns it on.
"""

from __future__ import annotations

from pathlib import Path


class ModelNotFound(FileNotFoundError):
    """A model reference resolves to nothing loadable."""


def resolve_model(ref: str) -> str:
    """Return a local folder or hub id for `ref`; registry URIs are downloaded through MLflow."""
    if ref.startswith("models:/"):
        import mlflow

        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=ref)
        except Exception as exc:  # MLflow raises several types for a missing alias/version
            raise ModelNotFound(f"registry model {ref} cannot be downloaded: {exc}") from None
        # Models are logged as a folder artifact holding the Hugging Face files.
        found = next(iter(sorted(Path(path).rglob("config.json"))), None)
        if found is None:
            raise ModelNotFound(f"registry model {ref} holds no config.json")
        return str(found.parent)
    if Path(ref).exists():
        if not (Path(ref) / "config.json").is_file():
            raise ModelNotFound(f"model folder {ref} has no config.json")
        return ref
    if ref.count("/") == 1 and not ref.startswith((".", "/")):
        return ref  # a hub id; loading fails with the hub's own message when offline
    raise ModelNotFound(f"model {ref} is neither a folder, a hub id nor a models:/ URI")


def load_processor(ref: str, trust_remote_code: bool = False):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(resolve_model(ref), trust_remote_code=trust_remote_code)


def load_model(ref: str, trust_remote_code: bool = False, dtype=None):
    import torch
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(
        resolve_model(ref), trust_remote_code=trust_remote_code, dtype=dtype or torch.float32
    )


def load_bundle(ref: str, trust_remote_code: bool = False, dtype=None):
    """(model, processor) for a folder, hub id or registry URI."""
    return load_model(ref, trust_remote_code, dtype), load_processor(ref, trust_remote_code)


# Files a Hugging Face model folder needs; anything else in a hub repo (other weight formats,
# READMEs, images) is left behind.
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.py"]


def materialize_external(ref: str, dest: str | Path, trust_remote_code: bool = False) -> dict:
    """Copy an external model (hub id, local folder or `models:/` URI) into `dest` and describe it.

    The pipeline's later stages read `paths.base_model` like any folder, and DVC versions it, so
    the base model is a real copy rather than a pointer that can change under the pipeline. The
    files are copied (not loaded), so a 7B model needs disk, not memory. The copy is written
    next to `dest` and renamed into place, so a failure leaves no half-written model.
    """
    import shutil

    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    local = Path(ref).exists() or ref.startswith("models:/")
    if local:
        src = Path(resolve_model(ref))
        if src.resolve() == dest.resolve():
            return describe_external(str(dest), trust_remote_code)
        shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(".git", "*.partial"))
    else:
        resolve_model(ref)  # raises ModelNotFound for a malformed id
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(ref, local_dir=tmp, allow_patterns=MODEL_FILES)
        except Exception as exc:  # offline, unknown repo, gated repo: the hub's message says which
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelNotFound(f"model.source {ref}: cannot download it ({exc})") from None
        shutil.rmtree(tmp / ".cache", ignore_errors=True)
    try:
        info = describe_external(str(tmp), trust_remote_code)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    info["source"] = ref
    info["bundle_bytes"] = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    return info


def describe_external(ref: str, trust_remote_code: bool = False) -> dict:
    """Check that an external model's config and processor load; record what was found."""
    from transformers import AutoConfig

    path = resolve_model(ref)
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    processor = load_processor(path, trust_remote_code)
    return {
        "source": ref,
        "model_type": config.model_type,
        "architectures": getattr(config, "architectures", None),
        "processor": type(processor).__name__,
        "config": config.to_dict(),
    }
