"""Resumable, append-only `predictions.jsonl`: one JSON object per evaluated sample view.

Each line is one prediction (see `components.evaluation.runner` for its fields). Two fields make
resumption safe:
- `key`: model | benchmark | mode | sample id | cycle | repeat, unique per line;
- `fingerprint`: a hash of everything that decides the prediction (model weights, benchmark file,
  mode, seed, shuffling, decoding, episode params). A rerun keeps a line only when its key is
  asked for again with the same fingerprint; stale lines are dropped, so changing a param never
  mixes old and new predictions.

Atomicity: each line is written by a single `os.write` on an `O_APPEND` descriptor and fsynced,
so lines never interleave; and `PredictionStore.open` truncates a torn tail (a last line
without its newline or not valid JSON) left by a kill mid-write, so a killed run leaves no torn
line behind for anyone reading the file afterwards. Compaction (dropping stale lines) rewrites
the file to a temporary name and `os.replace`s it, which is atomic on POSIX.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


def prediction_key(model: str, benchmark: str, mode: str, sample_id: str, cycle: int, repeat: int) -> str:
    return f"{model}|{benchmark}|{mode}|{sample_id}|c{cycle}|r{repeat}"


def _parse_lines(data: bytes) -> tuple[list[dict], int]:
    """Complete rows, and how many lines were torn or corrupt (only a crash makes them)."""
    rows: list[dict] = []
    bad = 0
    for raw in data.splitlines(keepends=True):
        try:
            row = json.loads(raw) if raw.endswith(b"\n") else None
        except ValueError:
            row = None
        if isinstance(row, dict) and "key" in row:
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def read_predictions(path: str | Path) -> list[dict]:
    """Every complete prediction in the file (a torn tail is ignored); [] when it is absent."""
    path = Path(path)
    if not path.is_file():
        return []
    rows, _ = _parse_lines(path.read_bytes())
    return rows


def _write_atomic(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        for row in rows:
            f.write(_encode(row))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _encode(row: dict) -> bytes:
    # allow_nan=False: NaN is not JSON; a metric that produced one is a bug to surface here.
    return (json.dumps(row, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n").encode()


class PredictionStore:
    """Predictions of one evaluation folder; use `open` to load, repair and compact it."""

    def __init__(self, path: Path, rows: dict[str, dict]):
        self.path = path
        self._rows = rows
        self._fd: int | None = None

    @classmethod
    def open(cls, path: str | Path, keep: Callable[[dict], bool] | None = None) -> PredictionStore:
        """Load `path` (created if absent). A torn tail is cut off; rows for which
        `keep(row)` is False (stale fingerprints) are dropped; duplicates keep the last row."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows: dict[str, dict] = {}
        rewrite = False
        if path.is_file():
            # A torn line must go before anything is appended, or the next line would fuse with it.
            parsed, bad = _parse_lines(path.read_bytes())
            rewrite = bad > 0
            for row in parsed:
                if keep is not None and not keep(row):
                    rewrite = True
                    continue
                if row["key"] in rows:
                    rewrite = True
                rows[row["key"]] = row
        if rewrite or not path.is_file():
            _write_atomic(path, rows.values())
        return cls(path, rows)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str) -> dict | None:
        return self._rows.get(key)

    def rows(self) -> list[dict]:
        return list(self._rows.values())

    def __iter__(self) -> Iterator[dict]:
        return iter(list(self._rows.values()))

    def append(self, row: dict) -> None:
        """Write one prediction as one line, durably, before returning."""
        if "key" not in row:
            raise ValueError("a prediction needs a 'key'")
        data = _encode(row)
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        view = memoryview(data)
        # One write call for the whole line; loop only for the (rare) short write.
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self._rows[row["key"]] = row

    def extend(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.append(row)

    def retain(self, keep: Callable[[dict], bool]) -> int:
        """Drop the rows for which `keep(row)` is False (atomic rewrite); return how many went."""
        drop = [k for k, row in self._rows.items() if not keep(row)]
        if drop:
            self.close()
            for k in drop:
                del self._rows[k]
            _write_atomic(self.path, self._rows.values())
        return len(drop)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> PredictionStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
