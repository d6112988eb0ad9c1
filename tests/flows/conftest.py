"""Fixtures of the flow tests: a small real DVC repository whose stages open real MLflow runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

STAGE_SCRIPT = """
import os, pathlib, sys
from components.config import Tracking
from components.tracking import stage_run

stage = sys.argv[1]
with stage_run(stage, Tracking(), {"toy": {"stage": stage}}):
    out = pathlib.Path("out") / stage
    out.mkdir(parents=True, exist_ok=True)
    (out / "part.txt").write_text("written before any failure")
    mode = pathlib.Path(f"fail_{stage}")
    if mode.exists():
        counter = pathlib.Path(f"attempts_{stage}")
        n = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(n))
        if mode.read_text().strip() == "transient-once" and n == 1:
            print("ERROR: Unable to acquire lock: another dvc process holds it", flush=True)
            sys.exit(1)
        if mode.read_text().strip() == "fatal":
            raise ValueError(f"stage {stage}: bad input")
    (out / "done.txt").write_text(stage)
"""

# Only what differs from the defaults of components/config/ (so it stays valid as sections grow).
TOY_PARAMS = """
prepare:
  seed: 0
evaluate:
  models: {sft: models/sft, rl: models/rl}
  benchmarks: {synthetic_test: data/processed/synthetic/test.parquet}
pipeline:
  retry_delay_s: 0
"""

DVC_YAML = """
stages:
  b:
    cmd: python stage.py b
    deps: [stage.py, out/a, b_input.txt]
    outs: [out/b]
  a:
    cmd: python stage.py a
    deps: [stage.py]
    params: [prepare.seed]
    outs: [out/a]
"""


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True)


def make_toy_repo(repo: Path, link_code: bool = False) -> Path:
    """A git + DVC repository with the two toy stages, committed.

    `link_code` adds symlinks to the project's `flows/` and `components/` and its prefect.yaml,
    for deployments whose entrypoints are paths relative to the working directory.
    """
    repo.mkdir(parents=True)
    (repo / "params.yaml").write_text(TOY_PARAMS)
    (repo / "stage.py").write_text(STAGE_SCRIPT)
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "b_input.txt").write_text("first")
    (repo / ".gitignore").write_text("mlflow.db\nmlruns/\nfail_*\nattempts_*\nflows\ncomponents\n")
    if link_code:
        for name in ("flows", "components", "prefect.yaml"):
            (repo / name).symlink_to(ROOT / name)
    _git(repo, "init", "-q")
    subprocess.run([str(VENV_BIN / "dvc"), "init", "-q"], cwd=repo, check=True)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "toy")
    return repo


def toy_env(repo: Path) -> dict[str, str]:
    """Environment for processes working in the toy repo: the venv first, the project importable."""
    return {
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{repo}/mlflow.db",
    }


@pytest.fixture
def toy_repo(tmp_path, monkeypatch) -> Path:
    """Two stages `a` -> `b` (see STAGE_SCRIPT); cwd, PATH, PYTHONPATH and MLflow point at it."""
    repo = make_toy_repo(tmp_path / "toy")
    monkeypatch.chdir(repo)
    for key, value in toy_env(repo).items():
        monkeypatch.setenv(key, value)
    return repo


@pytest.fixture
def linked_toy_repo(tmp_path) -> tuple[Path, dict[str, str]]:
    """The toy repository with the project's flows, components and prefect.yaml linked in,
    and the environment for processes working in it (the current process is left alone)."""
    repo = make_toy_repo(tmp_path / "toy", link_code=True)
    return repo, toy_env(repo)
