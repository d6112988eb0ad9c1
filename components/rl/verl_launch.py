"""Run MGPO's RL stage on a Ray GPU cluster with verl 0.9.1 (`rl.backend: verl`), then merge.

`run_verl_rl(params) -> dict` is the entry the `rl` stage flow calls. It
1. writes the agent-loop YAML and the `main_ppo` Hydra overrides (`components.rl.verl_config`),
   composes them into verl's own config and runs verl's `validate_config` here, so a bad override
   fails before anything is submitted; the resolved config is written to
   `<paths.rl_dir>/verl/main_ppo_resolved.yaml` and logged to the active MLflow run;
2. submits `python3 -m verl.trainer.main_ppo <overrides>` as a Ray job on `RAY_ADDRESS` (the job
   SDK) with a runtime env that ships the `components` package (`py_modules`) and
   `<paths.rl_dir>/verl/package/` (`working_dir`: the agent-loop YAML), so every node imports our
   agent loop and reward;
3. streams the job's logs (to the console and `<paths.rl_dir>/verl/job.log`), polls its status,
   and raises `VerlJobFailed` (with the log tail) when it fails, is stopped or times out;
4. merges the last checkpoint (`<checkpoint_dir>/global_step_N/actor`) into a Hugging Face folder
   at `paths.rl_model` with `python -m verl.model_merger merge --backend fsdp`.
It returns `{job_id, status, global_step, model_dir, checkpoint, resolved_config, seconds}`.

Paths handed to the job (model, parquet files, checkpoint folder) are absolute and must be
visible at the same path on every node and on this machine (a shared filesystem), as verl's own
multi-node checkpointing requires. When the tracking URI is an MLflow server (http), verl logs its
per-step metrics into the stage's MLflow run (`MLFLOW_RUN_ID`); a local sqlite store is not
reachable from the cluster, so then only the console logs them.

Run (normally through the stage): `RAY_ADDRESS=http://head:8265 mgpo rl -S rl.backend=verl`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from components.config import Params
from components.rl import verl_config as vc

JOB_DIR = "verl"
AGENT_LOOP_FILE = "agent_loop.yaml"
PACKAGE_DIR = "package"
COMPONENTS_DIR = Path(__file__).resolve().parents[1]


class VerlJobFailed(RuntimeError):
    """The Ray job failed, was stopped or timed out; the message holds its log tail."""


class CheckpointNotFound(FileNotFoundError):
    """No verl checkpoint where the run should have left one."""


# ------------------------------------------------------------------------------ Ray jobs


def ray_address() -> str:
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if not address:
        raise VerlJobFailed(
            "RAY_ADDRESS is not set: point it at the Ray cluster's dashboard (e.g. http://head:8265); "
            "for one machine, `ray start --head` and RAY_ADDRESS=http://127.0.0.1:8265"
        )
    return address


def runtime_env(job_dir: str | Path, env_vars: dict[str, str] | None = None) -> dict:
    """Ship the `components` package to every node and run the job in `job_dir`.

    `py_modules` puts our package on every worker's path (the agent loop and the reward are
    imported inside verl's Ray actors); `working_dir` carries the job's small files (the
    agent-loop YAML, resolved relative to the job's cwd by verl's `resolve_config_path`).
    """
    return {
        "working_dir": str(Path(job_dir).resolve()),
        "py_modules": [str(COMPONENTS_DIR)],
        "env_vars": {"TOKENIZERS_PARALLELISM": "false", **(env_vars or {})},
    }


@dataclass
class JobResult:
    job_id: str
    status: str
    seconds: float
    log_path: str | None = None
    info: dict = field(default_factory=dict)


class _LogSink:
    """Lines to the console and (optionally) a file; keeps the tail for error messages."""

    def __init__(self, path: str | Path | None, echo: Callable[[str], None] | None = print, keep: int = 200):
        self.path = Path(path) if path else None
        self.echo = echo
        self.keep = keep
        self.tail: list[str] = []
        self._lock = threading.Lock()
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def __call__(self, chunk: str) -> None:
        with self._lock:
            if self.path:
                with self.path.open("a") as f:
                    f.write(chunk)
            if self.echo:
                self.echo(chunk.rstrip("\n"))
            self.tail.extend(chunk.splitlines())
            del self.tail[: -self.keep]


def _stream_logs(client, job_id: str, sink: _LogSink) -> None:
    async def follow():
        async for chunk in client.tail_job_logs(job_id):
            sink(chunk)

    # Log streaming is best effort: the status poll decides success, and the full log is
    # fetched again on failure.
    with contextlib.suppress(Exception):
        asyncio.run(follow())


def run_ray_job(
    entrypoint: list[str],
    env: dict,
    *,
    address: str | None = None,
    timeout_s: float = 86400,
    poll_s: float = 5.0,
    log_path: str | Path | None = None,
    echo: Callable[[str], None] | None = print,
    entrypoint_num_gpus: float | None = None,
    name: str = "mgpo",
) -> JobResult:
    """Submit `entrypoint` (argv) as a Ray job, stream its logs, wait; raise unless it succeeds.

    A timeout or an interrupt of this process stops the job, so no orphan keeps the GPUs.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    address = address or ray_address()
    try:
        client = JobSubmissionClient(address)
    except Exception as exc:  # connection errors come in several types
        raise VerlJobFailed(f"cannot reach the Ray job server at {address} (RAY_ADDRESS): {exc}") from exc
    job_id = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    start = time.monotonic()
    client.submit_job(
        entrypoint=shlex.join(entrypoint),
        submission_id=job_id,
        runtime_env=env,
        entrypoint_num_gpus=entrypoint_num_gpus,
        metadata={"project": "mgpo", "name": name},
    )
    sink = _LogSink(log_path, echo)
    follower = threading.Thread(target=_stream_logs, args=(client, job_id, sink), daemon=True)
    follower.start()
    try:
        while True:
            status = client.get_job_status(job_id)
            if status.is_terminal():
                break
            if time.monotonic() - start > timeout_s:
                client.stop_job(job_id)
                raise VerlJobFailed(
                    f"Ray job {job_id} ran past {timeout_s:.0f} s (job_timeout_s) and was stopped\n"
                    + "\n".join(sink.tail[-40:])
                )
            time.sleep(poll_s)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            client.stop_job(job_id)
        raise
    follower.join(timeout=30)
    info = client.get_job_info(job_id)
    seconds = time.monotonic() - start
    if status != JobStatus.SUCCEEDED:
        try:
            tail = client.get_job_logs(job_id).splitlines()[-60:]
        except Exception:
            tail = sink.tail[-60:]
        raise VerlJobFailed(
            f"Ray job {job_id} {status.value} after {seconds:.0f} s: {info.message or ''}\n"
            f"--- last log lines ---\n" + "\n".join(tail)
        )
    return JobResult(
        job_id=job_id,
        status=status.value,
        seconds=seconds,
        log_path=str(log_path) if log_path else None,
        info={"message": info.message, "entrypoint": info.entrypoint},
    )


