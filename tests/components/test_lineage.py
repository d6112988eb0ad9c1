"""Lineage: DVC hashes on stage runs and model versions, matched through dvc.lock (real DVC, real MLflow)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from components import lineage
from components.config import Tracking
from components.tracking import register_model_dir, stage_run

VENV_BIN = Path(sys.executable).parent

LOCK = """schema: '2.0'
stages:
  train:
    cmd: python train.py
    deps:
    - path: data/train
      hash: md5
      md5: 0123456789abcdef0123456789abcdef.dir
      size: 10
      nfiles: 1
    - path: train.py
      md5: fedcba9876543210fedcba9876543210
    params:
      params.yaml:
        rl.lr: 0.001
    outs:
    - path: models/rl
      hash: md5
      md5: 11111111111111111111111111111111.dir
"""


def test_read_lock_and_digest(tmp_path):
    (tmp_path / "dvc.lock").write_text(LOCK)
    entry = lineage.read_lock(tmp_path)["train"]
    assert entry["deps"] == {
        "data/train": "0123456789abcdef0123456789abcdef.dir",
        "train.py": "fedcba9876543210fedcba9876543210",
    }
    assert entry["outs"] == {"models/rl": "11111111111111111111111111111111.dir"}
    digest = lineage.lock_digest(entry)
    assert digest == lineage.inputs_digest(dict(reversed(entry["deps"].items())), entry["params"])
    changed = {"params.yaml": {"rl.lr": 0.002}}
    assert lineage.inputs_digest(entry["deps"], changed) != digest
    assert lineage.read_lock(tmp_path / "nowhere") == {}


def test_bad_lock_is_named(tmp_path):
    (tmp_path / "dvc.lock").write_text("stages: [unclosed")
    with pytest.raises(lineage.LineageError, match=r"dvc.lock is not valid YAML"):
        lineage.read_lock(tmp_path)


def test_context_and_unmanaged_tags():
    assert lineage.dvc_context({}) is None
    assert lineage.dvc_context({"DVC_ROOT": "/r", "DVC_STAGE": "rl"}) == ("/r", "rl")
    assert lineage.dvc_context({"DVC_ROOT": "/r", "DVC_STAGE": "sub/dvc.yaml:rl"}) == ("/r", "rl")
    assert lineage.start_tags("rl", env={}) == {lineage.MANAGED_TAG: "false", lineage.STAGE_TAG: "rl"}


def test_tag_key_is_a_valid_mlflow_key():
    assert (
        lineage.tag_key(lineage.DEP_TAG, "data/processed/x.parquet")
        == "mgpo.dvc.dep.data/processed/x.parquet"
    )
    assert lineage.tag_key(lineage.DEP_TAG, "a:b*c") == "mgpo.dvc.dep.a_b_c"


@pytest.fixture
def dvc_repo(tmp_path) -> Path:
    """A git + DVC repo with one stage `make` (data/in.txt -> out/) already reproduced."""
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / "data/in.txt").write_text("input\n")
    (repo / "params.yaml").write_text("make:\n  size: 3\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n  make:\n    cmd: mkdir -p out && cp data/in.txt out/model.txt\n"
        "    deps: [data]\n    params: [make.size]\n    outs: [out]\n"
    )
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(VENV_BIN / "dvc"), "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(VENV_BIN / "dvc"), "repro", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=repo, check=True)
    return repo


def test_inputs_computed_now_match_what_dvc_locked(dvc_repo):
    now = lineage.current_inputs(dvc_repo, "make")
    entry = lineage.read_lock(dvc_repo)["make"]
    assert now["deps"] == entry["deps"] and now["deps"]["data"].endswith(".dir")
    assert now["params"] == {"params.yaml": {"make.size": 3}}
    assert lineage.inputs_digest(now["deps"], now["params"]) == lineage.lock_digest(entry)
    with pytest.raises(lineage.LineageError, match=r"stage 'nope'"):
        lineage.current_inputs(dvc_repo, "nope")


def test_a_float_dvc_writes_in_e_notation_still_matches(dvc_repo):
    """Regression: DVC writes 0.00002 to dvc.lock as `2e-05`, which YAML 1.1 reads as a string;
    the lock must be read the way DVC reads it, or no stage run ever matches its lock entry."""
    (dvc_repo / "params.yaml").write_text("make:\n  size: 3\n  lr: 0.00002\n")
    dvc_yaml = (dvc_repo / "dvc.yaml").read_text().replace("params: [make.size]", "params: [make]")
    (dvc_repo / "dvc.yaml").write_text(dvc_yaml)
    subprocess.run([str(VENV_BIN / "dvc"), "repro", "-q"], cwd=dvc_repo, check=True)
    assert "lr: 2e-05" in (dvc_repo / "dvc.lock").read_text()
    now = lineage.current_inputs(dvc_repo, "make")
    entry = lineage.read_lock(dvc_repo)["make"]
    assert entry["params"]["params.yaml"]["make"]["lr"] == 2e-05
    assert lineage.inputs_digest(now["deps"], now["params"]) == lineage.lock_digest(entry)


def test_stage_run_and_model_version_carry_lineage(dvc_repo, tmp_path, monkeypatch):
    """A stage run as DVC would start it: tags at the start, outputs after finalize, on run and version."""
    monkeypatch.chdir(dvc_repo)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("DVC_ROOT", str(dvc_repo))
    monkeypatch.setenv("DVC_STAGE", "make")
    cfg = Tracking(experiment="lineage-test", registered_model="lineage-model")
    with stage_run("make", cfg, {"make": {"size": 3}}) as run:
        version = register_model_dir(str(dvc_repo / "out"), cfg, alias="candidate")
    entry = lineage.read_lock(dvc_repo)["make"]
    client = MlflowClient()
    tags = client.get_run(run.info.run_id).data.tags
    assert tags[lineage.STAGE_TAG] == "make" and tags[lineage.MANAGED_TAG] == "true"
    assert tags[lineage.DIGEST_TAG] == lineage.lock_digest(entry)
    assert tags["mgpo.dvc.dep.data"] == entry["deps"]["data"]
    assert tags["mgpo.git_commit"].startswith(
        subprocess.check_output(["git", "rev-parse", "HEAD"], text=True).strip()
    )
    vtags = client.get_model_version(cfg.registered_model, version.version).tags
    assert vtags["mgpo.dvc.dep.data"] == entry["deps"]["data"] and vtags["mgpo.stage"] == "make"

    assert lineage.finalize(client, dvc_repo, "make") == run.info.run_id
    assert client.get_run(run.info.run_id).data.tags["mgpo.dvc.out.out"] == entry["outs"]["out"]

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    info = lineage.describe("models:/lineage-model@candidate")
    assert info["run_id"] == run.info.run_id and info["version"] == str(version.version)
    assert info["inputs"] == {"data": entry["deps"]["data"]}
    assert info["outputs"] == {"out": entry["outs"]["out"]}
    assert info["params"]["make.size"] == "3" and info["git_commit"] == tags["mgpo.git_commit"]

    # Inputs that DVC has not locked (a changed param) match no run: finalize tags nothing.
    (dvc_repo / "params.yaml").write_text("make:\n  size: 4\n")
    subprocess.run([str(VENV_BIN / "dvc"), "repro", "-q"], cwd=dvc_repo, check=True)
    assert lineage.finalize(client, dvc_repo, "make") is None
    with pytest.raises(lineage.LineageError, match="is not models:/"):
        lineage.describe("runs:/abc/model")
