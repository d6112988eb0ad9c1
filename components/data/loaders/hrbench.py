"""HR-Bench 4K / 8K (Wang et al. 2024; 200 questions each, shipped as 800 rows: 4 cyclic
permutations of the options). TSV or parquet with `index, question, answer, category, A, B,
C, D, cycle_category, image` (image as base64 text, or bytes in some parquet exports).
Every row is kept (option order as published); `cycle_category` and `index` go to meta so the
evaluator can score a question as right only when all of its cycles are right. No boxes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from components.data.loaders.common import (
    ImageChecker,
    RowError,
    SourceError,
    check_answer,
    failing,
    field,
    image_bytes,
    iter_rows,
    normalize_letter,
)
from components.data.record import LETTERS, Record


def map_row(row: dict, source: str, split: str, check: ImageChecker) -> Record:
    index = field(row, "index")
    rid = str(index)
    question = str(field(row, "question")).strip()
    options = []
    for key in LETTERS[:5]:
        value = field(row, key, required=False)
        if value is None:
            break
        options.append(str(value).strip())
    if len(options) < 2:
        raise RowError("missing option columns 'A', 'B', ...")
    answer = check_answer(normalize_letter(field(row, "answer")), options)
    data = image_bytes(field(row, "image"))
    width, height = check(data, f"{source} {rid}")
    category = str(field(row, "category", required=False) or "hrbench")
    meta = {"index": str(index), "cycle_category": str(field(row, "cycle_category", required=False) or "")}
    return Record(rid, source, split, data, width, height, question, options, answer, category, [], meta)


def files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in {".tsv", ".parquet"})
        if not found:
            raise SourceError(f"{path}: no .tsv or .parquet file inside")
        return found
    return [path]


def load(path: Path, source: str, split: str, check: ImageChecker) -> Iterator[tuple[str, object]]:
    for file in files(path):
        yield from load_rows(iter_rows(file), source, split, check)


def load_rows(rows, source: str, split: str, check: ImageChecker) -> Iterator[tuple[str, object]]:
    for n, row in enumerate(rows):
        if "_error" in row:
            yield f"row-{n}", failing(row["_error"])
            continue
        yield str(row.get("index", f"row-{n}")), lambda r=row: map_row(r, source, split, check)
