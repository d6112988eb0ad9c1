"""Stage build_model through a real `dvc repro` in a copy of the repo: bundle, MLflow run, no-op rerun."""

from __future__ import annotations

import json

import mlflow
import pytest


@pytest.mark.slow  # a real `dvc repro` in a repo copy: Prefect + MLflow start-up dominate (1-3 min)
def test_dvc_repro_build_model(repo_copy, run):
    run(repo_copy, "dvc", "repro", "build_model")
    assert (repo_copy / "models/base/config.json").is_file()
    info = json.loads((repo_copy / "results/model.json").read_text())
    assert info["source"] == "tiny" and info["parameters"] > 100_000

    mlflow.set_tracking_uri(f"sqlite:///{repo_copy / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["mgpo"], output_format="list")
    assert [r.data.tags["mgpo.stage"] for r in runs] == ["build_model"]
    assert runs[0].data.metrics["parameters"] == info["parameters"]
    assert runs[0].data.params["model.source"] == "tiny"
    assert len(runs[0].data.tags["mgpo.git_commit"]) >= 40

    again = run(repo_copy, "dvc", "repro", "build_model")
    assert "didn't change, skipping" in again.stdout or "is cached" in again.stdout
    assert len(mlflow.search_runs(experiment_names=["mgpo"], output_format="list")) == 1
