"""The resumable predictions file: atomic lines, torn-tail repair, stale-row dropping, kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from components.evaluation.predictions import PredictionStore, prediction_key, read_predictions

ROOT = Path(__file__).resolve().parents[3]


def test_append_and_reopen(tmp_path):
    path = tmp_path / "p.jsonl"
    with PredictionStore.open(path) as store:
        store.append({"key": "a", "v": 1})
        store.append({"key": "b", "v": "ünïcode"})
    assert [r["key"] for r in read_predictions(path)] == ["a", "b"]
    with PredictionStore.open(path) as store:
        assert "a" in store and "b" in store and len(store) == 2
        assert store.get("b")["v"] == "ünïcode"


def test_torn_tail_is_cut_and_next_line_does_not_fuse(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"key": "a", "v": 1}\n{"key": "b", "v"')  # a kill mid-write
    assert [r["key"] for r in read_predictions(path)] == ["a"]
    with PredictionStore.open(path) as store:
        assert len(store) == 1
        store.append({"key": "c", "v": 3})
    lines = path.read_bytes().splitlines()
    assert [json.loads(x)["key"] for x in lines] == ["a", "c"]


def test_stale_rows_are_dropped_and_duplicates_keep_the_last(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"key": "a", "fp": "old"}, {"key": "b", "fp": "new"}, {"key": "b", "fp": "new", "v": 2}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with PredictionStore.open(path, keep=lambda r: r["fp"] == "new") as store:
        assert "a" not in store and store.get("b")["v"] == 2
    assert len(path.read_text().splitlines()) == 1  # compacted on disk too
    assert not list(tmp_path.glob("*.tmp"))


def test_nan_is_refused(tmp_path):
    import pytest

    with PredictionStore.open(tmp_path / "p.jsonl") as store, pytest.raises(ValueError):
        store.append({"key": "a", "iou": float("nan")})


def test_key_names_every_dimension():
    assert prediction_key("base", "test", "mgpo", "s1", 2, 0) == "base|test|mgpo|s1|c2|r0"


WRITER = """
import sys
from components.evaluation.predictions import PredictionStore
store = PredictionStore.open(sys.argv[1])
i = len(store)
while True:
    store.append({"key": f"k{i}", "text": "x" * 5000})
    i += 1
"""


def test_kill_mid_run_leaves_only_whole_lines(tmp_path):
    """SIGKILL a process appending large lines at full speed; every line read back is whole."""
    path = tmp_path / "p.jsonl"
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT)
        deadline = time.time() + 30
        while (not path.exists() or path.stat().st_size < 50_000) and time.time() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with PredictionStore.open(path) as store:
            n = len(store)
        data = path.read_bytes()
        assert data.endswith(b"\n")
        assert len(data.splitlines()) == n > 0
        assert all(json.loads(line)["text"] == "x" * 5000 for line in data.splitlines())
    keys = [json.loads(x)["key"] for x in path.read_bytes().splitlines()]
    assert keys == [f"k{i}" for i in range(len(keys))]  # resumed where each run stopped
