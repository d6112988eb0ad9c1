"""Stage `rl`: fail-fast input errors, the verl dispatch, and a real `dvc repro -s rl` in a repo
copy (the local GRPO trainer on a small Qwen2.5-VL, Prefect flow, MLflow run with per-step
metrics, emergence plot, the registered version with alias `candidate`), then a trainer killed
with SIGKILL mid-run and resumed with `--resume` to the same step count."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
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
VENV_BIN = Path(sys.executable).parent


def write_params(tmp_path: Path, data: dict) -> Path:
    out = tmp_path / "p.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def test_missing_inputs_fail_before_any_work(tmp_path, capsys):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["paths"]["sft_model"] = str(tmp_path / "nothing")
    assert main(["rl", "--params", str(write_params(tmp_path, data))]) == 2
    err = capsys.readouterr().err
    assert "paths.sft_model:" in err and "run `mgpo sft`" in err
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    data["paths"]["sft_model"] = str(tmp_path / "m")
    data["rl"]["val_data"] = str(tmp_path / "none.parquet")
    data["rl"]["train_data"] = str(tmp_path / "none.parquet")
    assert main(["rl", "--params", str(write_params(tmp_path, data))]) == 2
    assert "rl.train_data:" in capsys.readouterr().err


def test_the_step_limit_decides_by_default_and_a_clock_stop_says_so():
    """Default params: no time budget, so the step count (and DVC's outputs) do not depend on
    the machine's load; a run the clock stopped says so in metrics.json and its last line."""
    from components.config import RLConfig
    from components.rl.checkpoint import TrainerState
    from flows.rl import local_summary, stop_line

    cfg = load_params(ROOT / "params.yaml").rl
    assert cfg.time_budget_s == 0 == RLConfig().time_budget_s
    val = [{"step": 0, "val_mgpo_accuracy": 0.3}, {"step": 7, "val_mgpo_accuracy": 0.4}]
    history = [{"step": i + 1, "seconds_per_step": 9.0} for i in range(7)]
    state = TrainerState(step=7, elapsed_s=70.0, history=history, val_history=val)

    budget = cfg.model_copy(update={"time_budget_s": 60.0})
    summary = local_summary(budget, state, "time_budget")
    assert summary["val_sampled_rollouts"] == cfg.val_sampled_rollouts == 2  # sampled validation is on
    assert summary["stopped_by"] == "time_budget" and (summary["steps"], summary["max_steps"]) == (7, 20)
    line = stop_line(summary)
    assert line.startswith("rl: stopped by the time budget after 7/20 steps (rl.time_budget_s=60)")
    assert "rl.time_budget_s=0" in line  # the fix

    state.step, state.history = 20, [{"step": i + 1, "seconds_per_step": 9.0} for i in range(20)]
    summary = local_summary(cfg, state, "max_steps")
    assert (
        summary["stopped_by"] == "max_steps"
        and stop_line(summary) == "rl: stopped by max_steps after 20/20 steps"
    )
    assert stop_line({"backend": "verl", "job_id": "x"}) is None


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
            "model.max_pixels=12544",
        ],
    ).model


