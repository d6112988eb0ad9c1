"""Lineage: tie every MLflow run and model version to the DVC hashes and git commit behind it.

A stage run under `dvc repro` (DVC sets `DVC_ROOT` and `DVC_STAGE` for the command) is tagged
at its start with the git commit, the DVC hash of each of its dependencies and an *inputs
digest* over those hashes and the stage's params values: exactly what DVC will write for the
stage into `dvc.lock` once it succeeds. Outputs are hashed by DVC only after the command ends,
so `finalize` reads `dvc.lock` afterwards, finds the run whose inputs digest matches the locked
entry (the content, not a guess by time) and tags it, and the model versions it registered, with
the output hashes. The pipeline flow finalizes each stage as it ends; the promote stage
finalizes every locked stage, so plain `dvc repro` gets complete lineage too.

From `models:/<name>@champion` a person reads the version's tags (data hashes, stage, commit),
its run (params), and `git checkout <commit> && dvc checkout` restores the data:

    python -m components.lineage models:/mgpo-embedded@champion
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

PREFIX = "mgpo.dvc."
STAGE_TAG = PREFIX + "stage"
DIGEST_TAG = PREFIX + "inputs_digest"
MANAGED_TAG = PREFIX + "managed"
FINALIZED_TAG = PREFIX + "finalized"
ERROR_TAG = PREFIX + "error"
DEP_TAG = PREFIX + "dep."
OUT_TAG = PREFIX + "out."
GIT_TAG = "mgpo.git_commit"


class LineageError(RuntimeError):
    """dvc.yaml or dvc.lock cannot be read for lineage; the message names the file or stage."""


def tag_key(prefix: str, path: str) -> str:
    # MLflow tag keys allow letters, digits, '_', '-', '.', ' ', '/': anything else becomes '_'.
    return prefix + re.sub(r"[^\w\-./ ]", "_", path)


def inputs_digest(deps: dict[str, str], params: dict[str, Any]) -> str:
    """Content digest of a stage's inputs: dependency hashes and params values (canonical JSON)."""
    blob = json.dumps({"deps": deps, "params": params}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def dvc_context(env: dict[str, str] | None = None) -> tuple[str, str] | None:
    """(repo root, stage name) when this process is a stage command run by DVC, else None."""
    env = os.environ if env is None else env
    root, stage = env.get("DVC_ROOT"), env.get("DVC_STAGE")
    if not root or not stage:
        return None
    # DVC addresses a stage of a dvc.yaml outside the root as `path/dvc.yaml:name`.
    return root, stage.rsplit(":", 1)[-1]


def _hash_value(entry: dict) -> str:
    # dvc.lock 2.0 entries: {path, hash: md5, md5: ..., size, nfiles}; older ones carry only md5.
    name = entry.get("hash", "md5")
    return str(entry.get(name) or entry.get("md5") or entry.get("etag") or "")


def read_lock(root: str | Path) -> dict[str, dict]:
    """Each locked stage of `dvc.lock` as {deps: {path: hash}, outs: {path: hash}, params: {...}}."""
    path = Path(root) / "dvc.lock"
    if not path.is_file():
        return {}
    from dvc.utils.serialize import YAMLFileCorruptedError, parse_yaml

    # DVC's own YAML 1.2 reader: PyYAML (YAML 1.1) reads a float DVC wrote as `2e-05` as a
    # string, so the lock's params would never equal the values DVC hashed at the stage's start.
    try:
        data = parse_yaml(path.read_text(), str(path)) or {}
    except YAMLFileCorruptedError as exc:
        raise LineageError(f"{path} is not valid YAML: {exc}") from exc
    stages = data.get("stages") or {}
    out: dict[str, dict] = {}
    for name, entry in stages.items():
        out[name] = {
            "deps": {d["path"]: _hash_value(d) for d in entry.get("deps") or []},
            "outs": {o["path"]: _hash_value(o) for o in entry.get("outs") or []},
            "params": entry.get("params") or {},
        }
    return out


def lock_digest(entry: dict) -> str:
    return inputs_digest(entry["deps"], entry["params"])


def current_inputs(root: str | Path, stage: str) -> dict:
    """The stage's dependency hashes and params values now, computed by DVC itself.

    They are what DVC records in dvc.lock when the stage succeeds, so the digest of these
    equals `lock_digest` of the entry written afterwards.
    """
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo:
            # An absolute address: DVC resolves bare stage names against the current directory.
            (st,) = repo.stage.collect(f"{Path(root).resolve() / 'dvc.yaml'}:{stage}")
            deps: dict[str, str] = {}
            params: dict[str, Any] = {}
            for dep in st.deps:
                if isinstance(dep, ParamsDependency):
                    params[dep.def_path] = dep.get_hash().value or {}
                else:
                    deps[dep.def_path] = str(dep.get_hash().value or "")
    except Exception as exc:  # DVC raises many types (missing dep, bad dvc.yaml, no such stage)
        raise LineageError(f"DVC cannot hash the inputs of stage {stage!r} in {root}: {exc}") from exc
    return {"deps": deps, "params": params}


def start_tags(stage: str | None = None, env: dict[str, str] | None = None) -> dict[str, str]:
    """Tags for a stage run at its start: DVC stage, dependency hashes and the inputs digest.

    Outside `dvc repro` (a stage run by hand) the run is marked unmanaged: its inputs are
    whatever the working tree holds and DVC will not vouch for them.
    """
    ctx = dvc_context(env)
    if ctx is None:
        return {MANAGED_TAG: "false", **({STAGE_TAG: stage} if stage else {})}
    root, dvc_stage = ctx
    tags = {MANAGED_TAG: "true", STAGE_TAG: dvc_stage}
    try:
        inputs = current_inputs(root, dvc_stage)
    except LineageError as exc:
        # Lineage must not kill a training run; the gap is recorded on the run instead.
        print(f"lineage: {exc}", file=sys.stderr)
        return {**tags, ERROR_TAG: str(exc)[:5000]}
    tags[DIGEST_TAG] = inputs_digest(inputs["deps"], inputs["params"])
    tags.update({tag_key(DEP_TAG, p): h for p, h in inputs["deps"].items()})
    return tags


def _experiment_ids(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def find_stage_run(client, stage: str, digest: str, parent_run_id: str | None = None):
    """The newest finished run of `stage` whose inputs digest is `digest` (None if none)."""
    query = f"tags.`{STAGE_TAG}` = '{stage}' and tags.`{DIGEST_TAG}` = '{digest}' and attributes.status = 'FINISHED'"
    if parent_run_id:
        query += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
    runs = client.search_runs(
        _experiment_ids(client), query, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0] if runs else None


def finalize(client, root: str | Path, stage: str, parent_run_id: str | None = None) -> str | None:
    """Tag the run that produced `stage`'s locked outputs (and its model versions) with them.

    Returns the run id, or None when the stage is not locked or no run matches (e.g. it was
    skipped by DVC and its run was finalized before, or it logs no MLflow run).
    """
    entry = read_lock(root).get(stage)
    if entry is None:
        return None
    run = find_stage_run(client, stage, lock_digest(entry), parent_run_id)
    if run is None:
        return None
    tags = {tag_key(OUT_TAG, p): h for p, h in entry["outs"].items()}
    tags[FINALIZED_TAG] = "true"
    for key, value in tags.items():
        client.set_tag(run.info.run_id, key, value)
    for version in client.search_model_versions(f"run_id = '{run.info.run_id}'"):
        for key, value in tags.items():
            client.set_model_version_tag(version.name, version.version, key, value)
    return run.info.run_id


def finalize_all(client, root: str | Path) -> dict[str, str | None]:
    """Finalize every stage locked in dvc.lock; {stage: run id or None}."""
    return {stage: finalize(client, root, stage) for stage in read_lock(root)}


def version_tags(run_tags: dict[str, str]) -> dict[str, str]:
    """The lineage tags of a run that a model version registered from it should carry."""
    return {k: v for k, v in run_tags.items() if k.startswith(PREFIX) or k in (GIT_TAG, "mgpo.stage")}


def describe(model_uri: str) -> dict:
    """Everything needed to rebuild a registered model: version, run, commit, params, hashes."""
    from mlflow import MlflowClient

    match = re.fullmatch(r"models:/([^@/]+)(?:@([^/]+)|/(\d+))", model_uri)
    if not match:
        raise LineageError(f"{model_uri!r} is not models:/<name>@<alias> or models:/<name>/<version>")
    name, alias, number = match.groups()
    client = MlflowClient()
    version = (
        client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    )
    run = client.get_run(version.run_id) if version.run_id else None
    return {
        "model": name,
        "version": str(version.version),
        "aliases": list(version.aliases),
        "run_id": version.run_id,
        "stage": version.tags.get("mgpo.stage"),
        "git_commit": version.tags.get(GIT_TAG) or (run.data.tags.get(GIT_TAG) if run else None),
        "inputs": {k.removeprefix(DEP_TAG): v for k, v in version.tags.items() if k.startswith(DEP_TAG)},
        "outputs": {k.removeprefix(OUT_TAG): v for k, v in version.tags.items() if k.startswith(OUT_TAG)},
        "params": dict(run.data.params) if run else {},
        "promotion": {k: v for k, v in version.tags.items() if k.startswith("mgpo.promotion.")},
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Show the data, params and code behind a registered model.")
    parser.add_argument("model_uri", help="models:/<name>@<alias> or models:/<name>/<version>")
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow URI (default: MLFLOW_TRACKING_URI or params)"
    )
    args = parser.parse_args(argv)
    import mlflow

    from components.config import load_params
    from components.tracking import tracking_uri

    uri = args.tracking_uri or tracking_uri(load_params("params.yaml").tracking)
    mlflow.set_tracking_uri(uri)
    print(json.dumps(describe(args.model_uri), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
