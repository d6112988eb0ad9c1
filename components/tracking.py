"""MLflow helpers shared by every stage: one run per stage, tagged for lineage.

A stage run is tagged with the stage name, the git commit, the DVC hashes of its inputs (see
components/lineage.py) and its params section (logged as params and as a YAML artifact). When
`MGPO_PARENT_RUN_ID` is set (the pipeline flow sets it for `dvc repro`), the stage run becomes a
child of that pipeline run; a stage run opened while another run is active in the process (the
`mgpo science` sweep) becomes a child of that run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from components.config import Tracking

PARENT_ENV = "MGPO_PARENT_RUN_ID"


class TrackingUnavailable(RuntimeError):
    """The MLflow tracking server cannot be reached."""


def tracking_uri(cfg: Tracking) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri


def git_commit(cwd: str | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=cwd, timeout=10
        )
        commit = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=cwd,
            timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts/lists to dotted keys with string values (for MLflow params and tags)."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix.rstrip(".")] = str(data)[:6000]
    return out


def answers(url: str, timeout: float = 5.0) -> str | None:
    """None when something answers HTTP at `url`, else why not.

    Any HTTP status counts as an answer (a 401 from a server behind authentication is up);
    only a refused, reset or silent connection does not.
    """
    try:
        urllib.request.urlopen(url, timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", None) or exc)
    return None


def unreachable(uri: str, timeout: float = 5.0) -> str | None:
    """The one-line error for an HTTP tracking server that does not answer, else None.

    A local store (sqlite:///..., a folder) is not a server: nothing to check.
    """
    if not uri.startswith(("http://", "https://")):
        return None
    why = answers(uri.rstrip("/") + "/health", timeout)
    if why is None:
        return None
    return (
        f"MLflow tracking server {uri} is unreachable ({why}); start it (`mlflow server --port PORT`) "
        "or point MLFLOW_TRACKING_URI (or tracking.uri) at a running one, or at sqlite:///mlflow.db"
    )


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the server, when an HTTP tracking server does not answer."""
    why = unreachable(uri, timeout)
    if why:
        raise TrackingUnavailable(why)


def configure(cfg: Tracking) -> str:
    import mlflow

    uri = tracking_uri(cfg)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(cfg.experiment)
    return uri


@contextlib.contextmanager
def stage_run(
    stage: str, cfg: Tracking, sections: dict[str, Any], tags: dict[str, str] | None = None
) -> Iterator:
    """Open the MLflow run of one stage; log its params sections and lineage tags."""
    import mlflow

    from components.lineage import start_tags

    configure(cfg)
    commit = git_commit()
    all_tags = {
        "mgpo.stage": stage,
        "mgpo.git_commit": commit,
        "mlflow.source.git.commit": commit.removesuffix("-dirty"),
        # DVC hashes of the stage's inputs and their digest (components/lineage.py).
        **start_tags(stage),
        **(tags or {}),
    }
    parent = os.environ.get(PARENT_ENV)
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    # Inside another run (a sweep such as `mgpo science` runs stages in one process): a child of it.
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_name=stage, tags=all_tags, nested=nested) as run:
        params: dict[str, str] = {}
        for name, section in sections.items():
            params.update(flatten(section, f"{name}."))
            dumped = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
            mlflow.log_dict(dumped, f"params/{name}.yaml")
        # MLflow caps a batch at 100 params.
        items = list(params.items())
        for i in range(0, len(items), 100):
            mlflow.log_params(dict(items[i : i + 100]))
        yield run


def register_model_dir(model_dir: str, cfg: Tracking, alias: str, tags: dict[str, str] | None = None):
    """Log a Hugging Face model folder to the active run and register it as a new version.

    The version gets `alias` (sft, candidate, champion) and the given tags; it links back to
    the run that produced it. Returns the ModelVersion.
    """
    import mlflow
    from mlflow import MlflowClient

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("register_model_dir needs an active MLflow run (use stage_run)")
    from components.lineage import version_tags

    mlflow.log_artifacts(model_dir, artifact_path="model")
    client = MlflowClient()
    # The version carries its run's lineage (stage, commit, input hashes) so that
    # models:/<name>@<alias> alone leads back to data, params and code.
    lineage = version_tags(client.get_run(run.info.run_id).data.tags)
    # create_model_version, not mlflow.register_model: the latter insists on an MLflow-format
    # model (an MLmodel file) and refuses a plain Hugging Face folder.
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(cfg.registered_model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version = client.create_model_version(
        cfg.registered_model,
        source=f"{run.info.artifact_uri}/model",
        run_id=run.info.run_id,
        tags={**lineage, **(tags or {})},
    )
    client.set_registered_model_alias(cfg.registered_model, alias, version.version)
    client.set_model_version_tag(cfg.registered_model, version.version, "mgpo.alias_at_registration", alias)
    return version
