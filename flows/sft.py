"""Stage `sft`: the cold-start warmup on two-turn grounding trajectories, as a Prefect flow.

1. Trajectories: every record of `sft.train_data` with target boxes becomes the paper's two-turn
   conversation, written by the shared episode code (components/sft/trajectories.py): a JSON box
   of the target in the first view, the environment's crop, a short answer with `\\boxed{}`.
   They land in `<paths.sft_data>/train.parquet` in verl's multi-turn SFT format, with a
   summary (written / skipped too long / skipped with errors) in `trajectories.json`.
2. Training: `sft.backend: local` runs the local trainer (components/sft/trainer.py) from
   `paths.base_model` on CPU or one GPU, with checkpoints in `<paths.checkpoints>/sft`
   (`--resume` continues from the last one with the same data order) and per-step MLflow
   metrics (loss, lr, grad_norm, tokens_per_s). `sft.backend: verl` runs verl's SFT trainer
   (components/sft/verl_backend.py, GPUs) on the same parquet.
3. Outputs: the model and its processor in `paths.sft_model` (a Hugging Face folder), and in
   `paths.sft_dir`: metrics.json (DVC metrics), steps.csv (DVC plot) and loss.png; all logged to
   the stage's MLflow run, and the model registered as a new version with the alias `sft`.

Departure from the paper: the paper publishes no SFT code or data; this warmup is what the tiny
random-weight model needs before RL (it knows no format, no task).
Run: `mgpo sft`, `mgpo sft --resume`, `mgpo sft -S sft.max_steps=20` (DVC: `dvc repro sft`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from prefect import flow, task

from flows._stage import ParamsPath, params_for

TRAJECTORIES = "train.parquet"


class MissingInput(FileNotFoundError):
    """An input of the stage is absent; the message names the params key and the command."""


def _check_inputs(params) -> None:
    paths, cfg = params.paths, params.sft
    if not (Path(paths.base_model) / "config.json").is_file():
        raise MissingInput(
            f"paths.base_model: {paths.base_model} holds no model (config.json); run `mgpo build-model` "
            "(or `dvc repro build_model`) first"
        )
    if not Path(cfg.train_data).is_file():
        raise MissingInput(
            f"sft.train_data: {cfg.train_data} not found; run `mgpo prepare` (or `dvc repro prepare`) first"
        )


@task(name="sft-trajectories")
def build_data(params, out_path: Path) -> dict:
    from components.data.parquet import read_records
    from components.evaluation.runner import first_view_budget
    from components.models.loading import load_processor
    from components.prompts import load_templates
    from components.sft.trajectories import build_trajectories

    processor = load_processor(params.paths.base_model, params.model.trust_remote_code)
    templates = load_templates(params.episode.templates, params.episode.template)
    start = time.perf_counter()
    stats = build_trajectories(
        read_records(params.sft.train_data),
        out_path,
        params.sft,
        params.episode,
        templates,
        processor,
        first_view_budget(processor),
        params.prepare.max_image_pixels,
        progress=True,
    )
    summary = {**stats.to_dict(), "seconds": round(time.perf_counter() - start, 1)}
    if stats.written == 0:
        raise ValueError(
            f"sft: no trajectory was written from {params.sft.train_data} ({stats.records} records, "
            f"{stats.skipped_too_long} longer than sft.max_seq_len={params.sft.max_seq_len}, "
            f"{stats.skipped_errors} failed: {stats.errors[:3]})"
        )
    return summary


@task(name="sft-train-local")
def train_local(params, data_path: Path, resume: bool) -> dict:
    import mlflow

    from components.models.loading import load_bundle, load_processor, resolve_model
    from components.sft import curves
    from components.sft.trainer import cpu_image_backend, train

    cfg, paths = params.sft, params.paths
    model, processor = load_bundle(paths.base_model, params.model.trust_remote_code)
    cpu_image_backend(processor, resolve_model(paths.base_model))

    def on_step(h: dict) -> None:
        mlflow.log_metrics(
            {k: float(h[k]) for k in ("loss", "lr", "grad_norm", "tokens_per_s", "seconds")}, step=h["step"]
        )

    result = train(
        cfg, model, processor, data_path, Path(paths.checkpoints) / "sft", resume=resume, on_step=on_step
    )
    if result.resumed_from:
        # This run continues another: give it the earlier curve too.
        mlflow.set_tag("mgpo.sft.resumed_from_step", str(result.resumed_from))
        for h in result.history[: result.resumed_from]:
            on_step(h)

    out = Path(paths.sft_model)
    shutil.rmtree(out, ignore_errors=True)
    model.to("cpu").save_pretrained(out)
    # The base model's processor as it loads (not the PIL-backend swap used for training speed).
    load_processor(paths.base_model, params.model.trust_remote_code).save_pretrained(out)

    sft_dir = Path(paths.sft_dir)
    history = result.history
    curves.write_steps_csv(history, sft_dir / "steps.csv")
    curves.plot_loss(history, sft_dir / "loss.png")
    tail = history[-min(10, len(history)) :]
    fresh = history[result.resumed_from or 0 :]
    return {
        "backend": "local",
        "device": result.device,
        "precision": result.precision,
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "first_loss": round(history[0]["loss"], 4),
        "final_loss": round(sum(h["loss"] for h in tail) / len(tail), 4),
        "seconds_per_step": round(sum(h["seconds"] for h in fresh) / max(1, len(fresh)), 3),
        "mean_tokens_per_s": round(
            sum(h["tokens"] for h in fresh) / max(1e-9, sum(h["seconds"] for h in fresh)), 1
        ),
    }


def _run_verl(params, data_path: Path) -> dict:
    try:
        from components.sft.verl_backend import run_verl_sft
    except ModuleNotFoundError as exc:
        if exc.name != "components.sft.verl_backend":
            raise
        raise NotImplementedError(
            "sft.backend=verl: the verl SFT backend (components/sft/verl_backend.py) is missing from this "
            "checkout; use sft.backend=local"
        ) from None
    return dict(run_verl_sft(params, data_path) or {})


def run_sft(params, resume: bool = False, register: bool = True, tags: dict[str, str] | None = None) -> dict:
    """The stage's work in one MLflow run (inside a flow): trajectories, training, outputs, and
    (with `register`) the registry version with alias `sft`. `mgpo science` calls it per seed."""
    import mlflow

    from components.tracking import register_model_dir, stage_run

    cfg, paths = params.sft, params.paths
    tags = {"mgpo.sft.backend": cfg.backend, **(tags or {})}
    with stage_run("sft", params.tracking, {"sft": cfg, "episode": params.episode}, tags=tags):
        start = time.perf_counter()
        sft_dir = Path(paths.sft_dir)
        sft_dir.mkdir(parents=True, exist_ok=True)
        data_path = Path(paths.sft_data) / TRAJECTORIES
        # Rebuilt on --resume too: the build is deterministic, and the trainer refuses a checkpoint
        # made on different bytes, so changed params cannot silently continue on stale data.
        data = build_data(params, data_path)
        (sft_dir / "trajectories.json").write_text(json.dumps(data, indent=2) + "\n")
        mlflow.log_metrics(
            {f"trajectories.{k}": float(v) for k, v in data.items() if isinstance(v, int | float)}
        )
        print(
            f"sft: {data['written']} trajectories ({data['skipped_too_long']} skipped as longer than "
            f"sft.max_seq_len, {data['skipped_errors']} failed) in {data['seconds']} s",
            flush=True,
        )
        summary = (
            _run_verl(params, data_path) if cfg.backend == "verl" else train_local(params, data_path, resume)
        )
        if not (Path(paths.sft_model) / "config.json").is_file():
            raise RuntimeError(f"the SFT backend left no model in paths.sft_model ({paths.sft_model})")
        summary["trajectories"] = data["written"]
        summary["skipped_too_long"] = data["skipped_too_long"]
        summary["stage_seconds"] = round(time.perf_counter() - start, 1)
        (sft_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        mlflow.log_metrics(
            {k: float(v) for k, v in summary.items() if isinstance(v, int | float) and v is not None}
        )
        for name in ("metrics.json", "trajectories.json", "steps.csv", "loss.png"):
            if (sft_dir / name).is_file():
                mlflow.log_artifact(str(sft_dir / name), artifact_path="sft")
        if register:
            version = register_model_dir(paths.sft_model, params.tracking, "sft", tags=tags)
            summary["registered_version"] = str(version.version)
    print(f"sft: {json.dumps(summary)}")
    return summary


@flow(name="sft")
def sft_flow(
    params_path: ParamsPath = "params.yaml", overrides: list[str] | None = None, resume: bool = False
) -> dict:
    return run_sft(params_for(params_path, overrides), resume)


def run(params_path: ParamsPath, overrides: list[str], resume: bool = False, **_: object) -> int:
    import sys

    params = params_for(params_path, overrides)  # invalid params fail here, before Prefect starts
    from components.sft.trainer import NonFiniteLoss, ResumeMismatch, TrajectoryFormatError

    try:
        _check_inputs(params)
    except MissingInput as exc:
        print(f"mgpo sft: {exc}", file=sys.stderr)
        return 2
    try:
        sft_flow(params_path, overrides, resume=resume)
    except (NonFiniteLoss, ResumeMismatch, TrajectoryFormatError, NotImplementedError) as exc:
        print(f"mgpo sft: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:  # --resume without a checkpoint
        print(f"mgpo sft: {exc}", file=sys.stderr)
        return 2
    return 0
