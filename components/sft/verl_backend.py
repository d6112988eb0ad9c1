"""SFT warmup on GPUs with verl 0.9.1's SFT trainer (`sft.backend: verl`), then a HF folder.

`run_verl_sft(params, trajectories_path) -> dict` is the entry the `sft` stage flow calls with the
trajectory parquet it wrote (verl's multi-turn SFT format: `messages` with `<image>` placeholders
+ `images`, see `components.sft.io`). It
1. maps the `sft` params to Hydra overrides of verl's `sft_trainer_engine` config
   (`sft_overrides`), composes them with Hydra and builds verl's typed model/engine/optimizer
   configs from them here, so a bad option fails before any GPU is touched;
2. runs `torchrun --standalone --nproc_per_node N -m verl.trainer.sft_trainer <overrides>` on this
   machine (`sft.verl.run_on: local`), or submits it as a Ray job on `RAY_ADDRESS`
   (`run_on: ray`; with `sft.verl.nnodes > 1` the job runs verl's Ray SFT trainer,
   `verl.trainer.sft_trainer_ray`, with the same overrides, since one torchrun cannot span nodes
   from a job);
3. merges the last checkpoint (`<checkpoint_dir>/global_step_N`) into a Hugging Face folder with
   the processor at `paths.sft_model` (`python -m verl.model_merger merge --backend fsdp`).
It returns `{backend, run_on, global_step, total_steps, model_dir, checkpoint, resolved_config,
seconds, job_id}`.

Mapping: sft.samples_per_micro_batch x sft.micro_batches_per_step -> data.train_batch_size
(trajectories per optimizer step); sft.max_seq_len -> data.max_length with truncation=error (the
trajectory builder already skipped longer ones: never cut mid-image); sft.lr, weight_decay,
grad_clip, schedule, warmup_steps -> optim.*; sft.max_steps (bounded by sft.verl.epochs passes)
-> trainer.total_training_steps; sft.checkpoint_every -> trainer.save_freq; sft.seed ->
trainer.seed. Departure from the local trainer: verl's FSDP engine (bf16 mixed precision,
sharded AdamW), and its own data order.

Run (normally through the stage): `mgpo sft -S sft.backend=verl -S sft.verl.nproc_per_node=8`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from components.config import Params
from components.rl import verl_config as vc
from components.rl import verl_launch as vl

JOB_DIR = "verl"


def trajectory_rows(path: str | Path) -> int:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SFT trajectories {path} not found (the sft stage writes them first)")
    meta = pq.ParquetFile(path).metadata
    names = set(pq.ParquetFile(path).schema_arrow.names)
    missing = {"messages", "images"} - names
    if missing:
        raise vc.VerlConfigError(f"SFT trajectories {path} lack the columns {sorted(missing)} verl reads")
    return meta.num_rows


def total_steps(params: Params, rows: int, where: str = "trajectories") -> int:
    """Optimizer steps verl will run: sft.max_steps, bounded by sft.verl.epochs passes."""
    s, v = params.sft, params.sft.verl
    batch = s.samples_per_micro_batch * s.micro_batches_per_step
    per_epoch = rows // batch  # verl's sampler drops the last partial batch
    if per_epoch == 0:
        raise vc.VerlConfigError(
            f"{where}: {rows} trajectories is less than one batch of sft.samples_per_micro_batch x "
            f"sft.micro_batches_per_step = {batch}"
        )
    return min(s.max_steps, per_epoch * v.epochs)


def check_sft(params: Params) -> None:
    s, v = params.sft, params.sft.verl
    gpus = v.nnodes * v.nproc_per_node
    batch = s.samples_per_micro_batch * s.micro_batches_per_step
    problems = []
    if batch % gpus:
        problems.append(
            f"sft.samples_per_micro_batch x sft.micro_batches_per_step = {batch} trajectories per step "
            f"must be divisible by sft.verl.nnodes x sft.verl.nproc_per_node = {gpus} GPUs"
        )
    elif v.max_tokens_per_gpu == 0 and (batch // gpus) % v.micro_batch_size_per_gpu:
        problems.append(
            f"{batch // gpus} trajectories per GPU per step must be divisible by "
            f"sft.verl.micro_batch_size_per_gpu = {v.micro_batch_size_per_gpu}"
        )
    if 0 < v.max_tokens_per_gpu < s.max_seq_len:
        problems.append(
            f"sft.verl.max_tokens_per_gpu {v.max_tokens_per_gpu} must hold one trajectory of "
            f"sft.max_seq_len {s.max_seq_len} tokens"
        )
    if v.nnodes > 1 and v.run_on == "local":
        problems.append("sft.verl.nnodes > 1 needs sft.verl.run_on: ray (one torchrun here is one node)")
    if problems:
        raise vc.VerlConfigError("sft params do not fit verl:\n  " + "\n  ".join(problems))


def sft_overrides(
    params: Params,
    *,
    model_path: str,
    train_files: str,
    checkpoint_dir: str,
    steps: int,
    loggers: tuple[str, ...] = ("console",),
) -> list[vc.Override]:
    """The `sft` params as Hydra overrides for `verl.trainer.sft_trainer` (see module doc)."""
    check_sft(params)
    s, v = params.sft, params.sft.verl
    dynamic = v.max_tokens_per_gpu > 0
    out = [
        vc.Override("model.path", model_path, "paths.base_model (or the given model)"),
        vc.Override("model.trust_remote_code", params.model.trust_remote_code, "model.trust_remote_code"),
        vc.Override(
            "model.override_config.attn_implementation",
            v.attn_implementation,
            "sft.verl.attn_implementation",
            new=True,
        ),
        vc.Override(
            "model.use_remove_padding",
            v.attn_implementation == "flash_attention_2",
            "remove padding needs flash-attn (sft.verl.attn_implementation)",
        ),
        vc.Override("data.train_files", train_files, "the sft stage's trajectory parquet"),
        vc.Override("data.val_files", None, "no validation split in verl's SFT run"),
        vc.Override(
            "data.train_batch_size",
            s.samples_per_micro_batch * s.micro_batches_per_step,
            "sft.samples_per_micro_batch x sft.micro_batches_per_step (trajectories per step)",
        ),
        vc.Override(
            "data.micro_batch_size_per_gpu", v.micro_batch_size_per_gpu, "sft.verl.micro_batch_size_per_gpu"
        ),
        vc.Override("data.use_dynamic_bsz", dynamic, "sft.verl.max_tokens_per_gpu > 0"),
        vc.Override("data.max_length", s.max_seq_len, "sft.max_seq_len (tokens, image tokens included)"),
        vc.Override("data.truncation", "error", "never cut a trajectory (the builder skips long ones)"),
        vc.Override("optim.lr", s.lr, "sft.lr (peak)"),
        vc.Override("optim.weight_decay", s.weight_decay, "sft.weight_decay"),
        vc.Override("optim.clip_grad", s.grad_clip, "sft.grad_clip (max gradient norm)"),
        vc.Override("optim.lr_scheduler_type", s.schedule, "sft.schedule"),
        vc.Override("optim.lr_warmup_steps", s.warmup_steps, "sft.warmup_steps (steps)"),
        vc.Override("trainer.total_training_steps", steps, "sft.max_steps, bounded by sft.verl.epochs"),
        vc.Override("trainer.total_epochs", v.epochs, "sft.verl.epochs"),
        vc.Override("trainer.save_freq", s.checkpoint_every, "sft.checkpoint_every (steps)"),
        vc.Override("trainer.seed", s.seed, "sft.seed"),
        vc.Override("trainer.nnodes", v.nnodes, "sft.verl.nnodes"),
        vc.Override("trainer.n_gpus_per_node", v.nproc_per_node, "sft.verl.nproc_per_node"),
        vc.Override("trainer.default_local_dir", checkpoint_dir, "sft.verl.checkpoint_dir"),
        vc.Override("trainer.resume_mode", "auto", "a rerun resumes from the last checkpoint"),
        vc.Override("trainer.project_name", params.tracking.experiment, "tracking.experiment"),
        vc.Override("trainer.experiment_name", "sft-verl", "the stage run"),
        vc.Override("trainer.logger", list(loggers), "console, plus MLflow when a server is reachable"),
    ]
    if dynamic:
        out.append(
            vc.Override("data.max_token_len_per_gpu", v.max_tokens_per_gpu, "sft.verl.max_tokens_per_gpu")
        )
    return out


def compose_sft(args: list[str]):
    """Compose verl's SFT config and build the typed configs `SFTTrainer._build_config` builds."""
    from verl.utils.config import omega_conf_to_dataclass

    cfg = vc.compose(vc.SFT_CONFIG, args)
    for section in ("model", "engine", "optim", "checkpoint"):
        try:
            omega_conf_to_dataclass(cfg[section])
        except Exception as exc:  # verl's dataclasses raise several types
            raise vc.VerlConfigError(f"verl's SFT config section {section!r} is invalid: {exc}") from exc
    return cfg


