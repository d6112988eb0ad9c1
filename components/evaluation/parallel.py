"""Ray-parallel evaluation: chunks of views spread over actors that each hold one engine.

- Local (no `RAY_ADDRESS`): `ray.init(num_cpus=2, include_dashboard=False)`; the actors ask
  for fractional CPUs summing to one (`1 / workers` each) so the driver and Ray's own processes
  keep a core, and each actor's torch uses `cpu_count // workers` threads.
- Cluster (`RAY_ADDRESS` set, e.g. `ray://head:10001` or `auto`): one GPU per actor; the
  project folder is shipped as the job's working_dir (data, models and outputs excluded), so
  models must be hub ids, `models:/` URIs or paths on storage the nodes share.
Chunks are the runner's fixed batches, so a parallel run batches, and therefore decodes,
exactly like a serial one; results come back as each chunk finishes (a bounded number in
flight per actor) and are written by the driver, so resumption works the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from components.evaluation.runner import Chunk, WorkerSettings

IN_FLIGHT_PER_WORKER = 2
EXCLUDES = [".git", ".venv", "data", "models", "results", "checkpoints", "mlruns", "*.db", ".dvc/cache"]


def init_ray() -> bool:
    """Connect to RAY_ADDRESS or start a small local Ray; True when it is a cluster."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    address = os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        if address:
            root = Path(__file__).resolve().parents[2]
            ray.init(address=address, runtime_env={"working_dir": str(root), "excludes": EXCLUDES})
        else:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return bool(address)


class _Worker:
    """One engine and its templates; `run` evaluates one chunk (the Ray actor's class)."""

    def __init__(self, engine_spec: dict, settings: WorkerSettings, threads: int | None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        from components.evaluation.runner import load_engine
        from components.prompts import load_templates

        self.engine, self.budget = load_engine(**engine_spec)
        self.settings = settings
        self.templates = load_templates(settings.episode.templates, settings.episode.template)

    def run(self, chunk: Chunk) -> list[dict]:
        from components.evaluation.runner import run_chunk

        return run_chunk(self.engine, self.budget, chunk, self.settings, self.templates)

    def ready(self) -> bool:
        return True


class RayPool:
    """`workers` actors for one model; `execute(chunks)` yields each chunk's rows as it ends."""

    def __init__(self, workers: int, engine_spec: dict, settings: WorkerSettings):
        import ray

        if workers < 1:
            raise ValueError(f"evaluate.workers must be >= 1 for a Ray pool, got {workers}")
        cluster = init_ray()
        if cluster:
            options = {"num_cpus": 1, "num_gpus": 1}
            threads = None
            spec = {
                **engine_spec,
                "device": "cuda" if engine_spec.get("device") == "auto" else engine_spec["device"],
            }
        else:
            options = {"num_cpus": 1.0 / workers}
            threads = max(1, (os.cpu_count() or 2) // workers)
            spec = engine_spec
        actor = ray.remote(_Worker)
        self.actors = [actor.options(**options).remote(spec, settings, threads) for _ in range(workers)]
        ray.get([a.ready.remote() for a in self.actors])  # fail here, naming the model, if loading fails

    def execute(self, chunks: Iterator[Chunk]) -> Iterator[list[dict]]:
        import ray

        pending: dict = {}  # object ref -> actor index
        load = [0] * len(self.actors)
        chunks = iter(chunks)
        exhausted = False
        while True:
            while not exhausted and min(load) < IN_FLIGHT_PER_WORKER:
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                    break
                i = load.index(min(load))
                pending[self.actors[i].run.remote(chunk)] = i
                load[i] += 1
            if not pending:
                return
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            load[i] -= 1
            yield ray.get(done[0])

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []
