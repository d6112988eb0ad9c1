"""Stage `evaluate`: fail-fast CLI errors, and a real `dvc repro -s evaluate` in a repo copy
(Prefect flow, MLflow run with metrics and artifacts, DVC metrics and plots, no-op rerun)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml

from components.config import SyntheticConfig, load_params
from components.data.parquet import write_records
from components.data.synthetic import generate_split, split_specs
from components.models.tiny import build_tiny_bundle
from flows.cli import main

ROOT = Path(__file__).resolve().parents[2]


def write_params(path: Path, evaluate: dict) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["evaluate"].update(evaluate)
    data["promote"]["parent"] = ""  # these evaluations leave the sft model out
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_model_and_missing_benchmark_fail_before_any_work(tmp_path, capsys):
    params = write_params(
        tmp_path / "p.yaml", {"benchmarks": {"synthetic_test": str(tmp_path / "none.parquet")}}
    )
    assert main(["evaluate", "--params", str(params), "--model", "ghost"]) == 2
    assert "evaluate.models has no model ['ghost']" in capsys.readouterr().err
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    params = write_params(
        tmp_path / "q.yaml",
        {
            "models": {"rl": str(tmp_path / "m")},
            "benchmarks": {"synthetic_test": str(tmp_path / "none.parquet")},
        },
    )
    assert main(["evaluate", "--params", str(params)]) == 2
    assert "evaluate.benchmarks.synthetic_test: benchmark file" in capsys.readouterr().err


def small_model_cfg():
    return load_params(
        ROOT / "params.yaml",
        [
            "model.text.hidden_size=64",
            "model.text.num_layers=1",
            "model.text.mrope_section=[2, 3, 3]",
            "model.vision.hidden_size=32",
            "model.vision.depth=1",
            "model.vocab_size=400",
        ],
    ).model


@pytest.mark.slow
def test_dvc_repro_evaluate(repo_copy, run):
    repo = repo_copy
    build_tiny_bundle(small_model_cfg(), repo / "models/base", ROOT / "components/templates.yaml")
    for name in ("sft", "rl"):  # stand-ins for trained models: the same tiny bundle
        shutil.copytree(repo / "models/base", repo / "models" / name)
    cfg = SyntheticConfig(width=1024, height=768, test=3)
    for spec in split_specs(cfg):
        if spec.name in ("test", "scale_sweep"):
            spec = spec if spec.name == "test" else type(spec)(**{**spec.__dict__, "count": 4, "per_size": 2})
            write_records(
                repo / f"data/processed/synthetic/{spec.name}.parquet", generate_split(cfg, 0, spec)
            )
    data = yaml.safe_load((repo / "params.yaml").read_text())
    data["evaluate"].update(
        {
            "models": {"base": "models/base", "rl": "models/rl"},
            "benchmarks": {
                "synthetic_test": "data/processed/synthetic/test.parquet",
                "scale_sweep": "data/processed/synthetic/scale_sweep.parquet",
            },
            "max_samples": 3,
            "batch_size": 3,
            "report_cards": 2,
        }
    )
    data["episode"]["max_new_tokens"] = 8
    data["promote"]["parent"] = ""  # sft is not evaluated here
    (repo / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    env = {"OMP_NUM_THREADS": "1"}  # 2 shared cores: one torch thread is much faster under load
    run(repo, "dvc", "repro", "-s", "evaluate", env=env, timeout=900)
    out = repo / "results/evaluate"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"base", "rl"}
    assert set(metrics["base"]) == {"synthetic_test", "scale_sweep"}
    assert set(metrics["base"]["synthetic_test"]) == {"direct", "mgpo", "oracle"}
    assert metrics["rl"]["scale_sweep"]["mgpo"]["n"] == 3
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 3 * 3
    assert (out / "report.html").read_text().count('class="card ') == 2 * 2 * 3 * 2

    shown = json.loads(run(repo, "dvc", "metrics", "show", "--json", env=env).stdout)
    flat = json.dumps(shown)
    assert "accuracy_ci_low" in flat and "valid_box_ratio" in flat
    run(repo, "dvc", "plots", "show", "-o", "dvc_plots", env=env)
    html = (repo / "dvc_plots/index.html").read_text()
    assert "accuracy_by_category.png" in html and "accuracy_vs_target_size.png" in html

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    (mrun,) = mlflow.search_runs(experiment_names=["mgpo"], output_format="list")
    assert mrun.data.tags["mgpo.stage"] == "evaluate"
    assert (
        mrun.data.metrics["base.synthetic_test.mgpo.accuracy"]
        == metrics["base"]["synthetic_test"]["mgpo"]["accuracy"]
    )
    assert mrun.data.params["evaluate.max_samples"] == "3"
    client = mlflow.MlflowClient()
    files = {a.path for a in client.list_artifacts(mrun.info.run_id)}
    assert {"metrics.json", "predictions.jsonl", "report.html", "plots"} <= files
    plots = {a.path for a in client.list_artifacts(mrun.info.run_id, "plots")}
    assert plots == {"plots/accuracy_by_category.png", "plots/accuracy_vs_target_size.png"}

    again = run(repo, "dvc", "repro", "-s", "evaluate", env=env)
    assert "didn't change, skipping" in again.stdout or "is cached" in again.stdout