def sft_argv(params: Params, args: list[str]) -> list[str]:
    """`torchrun ... -m verl.trainer.sft_trainer` (or verl's Ray SFT trainer across nodes)."""
    v = params.sft.verl
    if v.nnodes > 1:
        return ["python3", "-m", "verl.trainer.sft_trainer_ray", *args]
    launcher = ["torchrun", "--standalone", "--nnodes=1", f"--nproc_per_node={v.nproc_per_node}"]
    return [*launcher, "-m", "verl.trainer.sft_trainer", *args]


def prepare_sft(params: Params, trajectories_path: str | Path, job_dir: str | Path, model: str | None = None):
    """Check, map, compose; write the resolved config. Returns (argv, resolved path, steps, ckpt dir)."""
    job_dir = Path(job_dir).resolve()
    job_dir.mkdir(parents=True, exist_ok=True)
    traj = Path(trajectories_path)
    steps = total_steps(params, trajectory_rows(traj), str(traj))
    loggers, _ = vl.tracking_env(params)
    checkpoint_dir = Path(
        params.sft.verl.checkpoint_dir or Path(params.paths.checkpoints) / "sft_verl"
    ).resolve()
    overrides = sft_overrides(
        params,
        model_path=vl.model_ref(model or params.paths.base_model),
        train_files=str(traj.resolve()),
        checkpoint_dir=str(checkpoint_dir),
        steps=steps,
        loggers=loggers,
    )
    args = vc.render(overrides, params.sft.verl.extra_overrides)
    cfg = compose_sft(args)
    resolved_path = job_dir / "sft_trainer_resolved.yaml"
    resolved_path.write_text(yaml.safe_dump(vc.resolved(cfg), sort_keys=False))
    (job_dir / "overrides.txt").write_text("".join(f"{o.render():<80}  # {o.why}\n" for o in overrides))
    return sft_argv(params, args), resolved_path, steps, checkpoint_dir


