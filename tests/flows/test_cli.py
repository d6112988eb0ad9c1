"""The `mgpo` command: help for every subcommand, clear refusals, validated overrides."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flows.cli import STAGES, build_parser, main

MGPO = str(Path(sys.executable).parent / "mgpo")
ROOT = Path(__file__).resolve().parents[2]


def test_console_script_help():
    out = subprocess.run([MGPO, "--help"], capture_output=True, text=True, check=True).stdout
    for name in STAGES:
        assert name in out


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--params" in out and "-S KEY.PATH=VALUE" in out


def test_bad_override_fails_before_any_work(capsys):
    assert main(["build-model", "-S", "model.bogus=1"]) == 2
    assert "unknown key model.bogus" in capsys.readouterr().err


def test_invalid_value_names_the_key(capsys):
    assert main(["build-model", "-S", "rl.rollouts_per_prompt=1"]) == 2
    assert "rl.rollouts_per_prompt: rollouts per prompt must be >= 2 for GRPO" in capsys.readouterr().err


def test_missing_params_file(capsys, tmp_path):
    assert main(["build-model", "--params", str(tmp_path / "none.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_unbuilt_stage_says_so(monkeypatch, capsys):
    monkeypatch.setitem(STAGES, "rl", ("flows.does_not_exist", "x"))
    assert main(["rl"]) == 2
    assert "not built yet" in capsys.readouterr().err


# --- servers checked before any flow starts (flows/preflight.py) ------------------------------

DOWN = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused


def _no_flow_import(monkeypatch):
    import flows.cli as cli

    def refuse(name):
        raise AssertionError(f"{name} imported: the check must come before any flow module")

    monkeypatch.setattr(cli.importlib, "import_module", refuse)


@pytest.mark.parametrize("name", sorted(set(STAGES) - {"infer"}))
def test_unreachable_mlflow_is_one_line_before_any_flow(name, monkeypatch, capsys):
    _no_flow_import(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", DOWN)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    start = time.perf_counter()
    assert main([name]) == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"mgpo {name}: MLflow tracking server {DOWN} is unreachable" in err
    assert "MLFLOW_TRACKING_URI" in err  # the fix


@pytest.mark.parametrize("name", ["build-model", "rl", "pipeline"])
def test_unreachable_prefect_is_one_line_before_any_flow(name, monkeypatch, capsys):
    _no_flow_import(monkeypatch)
    monkeypatch.setenv("PREFECT_API_URL", f"{DOWN}/api")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main([name]) == 2
    err = capsys.readouterr().err.strip()
    assert err == err.splitlines()[0] and f"Prefect API {DOWN}/api is unreachable" in err
    assert "prefect server start" in err


def test_infer_checks_mlflow_only_for_a_registry_model(monkeypatch, capsys):
    _no_flow_import(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", DOWN)
    monkeypatch.setenv("PREFECT_API_URL", f"{DOWN}/api")  # infer runs no flow: never checked
    assert main(["infer", "x.png", "q?", "--model", "models:/m@champion"]) == 2
    assert "MLflow tracking server" in capsys.readouterr().err
    with pytest.raises(AssertionError, match=r"flows\.infer imported"):
        main(["infer", "x.png", "q?", "--model", "models/base"])  # no server needed: goes on


def test_local_stores_and_the_temporary_api_are_not_asked():
    """sqlite:///mlflow.db and no PREFECT_API_URL (Prefect's temporary API): no request at all.
    In a fresh process, as a user runs it (this session's Prefect test harness configures an API)."""
    probe = (
        "import urllib.request, sys\n"
        "def no_network(*a, **k): raise AssertionError('no request expected')\n"
        "urllib.request.urlopen = no_network\n"
        "from components.config import load_params\n"
        "from flows.preflight import check_services\n"
        f"check_services(load_params({str(ROOT / 'params.yaml')!r}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(401)  # a server behind authentication: up
        self.end_headers()

    def log_message(self, *args):
        pass


def test_any_http_answer_is_up_and_a_silent_server_times_out_fast():
    from components.tracking import unreachable

    server = http.server.HTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert unreachable(f"http://127.0.0.1:{server.server_port}", timeout=2) is None
    finally:
        server.shutdown()
    silent = socket.socket()  # accepts connections (the kernel's backlog) but never replies
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        start = time.perf_counter()
        why = unreachable(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=1)
        assert why and "is unreachable" in why and time.perf_counter() - start < 3
    finally:
        silent.close()


def test_mgpo_pipeline_with_mlflow_down_fails_in_seconds(toy_repo):
    """The command a user types: before, Prefect's temporary API started first (~50 s) and a
    25-line traceback followed; now one line, before any flow."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": DOWN}
    env.pop("PREFECT_API_URL", None)
    start = time.perf_counter()
    proc = subprocess.run(
        [MGPO, "pipeline"], cwd=toy_repo, env=env, capture_output=True, text=True, timeout=120
    )
    seconds = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert f"MLflow tracking server {DOWN} is unreachable" in proc.stderr
    assert seconds < 5, f"took {seconds:.1f} s"
    assert not (toy_repo / "out").exists()


# --- repeatable --params (overlays) ------------------------------------------------------------


def _capture_run(monkeypatch) -> dict:
    """Replace the flow module the CLI imports by one that records what `run` receives."""
    import types

    import flows.cli as cli

    seen: dict = {}

    def run(params_path, overrides, **options):
        seen.update(params_path=params_path, overrides=overrides)
        return 0

    monkeypatch.setattr(cli.importlib, "import_module", lambda name: types.SimpleNamespace(run=run))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return seen


def test_one_params_file_is_passed_on_as_before(monkeypatch):
    seen = _capture_run(monkeypatch)
    assert main(["build-model", "-S", "rl.max_steps=3"]) == 0
    assert seen == {"params_path": "params.yaml", "overrides": ["rl.max_steps=3"]}
    assert main(["build-model", "--params", str(ROOT / "params.yaml")]) == 0
    assert seen["params_path"] == str(ROOT / "params.yaml")


def test_repeated_params_pass_the_base_and_its_overlays_on(monkeypatch, tmp_path):
    seen = _capture_run(monkeypatch)
    overlay = tmp_path / "o.yaml"
    overlay.write_text("rl:\n  max_steps: 4\n")
    assert main(["rl", "--params", str(ROOT / "params.yaml"), "--params", str(overlay)]) == 0
    assert seen["params_path"] == [str(ROOT / "params.yaml"), str(overlay)]
    from components.config import load_params

    assert load_params(seen["params_path"], seen["overrides"]).rl.max_steps == 4


def test_a_bad_overlay_key_is_one_line_naming_the_file(capsys, tmp_path):
    overlay = tmp_path / "o.yaml"
    overlay.write_text("rl:\n  max_stepz: 4\n")
    assert main(["rl", "--params", str(ROOT / "params.yaml"), "--params", str(overlay)]) == 2
    err = capsys.readouterr().err
    assert f"rl.max_stepz: unknown key (set in {overlay})" in err