def test_verl_backend_dispatches_and_registers_the_candidate(tmp_path, monkeypatch, prefect_harness):
    """The verl job itself needs a Ray GPU cluster: `run_verl_rl` is replaced by a fake that
    leaves a merged model where verl's merger would. Shown here: the flow picks the backend,
    writes the stage's DVC outputs and registers the model with alias `candidate`."""
    import components.rl.verl_launch as verl_launch
    from flows.rl import rl_flow

    bundle = tmp_path / "merged"
    build_tiny_bundle(small_model_cfg(), bundle, ROOT / "components/templates.yaml")
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["rl"]["backend"] = "verl"
    data["paths"].update(rl_model=str(tmp_path / "rl"), rl_dir=str(tmp_path / "results"))
    data["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    seen = {}

    def fake_run_verl_rl(params):
        seen["backend"] = params.rl.backend
        shutil.copytree(bundle, params.paths.rl_model)
        return {"job_id": "raysubmit_fake", "status": "SUCCEEDED", "global_step": 3}

    monkeypatch.setattr(verl_launch, "run_verl_rl", fake_run_verl_rl)
    summary = rl_flow(str(write_params(tmp_path, data)), [])
    assert seen == {"backend": "verl"} and summary["backend"] == "verl"
    assert json.loads((tmp_path / "results/metrics.json").read_text())["job_id"] == "raysubmit_fake"
    assert (tmp_path / "results/emergence.png").is_file() and (tmp_path / "results/steps.csv").is_file()
    mlflow.set_tracking_uri(data["tracking"]["uri"])
    version = mlflow.MlflowClient().get_model_version_by_alias("mgpo-embedded", "candidate")
    assert str(version.version) == summary["registered_version"]


def _env() -> dict:
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_dvc_repro_rl_then_kill_and_resume(repo_copy, run):
    repo = repo_copy
    build_tiny_bundle(small_model_cfg(), repo / "models/sft", ROOT / "components/templates.yaml")
    cfg = SyntheticConfig(width=1024, height=768, train=4, val=2)
    specs = {s.name: s for s in split_specs(cfg)}
    for split in ("train", "val"):
        write_records(
            repo / f"data/processed/synthetic/{split}.parquet", generate_split(cfg, 0, specs[split])
        )
    data = yaml.safe_load((repo / "params.yaml").read_text())
    data["model"]["max_pixels"] = 12544
    data["episode"].update({"max_new_tokens": 6, "crop_max_pixels": 12544, "crop_min_pixels": 3136})
    data["rl"].update(
        {"max_steps": 2, "prompts_per_step": 2, "prompts_per_mini_batch": 1, "rollouts_per_prompt": 2,
         "checkpoint_every": 1, "val_every": 2, "val_samples": 2}
    )  # fmt: skip
    (repo / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    env = {"OMP_NUM_THREADS": "1"}  # 2 shared cores: one torch thread is much faster under load
    run(repo, "dvc", "repro", "-s", "rl", env=env, timeout=900)

    metrics = json.loads((repo / "results/rl/metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["mode"] == "mgpo" and metrics["stopped_by"] == "max_steps"
    assert metrics["val_before"]["step"] == 0 and metrics["val_after"]["step"] == 2
    assert "val_mgpo_valid_box_ratio" in metrics["val_after"] and metrics["seconds_per_step"] > 0
    for when in ("val_before", "val_after"):  # greedy and sampled, at the start and the end
        assert {"val_mgpo_accuracy", "val_sampled_mgpo_accuracy", "val_sampled_mgpo_crop_hit_ratio"} <= set(
            metrics[when]
        ), when
    assert metrics["val_sampled_rollouts"] == 2 and metrics["val_temperature"] == 1.0
    assert (repo / "results/rl/emergence.png").stat().st_size > 5000
    assert len((repo / "results/rl/steps.csv").read_text().splitlines()) == 3
    assert (repo / "models/rl/config.json").is_file()

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    (mrun,) = mlflow.search_runs(experiment_names=["mgpo"], output_format="list")
    assert mrun.data.tags["mgpo.stage"] == "rl" and mrun.data.params["rl.max_steps"] == "2"
    client = mlflow.MlflowClient()
    for key in (
        "reward_mean",
        "valid_box_ratio",
        "kl",
        "entropy",
        "clip_frac",
        "grad_norm",
        "seconds_per_step",
    ):
        assert [m.step for m in client.get_metric_history(mrun.info.run_id, key)] == [1, 2], key
    for key in ("val_mgpo_accuracy", "val_sampled_mgpo_accuracy", "val_sampled_mgpo_valid_box_ratio"):
        assert [m.step for m in client.get_metric_history(mrun.info.run_id, key)] == [0, 2], key
    assert {"rl/emergence.png", "rl/metrics.json", "rl/steps.csv"} <= {
        a.path for a in client.list_artifacts(mrun.info.run_id, "rl")
    }
    version = client.get_model_version_by_alias("mgpo-embedded", "candidate")
    assert version.run_id == mrun.info.run_id

    # Kill a longer run after its step-2 checkpoint; --resume ends at the same step count.
    shutil.rmtree(repo / "checkpoints/rl")  # so that only the new run's checkpoints can appear
    args = ["mgpo", "rl", "-S", "rl.max_steps=4", "-S", "rl.val_every=10"]
    proc = subprocess.Popen(
        args,
        cwd=repo,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ckpt = repo / "checkpoints/rl/step_000002"
    deadline = time.time() + 600
    while not ckpt.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its ephemeral Prefect server
    proc.wait()
    assert ckpt.is_dir(), "the run ended or timed out before its step-2 checkpoint"
    assert not (repo / "checkpoints/rl/step_000004").exists()
    run(repo, "mgpo", "rl", "--resume", "-S", "rl.max_steps=4", "-S", "rl.val_every=10", env=env, timeout=900)
    metrics = json.loads((repo / "results/rl/metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["stopped_by"] == "max_steps"
    runs = mlflow.search_runs(experiment_names=["mgpo"], output_format="list", order_by=["start_time DESC"])
    resumed = runs[0]
    assert int(resumed.data.tags["mgpo.rl.resumed_from_step"]) in (2, 3)
    assert sorted(m.step for m in client.get_metric_history(resumed.info.run_id, "reward_mean")) == [
        1,
        2,
        3,
        4,
    ]