def _package_dir(job_dir: Path) -> Path:
    """The job's working dir: an empty folder, so the logs beside it never travel."""
    folder = job_dir / vl.PACKAGE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _run_local(argv: list[str], log_path: Path, echo: Callable[[str], None] | None) -> float:
    """Run torchrun here, streaming its output; raise with the tail when it fails."""
    torchrun = Path(sys.executable).with_name("torchrun")
    if argv[0] == "torchrun" and torchrun.exists():
        argv = [str(torchrun), *argv[1:]]  # the venv's torchrun, whatever PATH says
    start = time.monotonic()
    tail: list[str] = []
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if echo:
                echo(line.rstrip("\n"))
            tail = [*tail[-59:], line.rstrip("\n")]
        code = proc.wait()
    if code != 0:
        raise vl.VerlJobFailed(f"verl SFT (torchrun) exited with {code}:\n" + "\n".join(tail))
    return time.monotonic() - start


def run_verl_sft(
    params: Params,
    trajectories_path: str | Path,
    model: str | None = None,
    echo: Callable[[str], None] | None = print,
) -> dict:
    """Train on `trajectories_path` with verl's SFT trainer; merge into `paths.sft_model`.

    `params` is the whole `Params` object (components/config/); `model` defaults to
    `paths.base_model`. Needs CUDA GPUs (locally for `run_on: local`, on the cluster at
    RAY_ADDRESS for `run_on: ray`). Returns `{backend, run_on, global_step, total_steps,
    model_dir, checkpoint, resolved_config, seconds, job_id}`; raises `VerlConfigError`,
    `VerlJobFailed` or `CheckpointNotFound` with the cause named.
    """
    v = params.sft.verl
    job_dir = Path(params.paths.sft_dir) / JOB_DIR
    argv, resolved_path, steps, checkpoint_dir = prepare_sft(params, trajectories_path, job_dir, model)
    vl._log_artifacts([resolved_path, job_dir / "overrides.txt"])
    job_id = None
    if v.run_on == "local":
        if shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists():
            raise vl.VerlJobFailed("torchrun is not installed in this environment (it comes with torch)")
        seconds = _run_local(argv, job_dir / "train.log", echo)
    else:
        _, env_vars = vl.tracking_env(params)
        result = vl.run_ray_job(
            argv,
            vl.runtime_env(_package_dir(job_dir), env_vars),
            timeout_s=v.job_timeout_s,
            log_path=job_dir / "job.log",
            echo=echo,
            entrypoint_num_gpus=v.nproc_per_node if v.nnodes == 1 else None,
            name="mgpo-sft",
        )
        job_id, seconds = result.job_id, result.seconds
    step, folder = vl.last_checkpoint(checkpoint_dir, subdir=None)
    model_dir = vl.merge_checkpoint(folder, params.paths.sft_model, params.model.trust_remote_code)
    return {
        "backend": "verl",
        "run_on": v.run_on,
        "global_step": step,
        "total_steps": steps,
        "model_dir": str(model_dir),
        "checkpoint": str(folder),
        "resolved_config": str(resolved_path),
        "seconds": seconds,
        "job_id": job_id,
    }
