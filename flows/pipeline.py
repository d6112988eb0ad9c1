"""The `pipeline` flow: every DVC stage in order, each as a Prefect task, under one MLflow run.

Each stage runs as `dvc repro <stage>`, so caching and lineage stay DVC's: an up-to-date stage
is skipped by DVC, a failed stage leaves no lock entry (DVC removes a stage's outputs before
running it and locks them only after it succeeds), and rerunning the flow resumes from the
failed stage. The stage order is DVC's own (a topological sort of dvc.yaml), ending with
`promote`. Before any compute the flow checks the MLflow tracking server and the Prefect API and
fails naming the one that does not answer.

One parent MLflow run per execution; its id goes to the stage commands through
`MGPO_PARENT_RUN_ID`, so each stage's run is its child. After each stage, the child run (and any
model version it registered) is tagged with the stage's output hashes from dvc.lock
(components/lineage.py). A failure that may pass (DVC's repository lock held by another run, a
server hiccup, a killed worker) is retried `pipeline.retries` times; a deterministic one (bad
params, a bug) fails at once.

Overlays (`--params params.yaml --params X.yaml`: every file after the base, deep-merged as the
loader merges them) and then overrides (`-S key=value`, exactly as `dvc exp run -S` writes
them) are written into params.yaml before DVC runs, so that dvc.lock records what ran
(flows/uptodate.py's `write_params_file`, shared with the no-op check).

A no-op rerun is cheap: `mgpo pipeline` first asks DVC (its Python API, as `dvc status`)
whether any stage would run; when none would, it says so, names the report and the champion,
and exits without importing Prefect or opening an MLflow run (flows/uptodate.py; a few seconds
instead of 40-65).

Run: `mgpo pipeline [--params params.yaml --params overlay.yaml] [-S rl.max_steps=5]`; scheduled: see prefect.yaml and `python -m flows.serve`.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows._stage import ParamsPath, params_for

# Output of a stage failure that another attempt may not see again.
TRANSIENT_PATTERNS = (
    r"Unable to acquire lock",  # another dvc process holds the repository lock
    r"database is locked",
    r"Connection (refused|reset|aborted)",
    r"Temporary failure in name resolution",
    r"Read timed out|timed out while|ConnectTimeout",
    r"\b50[234]\b.*(Gateway|Unavailable)",
    r"is unreachable",  # TrackingUnavailable / PrefectUnavailable
    r"Killed\b",
)


class StageFailed(RuntimeError):
    """A `dvc repro <stage>` exited non-zero; carries its exit code and output tail."""

    def __init__(self, stage: str, returncode: int, tail: str, timed_out: bool = False):
        self.stage, self.returncode, self.tail, self.timed_out = stage, returncode, tail, timed_out
        why = "timed out" if timed_out else f"exit code {returncode}"
        super().__init__(f"stage {stage!r} failed ({why}); last output:\n{tail}")


def is_transient(returncode: int, output: str, timed_out: bool = False) -> bool:
    """Whether another attempt may succeed: killed by a signal, or a known passing failure."""
    if timed_out:
        return False  # a stage over its time limit will be over it again
    # Negative: killed by a signal (Popen); 128+n: a shell or dvc reporting the signal (137 = OOM kill).
    if returncode < 0 or returncode in (128 + signal.SIGKILL, 128 + signal.SIGTERM):
        return True
    return any(re.search(p, output) for p in TRANSIENT_PATTERNS)


def _retry_transient(task_, task_run, state) -> bool:
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, StageFailed) and is_transient(exc.returncode, exc.tail, exc.timed_out)


def dvc_stages(root: str | Path) -> list[str]:
    """Stage names of dvc.yaml in an order DVC can run them (dependencies first)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        graph = repo.index.graph
        # DVC's graph edges point from a stage to its dependencies.
        order = list(reversed(list(nx.topological_sort(graph))))
        return [st.name for st in order if getattr(st, "name", None)]


def prefect_api_url() -> str | None:
    """The Prefect API this flow runs against: the configured one, or its temporary server.

    Stage commands get it, so that each does not start a temporary server of its own (about
    27 s a stage on 2 cores) and their flow runs land in the same API as the pipeline's.
    """
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if url:
        return str(url)
    try:  # the ephemeral API: Prefect's private handle on its temporary server
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()
        return server.api_url if server.running and server.port else None
    except Exception:  # a Prefect without that internal: children start their own
        return None


def stage_env(parent_run_id: str, uri: str, prefect_url: str | None = None) -> dict[str, str]:
    from components.tracking import PARENT_ENV

    env = {**os.environ, PARENT_ENV: parent_run_id, "MLFLOW_TRACKING_URI": uri}
    if prefect_url:
        env["PREFECT_API_URL"] = prefect_url
    return env


