"""Stage `rl`: MGPO (or the single-turn GRPO baseline) from the SFT model, as a Prefect flow.

`rl.backend: local` runs the local GRPO trainer (components/rl/grpo.py) on CPU or one GPU:
train records from `rl.train_data`, validation on `rl.val_data` (greedy, and sampled at
`rl.temperature` with `rl.val_sampled_rollouts` episodes per question), per-step metrics to
MLflow (validation as `val_<protocol>_<metric>` and `val_sampled_<protocol>_<metric>`), checkpoints under `<paths.checkpoints>/rl` (`--resume` continues from the last one, to
the same step count), and stops at `rl.max_steps`, or earlier at `rl.time_budget_s` when that
is set (default 0: no limit, so the step count does not depend on machine load); what stopped
it is `stopped_by` in metrics.json, the tag `mgpo.rl.stopped_by` and the stage's last line.
`rl.backend: verl` hands the params to the verl plug-in (components/rl/verl_launch.py: a Ray job on RAY_ADDRESS).
Either way the model lands in `paths.rl_model` and is registered in MLflow as a new version
with the alias `candidate`. Outputs under `paths.rl_dir`: metrics.json (greedy and sampled
validation before and after RL, seconds per step, `stopped_by`), val_history.json (every
validation pass), steps.csv (per-step figures) and emergence.png (valid-box ratio, crop-hit
ratio and accuracy vs step: training rollouts, greedy and sampled validation).
Departure from the paper: see components/rl/grpo.py (budget scaled to a tiny model on CPU).

Run: `mgpo rl`, `mgpo rl -S rl.mode=direct`, `mgpo rl --resume` (DVC: `dvc repro rl`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from prefect import flow

from flows._stage import ParamsPath, params_for

log = logging.getLogger(__name__)


class MissingInput(FileNotFoundError):
    """An input of the stage is absent; the message names the params key and the command."""


def _check_inputs(params) -> None:
    paths, cfg = params.paths, params.rl
    if not (Path(paths.sft_model) / "config.json").is_file():
        raise MissingInput(
            f"paths.sft_model: {paths.sft_model} holds no model (config.json); run `mgpo sft` "
            "(or `dvc repro sft`) first, or point paths.sft_model at a model folder"
        )
    for key, path in (("rl.train_data", cfg.train_data), ("rl.val_data", cfg.val_data)):
        if not Path(path).is_file():
            raise MissingInput(f"{key}: {path} not found; run `mgpo prepare` (or `dvc repro prepare`) first")


def _run_verl(params) -> dict:
    try:
        from components.rl.verl_launch import run_verl_rl
    except ModuleNotFoundError as exc:
        if exc.name != "components.rl.verl_launch":
            raise
        raise RuntimeError(
            "rl.backend=verl: the verl plug-in (components/rl/verl_launch.py) is not installed in this "
            "checkout; use rl.backend=local or add the verl backend"
        ) from None
    from components.rl import curves

    summary = {"mode": params.rl.mode, "backend": "verl", **dict(run_verl_rl(params) or {})}
    # The stage's DVC outputs exist for either backend; verl's curves are in its MLflow run.
    rl_dir = Path(params.paths.rl_dir)
    rl_dir.mkdir(parents=True, exist_ok=True)
    (rl_dir / "metrics.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    curves.write_steps_csv([], rl_dir / "steps.csv")
    curves.plot_emergence([], [], params.rl.mode, rl_dir / "emergence.png")
    return summary


def local_summary(cfg, state, stopped_by: str) -> dict:
    """The local trainer's metrics.json: steps, what stopped the run, times, validation."""
    steps = [h["seconds_per_step"] for h in state.history]
    before, after = state.val_history[0], state.val_history[-1]
    return {
        "mode": cfg.mode,
        "backend": "local",
        "steps": state.step,
        "max_steps": cfg.max_steps,
        "stopped_by": stopped_by,  # max_steps | time_budget
        "time_budget_s": cfg.time_budget_s,
        "elapsed_s": round(state.elapsed_s, 1),
        "seconds_per_step": round(sum(steps) / len(steps), 2) if steps else None,
        "failed_rollouts": int(sum(h.get("failed_rollouts", 0) for h in state.history)),
        "skipped_groups": int(sum(h.get("skipped_groups", 0) for h in state.history)),
        "val_sampled_rollouts": cfg.val_sampled_rollouts,  # 0: val_sampled_* figures are absent
        "val_temperature": cfg.temperature,
        "val_before": {k: v for k, v in before.items() if k != "val_seconds"},
        "val_after": {k: v for k, v in after.items() if k != "val_seconds"},
    }


def stop_line(summary: dict) -> str | None:
    """The stage's last line: how many steps ran and what stopped them (local backend only)."""
    if "stopped_by" not in summary:
        return None
    steps = f"{summary['steps']}/{summary['max_steps']} steps"
    if summary["stopped_by"] == "time_budget":
        return (
            f"rl: stopped by the time budget after {steps} (rl.time_budget_s={summary['time_budget_s']:g}): "
            "the step count depended on the machine's speed; rl.time_budget_s=0 lets rl.max_steps decide"
        )
    return f"rl: stopped by max_steps after {steps}"


