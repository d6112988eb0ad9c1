"""Stage prepare through a real `dvc repro prepare` in a copy of the repo (small params):
datasets on disk, verl-shaped parquet, the MLflow run with manifests and contact sheets,
a no-op rerun, and a clear failure when too many benchmark rows are bad."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "components" / "data"))
import benchfiles as bf

SMALL = {
    "width": 512,
    "height": 384,
    "train": 4,
    "val": 2,
    "test": 4,
    "scale_sweep": {"sizes": [0.1, 0.2], "per_size": 1},
    "split_4k": {"count": 1, "width": 640, "height": 360},
}


def small_params(repo: Path, **prepare) -> None:
    path = repo / "params.yaml"
    data = yaml.safe_load(path.read_text())
    data["prepare"]["synthetic"].update(SMALL)
    data["prepare"].update(prepare)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.slow
def test_dvc_repro_prepare(repo_copy, run):
    bf.vstar_parquet(repo_copy / "data/raw/vstar.parquet")  # 2 good rows, 1 without a label
    small_params(
        repo_copy,
        max_skipped_fraction=0.5,
        benchmarks=[{"name": "vstar", "kind": "vstar", "path": "vstar.parquet", "split": "test"}],
    )
    out = run(repo_copy, "dvc", "repro", "prepare")
    assert "prepare: {" in out.stdout

    processed = repo_copy / "data/processed"
    manifest = json.loads((processed / "synthetic/manifest.json").read_text())
    assert {s: e["rows"] for s, e in manifest["splits"].items()} == {
        "train": 4, "val": 2, "test": 4, "scale_sweep": 2, "test_4k": 1,
    }  # fmt: skip
    assert manifest["oracle"]["overall"]["n"] >= 1
    vstar = json.loads((processed / "vstar/manifest.json").read_text())
    assert vstar["splits"]["test"]["rows"] == 2 and [s["id"] for s in vstar["skipped"]] == ["q2"]
    assert (processed / "synthetic/contact_sheet.png").stat().st_size > 1000

    mlflow.set_tracking_uri(f"sqlite:///{repo_copy / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["mgpo"], output_format="list")
    assert [r.data.tags["mgpo.stage"] for r in runs] == ["prepare"]
    metrics = runs[0].data.metrics
    assert metrics["synthetic.train.rows"] == 4 and metrics["vstar.skipped"] == 1
    assert "synthetic.oracle.all.crop_accuracy" in metrics and metrics["synthetic.images_per_s"] > 0
    client = mlflow.MlflowClient()
    names = {
        f.path
        for d in ("datasets/synthetic", "datasets/vstar")
        for f in client.list_artifacts(runs[0].info.run_id, d)
    }
    assert names == {
        "datasets/synthetic/manifest.json",
        "datasets/synthetic/contact_sheet.png",
        "datasets/vstar/manifest.json",
        "datasets/vstar/contact_sheet.png",
    }

    again = run(repo_copy, "dvc", "repro", "prepare")
    assert "didn't change, skipping" in again.stdout or "is cached" in again.stdout

    # too many bad rows: the command fails with one clear line naming the dataset and the reason
    bad = subprocess.run(
        ["mgpo", "prepare", "-S", "prepare.max_skipped_fraction=0.1"],
        cwd=repo_copy,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
        timeout=900,
    )
    assert bad.returncode == 1
    assert "mgpo prepare: dataset vstar: 1 of 3 input rows skipped (33.3%)" in bad.stderr
    assert "q2: missing field 'label'" in bad.stderr