def run_stage(stage: str, root: str | Path, env: dict[str, str], timeout_s: float = 0) -> dict:
    """`dvc repro <stage>`, output streamed through; {stage, ran, seconds} or StageFailed."""
    start = time.perf_counter()
    tail: collections.deque[str] = collections.deque(maxlen=60)
    # A new session, so that a timeout stops the stage command and everything it started.
    proc = subprocess.Popen(
        ["dvc", "repro", stage],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            tail.append(line.rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        returncode = proc.wait(timeout=timeout_s or None)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            returncode = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            returncode = proc.wait()
    reader.join(timeout=10)
    seconds = round(time.perf_counter() - start, 2)
    if returncode != 0 or timed_out:
        raise StageFailed(stage, returncode, "\n".join(tail), timed_out)
    ran = any(f"Running stage '{stage}'" in line for line in tail) or not any(
        f"Stage '{stage}' didn't change" in line or f"Stage '{stage}' is cached" in line for line in tail
    )
    return {"stage": stage, "ran": ran, "seconds": seconds}


@task(
    name="dvc-repro",
    task_run_name="dvc repro {stage}",
    retry_condition_fn=_retry_transient,
    cache_policy=NO_CACHE,  # caching is DVC's job
)
def repro_task(
    stage: str, root: str, parent_run_id: str, uri: str, timeout_s: float = 0, prefect_url: str | None = None
) -> dict:
    return run_stage(stage, root, stage_env(parent_run_id, uri, prefect_url), timeout_s)


def apply_overrides_to_params_file(params_file: Path, overrides: list[str]) -> None:
    """Write `key=value` overrides into the params file, the way `dvc exp run -S` does."""
    if not overrides:
        return
    from dvc.utils.hydra import apply_overrides

    apply_overrides(str(params_file), list(overrides))


@flow(name="pipeline")
def pipeline_flow(
    params_path: ParamsPath = "params.yaml",
    overrides: list[str] | None = None,
    stages: list[str] | None = None,
) -> dict:
    """Run `stages` (default: every stage of dvc.yaml) through DVC; returns what each did."""
    import mlflow
    from mlflow import MlflowClient

    from components import lineage
    from components.tracking import stage_run, tracking_uri

    logger = get_run_logger()
    from components.config import ParamsError, params_files
    from flows.uptodate import params_file_problem, write_params_file

    params = params_for(params_path, overrides)  # validates, and checks the Prefect API
    base = params_files(params_path)[0]
    root = base.resolve().parent
    problem = params_file_problem(params_path)
    if problem:
        raise (FileNotFoundError if problem.startswith("no dvc.yaml") else ParamsError)(problem)
    known = dvc_stages(root)
    unknown = sorted(set(stages or []) - set(known))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; dvc.yaml has {known}")
    order = [s for s in known if stages is None or s in stages]
    cfg = params.pipeline

    # stage_run checks the tracking server before anything else runs (fails fast, naming it).
    with stage_run("pipeline", params.tracking, {"pipeline": cfg}, {"mgpo.pipeline.stages": ",".join(order)}):
        parent = mlflow.active_run().info.run_id
        write_params_file(params_path, overrides or [])  # overlays, then overrides, into params.yaml
        client = MlflowClient()
        api_url = prefect_api_url()
        results = []
        for stage in order:
            logger.info("stage %s", stage)
            try:
                result = repro_task.with_options(retries=cfg.retries, retry_delay_seconds=cfg.retry_delay_s)(
                    stage, str(root), parent, tracking_uri(params.tracking), cfg.stage_timeout_s, api_url
                )
            except StageFailed as exc:
                mlflow.set_tag("mgpo.pipeline.failed_stage", stage)
                mlflow.set_tag(f"mgpo.pipeline.{stage}", "failed")
                logger.error("stage %s failed; rerun `mgpo pipeline` to resume from it", stage)
                raise exc from None
            result["run_id"] = lineage.finalize(client, root, stage, parent_run_id=parent)
            mlflow.log_metric(f"stage_seconds.{stage}", result["seconds"])
            mlflow.set_tag(f"mgpo.pipeline.{stage}", "ran" if result["ran"] else "skipped")
            results.append(result)
        total = sum(r["seconds"] for r in results)
        mlflow.log_metric("pipeline_seconds", total)
        promotion = root / params.paths.promotion  # an absolute path stays as it is
        if "promote" in order and promotion.is_file():
            mlflow.log_artifact(str(promotion))
    summary = {"parent_run_id": parent, "stages": results, "seconds": round(total, 2)}
    for r in results:
        print(f"pipeline: {r['stage']:<12} {'ran' if r['ran'] else 'skipped':<8} {r['seconds']:8.1f} s")
    print(f"pipeline: total {total:.1f} s; MLflow parent run {parent}")
    report = root / params.paths.eval_dir / "report.html"
    if report.is_file():
        print(f"pipeline: evaluation report {report}")
    try:
        champion = client.get_model_version_by_alias(params.tracking.registered_model, "champion")
        print(f"pipeline: models:/{params.tracking.registered_model}@champion is version {champion.version}")
    except Exception:  # no registered model or no champion yet: nothing to point at
        pass
    return summary


def run(params_path: ParamsPath, overrides: list[str], status_checked: bool = False, **_: object) -> int:
    """`status_checked`: the CLI has asked DVC already (and found something stale)."""
    from flows.uptodate import up_to_date

    params = params_for(params_path, overrides)  # invalid params fail here, before Prefect starts
    lines = None if status_checked else up_to_date(params_path, overrides or [], params)
    if lines is not None:
        print("\n".join(lines))
        return 0
    pipeline_flow(params_path, overrides)
    return 0
