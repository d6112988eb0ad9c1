"""Serve the deployments of prefect.yaml from this process (`flow.serve`, no work pool needed).

Reads every entry of prefect.yaml (entrypoint, parameters, schedules, concurrency limit, tags)
so that the schedules live in one file, builds each flow's deployment with `to_deployment` and
serves them all with `prefect.serve` until stopped (Ctrl-C). Needs a Prefect server: the
ephemeral API lives only as long as one process, so schedules need `prefect server start` and
`PREFECT_API_URL`; the check at start says so by name when the server is not reachable.

Run (from the repository root):
    prefect server start &
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve                 # or: python -m flows.serve --only nightly
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from flows._stage import check_prefect_api


def load_deployment_specs(path: str | Path = "prefect.yaml") -> list[dict]:
    """The `deployments` entries of a prefect.yaml, checked for what serving needs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run from the repository root")
    data = yaml.safe_load(path.read_text()) or {}
    specs = data.get("deployments") or []
    for i, spec in enumerate(specs):
        for key in ("name", "entrypoint"):
            if not spec.get(key):
                raise ValueError(f"{path}: deployments[{i}] has no {key!r}")
        if ":" not in spec["entrypoint"]:
            raise ValueError(f"{path}: deployments[{i}].entrypoint must be file.py:flow_function")
    return specs


def to_deployment(spec: dict):
    """A RunnerDeployment for `prefect.serve` from one prefect.yaml entry."""
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(spec["entrypoint"])
    crons = [s["cron"] for s in spec.get("schedules") or [] if "cron" in s]
    schedules = None
    if crons:
        from prefect.schedules import Cron

        zones = [s.get("timezone", "UTC") for s in spec["schedules"] if "cron" in s]
        schedules = [Cron(c, timezone=z) for c, z in zip(crons, zones, strict=True)]
    return flow.to_deployment(
        name=spec["name"],
        description=spec.get("description"),
        parameters=spec.get("parameters") or {},
        schedules=schedules,
        concurrency_limit=spec.get("concurrency_limit"),
        tags=spec.get("tags") or [],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the deployments of prefect.yaml from this process.")
    parser.add_argument("--file", default="prefect.yaml", help="deployments file (default: prefect.yaml)")
    parser.add_argument("--only", action="append", default=[], help="serve only these deployment names")
    args = parser.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        print(
            "serve: PREFECT_API_URL is not set; schedules need a Prefect server "
            "(`prefect server start`, then export PREFECT_API_URL=http://127.0.0.1:4200/api)",
            file=sys.stderr,
        )
        return 2
    check_prefect_api()
    specs = [s for s in load_deployment_specs(args.file) if not args.only or s["name"] in args.only]
    if not specs:
        print(f"serve: no deployment named {args.only} in {args.file}", file=sys.stderr)
        return 2
    from prefect import serve

    serve(*[to_deployment(s) for s in specs])
    return 0


if __name__ == "__main__":
    sys.exit(main())
