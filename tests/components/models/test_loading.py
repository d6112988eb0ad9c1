"""External base models: copied into paths.base_model atomically, described, refused by name."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
from test_tiny import ROOT, small_cfg

from components.models.loading import ModelNotFound, load_bundle, materialize_external
from components.models.tiny import build_tiny_bundle


@pytest.fixture(scope="module")
def external(tmp_path_factory) -> Path:
    """A model folder standing in for a downloaded Qwen2.5-VL (same files, same loaders)."""
    out = tmp_path_factory.mktemp("external") / "qwen-like"
    build_tiny_bundle(small_cfg(), out, ROOT / "components" / "templates.yaml")
    (out / "README.md").write_text("not a model file")
    return out


def test_a_local_folder_is_copied_and_loads(external, tmp_path):
    dest = tmp_path / "models" / "base"
    info = materialize_external(str(external), dest)
    assert info["source"] == str(external)
    assert info["model_type"] == "qwen2_5_vl" and info["processor"].startswith("Qwen2")
    assert sorted(f.name for f in dest.iterdir()) == sorted(f.name for f in external.iterdir())
    assert info["bundle_bytes"] == sum(f.stat().st_size for f in dest.iterdir())
    model, processor = load_bundle(str(dest))
    assert model.config.model_type == "qwen2_5_vl" and processor.tokenizer is not None
    assert not (tmp_path / "models" / "base.partial").exists()


def test_a_folder_without_a_model_keeps_the_old_base(external, tmp_path):
    dest = tmp_path / "base"
    materialize_external(str(external), dest)
    before = sorted(f.name for f in dest.iterdir())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ModelNotFound, match=r"broken has no config\.json"):
        materialize_external(str(broken), dest)
    assert sorted(f.name for f in dest.iterdir()) == before
    assert not (tmp_path / "base.partial").exists()


def test_an_unreachable_hub_id_names_model_source(tmp_path, monkeypatch):
    """No hub is reachable here; offline mode makes snapshot_download fail at once."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFound, match=r"model.source Qwen/Qwen2.5-VL-7B-Instruct: cannot download"):
        materialize_external("Qwen/Qwen2.5-VL-7B-Instruct", tmp_path / "base")
    assert list(tmp_path.iterdir()) == []


def test_the_base_folder_itself_is_only_described(external, tmp_path):
    dest = tmp_path / "base"
    materialize_external(str(external), dest)
    info = materialize_external(str(dest), dest)
    assert info["model_type"] == "qwen2_5_vl" and (dest / "config.json").is_file()