def _run_local(params, resume: bool) -> dict:
    import mlflow

    from components.data.parquet import read_records
    from components.evaluation.runner import first_view_budget
    from components.models.loading import load_bundle
    from components.rl import curves
    from components.rl.grpo import GRPOTrainer

    cfg, paths = params.rl, params.paths
    _check_inputs(params)
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(cfg.torch_threads)
    train = list(read_records(cfg.train_data))
    val = list(read_records(cfg.val_data, limit=cfg.val_samples))
    model, processor = load_bundle(paths.sft_model, params.model.trust_remote_code)
    trainer = GRPOTrainer(
        cfg,
        params.episode,
        model,
        processor,
        train,
        val,
        Path(paths.checkpoints) / "rl",
        first_view=first_view_budget(processor),
        max_image_pixels=params.prepare.max_image_pixels,
    )

    def on_step(step: int, metrics: dict) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
        boxes = f"valid boxes {metrics['valid_box_ratio']:.2f} " if "valid_box_ratio" in metrics else ""
        update = f"kl {metrics['kl']:.4f} " if "kl" in metrics else "no update "
        print(
            f"rl step {step}/{cfg.max_steps}: reward {metrics.get('reward_mean', 0):.3f} {boxes}{update}"
            f"{metrics['seconds_per_step']:.1f}s",
            flush=True,
        )

    def on_val(step: int, metrics: dict) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)
        print(
            f"rl validation at step {step}: {json.dumps({k: round(v, 3) for k, v in metrics.items()})}",
            flush=True,
        )

    result = trainer.run(resume=resume, on_step=on_step, on_val=on_val)
    state = result.state
    if result.resumed_from:
        # This run continues another: give it the earlier curve too.
        mlflow.set_tag("mgpo.rl.resumed_from_step", str(result.resumed_from))
        for h in state.history[: result.resumed_from]:
            mlflow.log_metrics({k: float(v) for k, v in h.items() if k != "step"}, step=int(h["step"]))
        for v in state.val_history:
            if v["step"] <= result.resumed_from:
                mlflow.log_metrics({k: float(x) for k, x in v.items() if k != "step"}, step=int(v["step"]))

    out = Path(paths.rl_model)
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)

    rl_dir = Path(paths.rl_dir)
    rl_dir.mkdir(parents=True, exist_ok=True)
    summary = local_summary(cfg, result.state, result.stop_reason)
    mlflow.set_tag("mgpo.rl.stopped_by", summary["stopped_by"])
    (rl_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    (rl_dir / "val_history.json").write_text(json.dumps(state.val_history, indent=2) + "\n")
    curves.write_steps_csv(state.history, rl_dir / "steps.csv")
    curves.plot_emergence(state.history, state.val_history, cfg.mode, rl_dir / "emergence.png")
    if result.failures:
        (rl_dir / "failures.txt").write_text("\n".join(result.failures) + "\n")
    else:
        (rl_dir / "failures.txt").unlink(missing_ok=True)
    for name in ("metrics.json", "val_history.json", "steps.csv", "emergence.png", "failures.txt"):
        if (rl_dir / name).is_file():
            mlflow.log_artifact(str(rl_dir / name), artifact_path="rl")
    mlflow.log_metrics(
        {
            "final_step": state.step,
            "elapsed_s": state.elapsed_s,
            "mean_seconds_per_step": summary["seconds_per_step"] or 0,
        }
    )
    return summary


def run_rl(params, resume: bool = False, register: bool = True, tags: dict[str, str] | None = None) -> dict:
    """The stage's work in one MLflow run (inside a flow): training, outputs, and (with
    `register`) the registry version with alias `candidate`. `mgpo science` calls it per arm."""
    from components.tracking import register_model_dir, stage_run

    cfg = params.rl
    tags = {"mgpo.rl.mode": cfg.mode, "mgpo.rl.backend": cfg.backend, **(tags or {})}
    sections = {"rl": cfg, "episode": params.episode}
    with stage_run("rl", params.tracking, sections, tags=tags):
        start = time.perf_counter()
        summary = _run_verl(params) if cfg.backend == "verl" else _run_local(params, resume)
        if not (Path(params.paths.rl_model) / "config.json").is_file():
            raise RuntimeError(f"the RL backend left no model in paths.rl_model ({params.paths.rl_model})")
        if register:
            version = register_model_dir(params.paths.rl_model, params.tracking, "candidate", tags=tags)
            summary["registered_version"] = str(version.version)
        summary["stage_seconds"] = round(time.perf_counter() - start, 1)
    print(f"rl: {json.dumps({k: v for k, v in summary.items() if not k.startswith('val_')})}")
    if "val_before" in summary:
        print(f"rl: validation before {json.dumps(summary['val_before'])}")
        print(f"rl: validation after  {json.dumps(summary['val_after'])}")
    line = stop_line(summary)
    if line:
        print(line)
    return summary


@flow(name="rl")
def rl_flow(
    params_path: ParamsPath = "params.yaml", overrides: list[str] | None = None, resume: bool = False
) -> dict:
    return run_rl(params_for(params_path, overrides), resume)


def run(params_path: ParamsPath, overrides: list[str], resume: bool = False, **_: object) -> int:
    import sys

    params = params_for(params_path, overrides)  # invalid params fail here, before Prefect starts
    if params.rl.backend == "local":
        try:
            _check_inputs(params)
        except MissingInput as exc:
            print(f"mgpo rl: {exc}", file=sys.stderr)
            return 2
    rl_flow(params_path, overrides, resume=resume)
    return 0
