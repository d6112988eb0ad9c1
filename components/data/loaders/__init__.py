"""Benchmark loaders: V* Bench, HR-Bench 4K/8K, MME-RealWorld(-Lite) -> canonical records.

`load_benchmark` resolves a `prepare.benchmarks` entry's `path` (absolute; else relative to the
working directory; else under `paths.raw_dir`), or, when no such file exists and the path
looks like `owner/name`, loads that hub dataset through `datasets` (needs the network; not
tested offline). It yields a `Record` per good row and a `Skipped` per bad one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from components.data.loaders import hrbench, mme_realworld, vstar
from components.data.loaders.common import (
    ImageChecker,
    RowError,
    Skipped,
    SourceError,
    iter_hub,
    looks_like_hub_id,
)
from components.data.record import Record, RecordError

LOADERS = {"vstar": vstar, "hrbench": hrbench, "mme_realworld": mme_realworld}

__all__ = ["LOADERS", "Skipped", "SourceError", "load_benchmark", "resolve_source"]


def resolve_source(path: str, raw_dir: str | Path) -> Path | str:
    """A local path when one exists, else the hub id; SourceError naming both tries."""
    candidates = [Path(path)] if Path(path).is_absolute() else [Path(path), Path(raw_dir) / path]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    if looks_like_hub_id(path):
        return path
    raise SourceError(f"benchmark path {path!r} not found (tried {', '.join(map(str, candidates))})")


def load_benchmark(
    kind: str, path: str, name: str, split: str, raw_dir: str | Path, max_image_pixels: int
) -> Iterator[Record | Skipped]:
    """Stream records (and skips) of one benchmark; `name` becomes the records' source."""
    if kind not in LOADERS:
        raise SourceError(f"unknown benchmark kind {kind!r} (expected one of {sorted(LOADERS)})")
    module = LOADERS[kind]
    check = ImageChecker(max_image_pixels)
    where = resolve_source(path, raw_dir)
    if isinstance(where, Path):
        items = module.load(where, name, split, check)
    else:
        items = module.load_rows(iter_hub(where, split), name, split, check)
    for fallback, make in items:
        try:
            yield make().validate()
        except (RowError, RecordError) as exc:
            yield Skipped(fallback, str(exc), split)
