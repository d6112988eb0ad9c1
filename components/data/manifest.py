"""`manifest.json` of a dataset folder: what was written, from what, and what was skipped.

Contents (keys sorted, no timings, so identical inputs give an identical file): the dataset
name and kind, the generator or source parameters, per split the file, row count, sha256,
size, counts per category and per answer letter; every skipped input with its id, split and
reason; the skipped share and its threshold; for the synthetic set, the oracle self-check.
"""

from __future__ import annotations

import json
from pathlib import Path

from components.data.parquet import RecordWriter, sha256_file

SCHEMA_VERSION = 1


class SkipThresholdError(RuntimeError):
    """Too many input rows were skipped; the message names the dataset, counts and reasons."""


def split_entry(writer: RecordWriter) -> dict:
    return {
        "file": writer.path.name,
        "rows": writer.rows,
        "sha256": sha256_file(writer.path),
        "bytes": writer.path.stat().st_size,
        "categories": dict(sorted(writer.categories.items())),
        "answers": dict(sorted(writer.answers.items())),
    }


def skip_summary(rows: int, skipped: list, max_fraction: float) -> dict:
    total = rows + len(skipped)
    fraction = len(skipped) / total if total else 0.0
    return {
        "skipped": [{"id": s.id, "split": s.split, "reason": s.reason} for s in skipped],
        "skipped_fraction": round(fraction, 6),
        "max_skipped_fraction": max_fraction,
    }


def check_skips(name: str, rows: int, skipped: list, max_fraction: float, manifest_path: Path) -> None:
    """Raise SkipThresholdError when the skipped share passes the threshold (or nothing is left)."""
    total = rows + len(skipped)
    fraction = len(skipped) / total if total else 0.0
    if rows == 0 or fraction > max_fraction:
        reasons = "; ".join(f"{s.id}: {s.reason}" for s in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        raise SkipThresholdError(
            f"dataset {name}: {len(skipped)} of {total} input rows skipped ({fraction:.1%}), above "
            f"prepare.max_skipped_fraction = {max_fraction:.1%}. First reasons: {reasons}{more}. "
            f"Every skip is listed in {manifest_path}."
        )


def write_manifest(path: Path, manifest: dict) -> None:
    data = {"schema_version": SCHEMA_VERSION, **manifest}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_manifest(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
