"""Stage `sft`: fail-fast CLI errors, and a real `dvc repro -s sft` in a repo copy (trajectories
from the shared episode, the local trainer on a small Qwen2.5-VL, Prefect flow, MLflow run with
per-step metrics and the loss curve, the registered version with alias `sft`, `--resume`)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pyarrow.parquet as pq
import pytest
import yaml

from components.config import SyntheticConfig, load_params
from components.data.parquet import write_records
from components.data.synthetic import generate_split, split_specs
from components.models.tiny import build_tiny_bundle
from flows.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_missing_inputs_fail_before_any_work(tmp_path, capsys):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["paths"]["base_model"] = str(tmp_path / "nothing")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    assert main(["sft", "--params", str(tmp_path / "p.yaml")]) == 2
    assert "paths.base_model:" in capsys.readouterr().err
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    data["paths"]["base_model"] = str(tmp_path / "m")
    data["sft"]["train_data"] = str(tmp_path / "none.parquet")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(data))
    assert main(["sft", "--params", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert "sft.train_data:" in err and "none.parquet not found; run `mgpo prepare`" in err


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
def test_dvc_repro_sft_then_resume(repo_copy, run):
    repo = repo_copy
    build_tiny_bundle(small_model_cfg(), repo / "models/base", ROOT / "components/templates.yaml")
    cfg = SyntheticConfig(width=1024, height=768, train=6)
    train = next(s for s in split_specs(cfg) if s.name == "train")
    write_records(repo / "data/processed/synthetic/train.parquet", generate_split(cfg, 0, train))
    data = yaml.safe_load((repo / "params.yaml").read_text())
    data["sft"].update(
        {"max_steps": 4, "samples_per_micro_batch": 2, "micro_batches_per_step": 1, "checkpoint_every": 2,
         "warmup_steps": 1, "missing_box_share": 0.3, "max_seq_len": 2048}
    )  # fmt: skip
    (repo / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    env = {"OMP_NUM_THREADS": "1"}  # 2 shared cores: one torch thread is much faster under load
    run(repo, "dvc", "repro", "-s", "sft", env=env, timeout=900)

    metrics = json.loads((repo / "results/sft/metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["backend"] == "local" and metrics["trajectories"] == 6
    assert metrics["final_loss"] > 0 and metrics["seconds_per_step"] > 0
    built = json.loads((repo / "results/sft/trajectories.json").read_text())
    assert built["records"] == 6 and built["written"] == 6 and built["skipped_too_long"] == 0
    table = pq.read_table(repo / "data/sft/train.parquet")
    assert {"messages", "images"} <= set(table.column_names) and table.num_rows == 6
    assert (repo / "models/sft/config.json").is_file() and (repo / "models/sft/tokenizer.json").is_file()
    assert (repo / "results/sft/loss.png").stat().st_size > 5000
    assert len((repo / "results/sft/steps.csv").read_text().splitlines()) == 5

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    (mrun,) = mlflow.search_runs(experiment_names=["mgpo"], output_format="list")
    assert mrun.data.tags["mgpo.stage"] == "sft" and mrun.data.params["sft.max_steps"] == "4"
    client = mlflow.MlflowClient()
    for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
        assert [m.step for m in client.get_metric_history(mrun.info.run_id, key)] == [1, 2, 3, 4], key
    files = {a.path for a in client.list_artifacts(mrun.info.run_id, "sft")}
    assert {"sft/loss.png", "sft/metrics.json", "sft/steps.csv", "sft/trajectories.json"} <= files
    version = client.get_model_version_by_alias("mgpo-embedded", "sft")
    assert version.run_id == mrun.info.run_id

    # A longer run resumes from the step-4 checkpoint and continues to step 6 on the same data.
    run(repo, "mgpo", "sft", "--resume", "-S", "sft.max_steps=6", env=env, timeout=900)
    metrics = json.loads((repo / "results/sft/metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["resumed_from"] == 4
    assert int(client.get_model_version_by_alias("mgpo-embedded", "sft").version) == int(version.version) + 1