# ---------------------------------------------------------------------- checkpoints


def last_checkpoint(checkpoint_dir: str | Path, subdir: str | None = "actor") -> tuple[int, Path]:
    """(step, folder) of the newest verl checkpoint, from verl's own tracker file."""
    root = Path(checkpoint_dir)
    tracker = root / "latest_checkpointed_iteration.txt"
    if not tracker.is_file():
        raise CheckpointNotFound(
            f"no {tracker.name} in {root}: the run saved no checkpoint, or the folder is not visible "
            "from this machine (the checkpoint folder must be on storage shared with the cluster)"
        )
    text = tracker.read_text().strip()
    if not text.isdigit():
        raise CheckpointNotFound(f"{tracker}: expected a step number, found {text!r}")
    step = int(text)
    folder = root / f"global_step_{step}"
    if subdir:
        folder = folder / subdir
    if not (folder / "fsdp_config.json").is_file():
        raise CheckpointNotFound(f"checkpoint {folder} has no fsdp_config.json (not an FSDP checkpoint)")
    return step, folder


def merge_checkpoint(local_dir: str | Path, target_dir: str | Path, trust_remote_code: bool = False) -> Path:
    """verl's model merger: FSDP shards + their `huggingface/` files -> a Hugging Face folder.

    Merges into a sibling temp folder and swaps it in, so a failed merge never leaves a half
    model where the stage's output should be.
    """
    target = Path(target_dir)
    staging = target.with_name(target.name + ".merging")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp"]
    cmd += ["--local_dir", str(local_dir), "--target_dir", str(staging)]
    if trust_remote_code:
        cmd.append("--trust-remote-code")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(
            f"verl.model_merger failed on {local_dir} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


# ---------------------------------------------------------------------------- the stage


def model_ref(path: str) -> str:
    """A local folder becomes absolute (the job runs elsewhere); a hub id stays as it is."""
    p = Path(path)
    return str(p.resolve()) if p.exists() else path


def tracking_env(params: Params) -> tuple[tuple[str, ...], dict[str, str]]:
    """verl's loggers and env: MLflow only when the tracking server is reachable from a cluster."""
    from components.tracking import tracking_uri

    uri = tracking_uri(params.tracking)
    if not uri.startswith(("http://", "https://")):
        return ("console",), {}
    env = {"MLFLOW_TRACKING_URI": uri}
    try:
        import mlflow

        run = mlflow.active_run()
        if run is not None:
            env["MLFLOW_RUN_ID"] = run.info.run_id
    except ImportError:
        pass
    return ("console", "mlflow"), env


def prepare_job(params: Params, job_dir: str | Path) -> tuple[list[str], dict, Path]:
    """Write the job folder; return (argv, runtime env, resolved-config path). No submission.

    `job_dir` keeps the resolved config, the annotated overrides and the job log; only its
    `package/` subfolder (the agent-loop YAML) travels to the cluster as the job's working dir.
    """
    job_dir = Path(job_dir).resolve()
    package = job_dir / PACKAGE_DIR
    package.mkdir(parents=True, exist_ok=True)
    train, val = Path(params.rl.train_data), Path(params.rl.val_data)
    for split, path in (("train", train), ("val", val)):
        if not path.is_file():
            raise FileNotFoundError(f"RL {split} data {path} not found (run `mgpo prepare`)")
    vc.write_agent_loop_config(params, package / AGENT_LOOP_FILE)
    loggers, env_vars = tracking_env(params)
    checkpoint_dir = params.rl.verl.checkpoint_dir or str(Path(params.paths.checkpoints) / "rl_verl")
    inputs = vc.VerlInputs(
        model_path=model_ref(params.paths.sft_model),
        train_files=str(train.resolve()),
        val_files=str(val.resolve()),
        agent_loop_config=AGENT_LOOP_FILE,
        checkpoint_dir=str(Path(checkpoint_dir).resolve()),
        experiment_name=f"rl-verl-{params.rl.mode}",
        loggers=loggers,
    )
    overrides = vc.main_ppo_overrides(params, inputs)
    vc.report_host_memory(params)  # logs the step's pixel_values estimate; warns past the threshold
    args = vc.render(overrides, params.rl.verl.extra_overrides)
    cfg = vc.compose_main_ppo(args)
    resolved_path = job_dir / "main_ppo_resolved.yaml"
    resolved_path.write_text(yaml.safe_dump(vc.resolved(cfg), sort_keys=False))
    (job_dir / "overrides.txt").write_text(
        "".join(f"{o.render():<80}  # {o.why}\n" for o in overrides)
        + "".join(f"{x:<80}  # rl.verl.extra_overrides\n" for x in params.rl.verl.extra_overrides)
    )
    argv = ["python3", "-m", "verl.trainer.main_ppo", *args]
    return argv, runtime_env(package, env_vars), resolved_path


def collect(params: Params, resolved_path: str | Path) -> tuple[int, Path, Path]:
    """After the job: (step, checkpoint folder, merged model folder at paths.rl_model)."""
    checkpoint_dir = yaml.safe_load(Path(resolved_path).read_text())["trainer"]["default_local_dir"]
    step, actor_dir = last_checkpoint(checkpoint_dir, "actor")
    model_dir = merge_checkpoint(actor_dir, params.paths.rl_model, params.model.trust_remote_code)
    return step, actor_dir, model_dir


def _log_artifacts(paths: list[Path]) -> None:
    try:
        import mlflow
    except ImportError:
        return
    if mlflow.active_run() is None:
        return
    for p in paths:
        mlflow.log_artifact(str(p), artifact_path="verl")


def run_verl_rl(params: Params, echo: Callable[[str], None] | None = print) -> dict:
    """Run MGPO GRPO with verl on the Ray cluster at RAY_ADDRESS and merge the result.

    `params` is the whole `Params` object (components/config/). Returns `{job_id, status,
    global_step, model_dir, checkpoint, resolved_config, seconds}`; raises `VerlConfigError` for
    params verl cannot take, `VerlJobFailed` when the job fails, and `CheckpointNotFound` when no
    checkpoint is visible afterwards. See the module docstring for what it does step by step.
    """
    job_dir = Path(params.paths.rl_dir) / JOB_DIR
    argv, env, resolved_path = prepare_job(params, job_dir)
    _log_artifacts([resolved_path, job_dir / "overrides.txt", job_dir / PACKAGE_DIR / AGENT_LOOP_FILE])
    result = run_ray_job(
        argv,
        env,
        timeout_s=params.rl.verl.job_timeout_s,
        log_path=job_dir / "job.log",
        echo=echo,
        name="mgpo-rl",
    )
    step, actor_dir, model_dir = collect(params, resolved_path)
    return {
        "job_id": result.job_id,
        "status": result.status,
        "global_step": step,
        "model_dir": str(model_dir),
        "checkpoint": str(actor_dir),
        "resolved_config": str(resolved_path),
        "seconds": result.seconds,
    }
