"""Progress bars: live on a terminal, a line every few seconds in a log file; one helper for all."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

from components import progress
from components.progress import progress_bar

ROOT = Path(__file__).resolve().parents[2]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines_written(stream: io.StringIO) -> int:
    # tqdm redraws with a carriage return: in a log file each redraw reads as one line.
    return len([p for p in re.split(r"[\r\n]", stream.getvalue()) if p.strip()])


def run_bar(stream, n: int = 50, pause: float = 0.01) -> None:
    with progress_bar(total=n, desc="x", file=stream, miniters=1) as bar:
        for _ in range(n):
            time.sleep(pause)
            bar.update()


def test_a_log_file_gets_a_few_lines_and_a_terminal_a_live_bar(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 5.0)
    log = io.StringIO()
    run_bar(log)  # 0.5 s of updates: the first line and the last only
    assert lines_written(log) <= 3
    assert "50/50" in log.getvalue()
    tty = Terminal()
    run_bar(tty)
    assert lines_written(tty) >= 5  # redrawn as it goes (tqdm's 0.1 s default)


def test_the_interval_is_honoured_in_a_log(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.2)
    log = io.StringIO()
    run_bar(log, n=20, pause=0.05)  # 1 s: about one line per 0.2 s
    assert 3 <= lines_written(log) <= 9


def test_every_progress_bar_goes_through_the_helper():
    """No module in components/ or flows/ builds a tqdm bar of its own."""
    offenders = []
    for path in [*ROOT.glob("components/**/*.py"), *ROOT.glob("flows/**/*.py")]:
        if path.name == "progress.py":
            continue
        if re.search(r"^\s*(from tqdm|import tqdm)", path.read_text(), re.M):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == [], f"use components.progress.progress_bar in {offenders}"
