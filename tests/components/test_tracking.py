"""Fail-fast checks of the tracking server and the Prefect API, against real local HTTP servers."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

from components.tracking import TrackingUnavailable, check_reachable, tracking_uri
from flows._stage import PrefectUnavailable, check_prefect_api


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path.endswith("/health") else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_tracking_server_answers(server):
    check_reachable(server)


def test_unreachable_tracking_server_is_named_at_once():
    start = time.perf_counter()
    with pytest.raises(
        TrackingUnavailable, match=r"MLflow tracking server http://127.0.0.1:9 is unreachable"
    ):
        check_reachable("http://127.0.0.1:9", timeout=2)
    assert time.perf_counter() - start < 5


def test_local_stores_need_no_check():
    check_reachable("sqlite:///nowhere/mlflow.db")
    check_reachable("file:///tmp/mlruns")


def test_env_overrides_params(monkeypatch):
    from components.config import Tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere:5000")
    assert tracking_uri(Tracking()) == "http://elsewhere:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(Tracking()) == "sqlite:///mlflow.db"


def test_prefect_api(server, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    check_prefect_api()  # ephemeral: nothing to check
    monkeypatch.setenv("PREFECT_API_URL", server + "/api")
    check_prefect_api()
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with pytest.raises(PrefectUnavailable, match=r"Prefect API http://127.0.0.1:9/api is unreachable"):
        check_prefect_api(timeout=2)
