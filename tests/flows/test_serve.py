"""prefect.yaml's deployments, served both documented ways against a real `prefect server start`.

The fast tests read prefect.yaml and build each deployment. The slow one starts a Prefect
server, then (B) creates the process work pool, runs `prefect deploy --all` and a worker that
executes the weekly re-evaluation (no champion in the toy registry: it ends at once), and (A)
runs `python -m flows.serve`, which executes the nightly pipeline on the toy DVC repository.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prefect.client.schemas.schedules import CronSchedule

from flows.serve import load_deployment_specs, main, to_deployment

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def test_prefect_yaml_deployments():
    specs = {s["name"]: s for s in load_deployment_specs(ROOT / "prefect.yaml")}
    assert set(specs) == {"nightly", "weekly-champion-eval"}
    for spec in specs.values():
        (schedule,) = spec["schedules"]
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # raises when invalid
        deployment = to_deployment(spec)  # loads the entrypoint's flow
        assert deployment.parameters == {"params_path": "params.yaml"}
        assert deployment.concurrency_limit == 1
    assert to_deployment(specs["nightly"]).flow_name == "pipeline"
    assert to_deployment(specs["weekly-champion-eval"]).flow_name == "reevaluate-champion"
    # nightly every day, weekly once a week
    assert specs["nightly"]["schedules"][0]["cron"].split()[2:] == ["*", "*", "*"]
    assert specs["weekly-champion-eval"]["schedules"][0]["cron"].split()[4] != "*"


def test_bad_deployment_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.yaml not found"):
        load_deployment_specs(tmp_path / "nowhere.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("deployments:\n  - name: x\n    entrypoint: flows/pipeline.py\n")
    with pytest.raises(ValueError, match=r"deployments\[0\].entrypoint must be file.py:flow_function"):
        load_deployment_specs(bad)


def test_serve_needs_a_server(monkeypatch, capsys):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main([]) == 2
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"prefect server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return time.perf_counter() - start
        except OSError:
            time.sleep(1)
    raise AssertionError(f"prefect server not healthy after {timeout} s")


def _flow_run_state(run_id: str, env: dict, cwd: Path) -> str:
    out = subprocess.run(
        [str(VENV_BIN / "prefect"), "flow-run", "inspect", run_id],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    found = re.search(r"state_type=StateType\.(\w+)|'type': '(\w+)'|\"type\": \"(\w+)\"", out)
    return next(g for g in found.groups() if g) if found else ""


def _run_deployment(name: str, env: dict, cwd: Path) -> str:
    out = subprocess.run(
        [str(VENV_BIN / "prefect"), "deployment", "run", name],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return re.search(r"UUID:\s*([0-9a-f-]{36})", out).group(1)


def _wait_final(run_id: str, env: dict, cwd: Path, timeout: float) -> str:
    start = time.perf_counter()
    state = ""
    while time.perf_counter() - start < timeout:
        state = _flow_run_state(run_id, env, cwd)
        if state in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
            return state
        time.sleep(3)
    return state


@pytest.mark.slow
def test_work_pool_and_serve_against_a_prefect_server(linked_toy_repo, tmp_path):
    repo, toy_env = linked_toy_repo
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        **toy_env,
        "PREFECT_HOME": str(tmp_path / "prefect_home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "COLUMNS": "400",  # rich tables in the CLI's output are cut to the terminal width
    }
    prefect = str(VENV_BIN / "prefect")
    server = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    served = None
    try:
        print(f"prefect server healthy after {_wait_healthy(api, server, 240):.0f} s")

        def cli(*args: str, timeout: int = 180) -> str:
            proc = subprocess.run(
                [prefect, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout
            )
            assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
            return proc.stdout

        # B. process work pool + `prefect deploy --all` + a worker.
        cli("work-pool", "create", "mgpo-local", "--type", "process")
        cli("deploy", "--all", "--no-prompt")
        listing = cli("deployment", "ls")
        assert "pipeline/nightly" in listing and "reevaluate-champion/weekly-champion-eval" in listing
        assert "0 2 * * *" in cli("deployment", "inspect", "pipeline/nightly")
        run_id = _run_deployment("reevaluate-champion/weekly-champion-eval", env, repo)
        start = time.perf_counter()
        cli("worker", "start", "--pool", "mgpo-local", "--run-once", timeout=400)
        assert _wait_final(run_id, env, repo, 60) == "COMPLETED"
        print(f"work pool: weekly re-evaluation run by a worker in {time.perf_counter() - start:.0f} s")

        # A. flow.serve from prefect.yaml: the served process runs the nightly pipeline. (One
        # server holds one deployment per name: drop B's, whose runs a worker would pick up.)
        cli("deployment", "delete", "pipeline/nightly")
        log = tmp_path / "serve.log"
        with open(log, "w") as fh:
            served = subprocess.Popen(
                [sys.executable, "-m", "flows.serve", "--only", "nightly"],
                cwd=repo,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        time.sleep(20)  # registering the served deployment
        assert served.poll() is None, log.read_text()
        run_id = _run_deployment("pipeline/nightly", env, repo)
        start = time.perf_counter()
        state = _wait_final(run_id, env, repo, 420)
        assert state == "COMPLETED", f"{state}:\n{log.read_text()[-6000:]}"
        assert (repo / "out/b/done.txt").is_file()
        print(f"served nightly pipeline finished in {time.perf_counter() - start:.0f} s")
    finally:
        for proc in (served, server):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
