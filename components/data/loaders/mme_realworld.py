"""MME-RealWorld and its Lite split (Zhang et al. 2024): multiple choice A-E over OCR, remote
sensing, diagrams and tables, monitoring and autonomous driving; perception and reasoning.

Packagings read:
- the original JSON list + image folder: `Question_id`, `Image` (path relative to the JSON's
  folder), `Text`, `Answer choices` (["(A) ...", ...]), `Ground truth`, `Task`, `Subtask`,
  `Category`;
- the base64 releases (JSON, TSV or parquet; also lmms-eval's parquet): `index` or
  `question_id`, `image` or `bytes` (base64 or bytes), `question`, `multi-choice options` (a
  list, or one text "The choices are listed below:\\n(A) ...\\n(B) ..."), `answer`,
  `category`, `l2-category`.
The category is the Subtask (or l2-category); task and fine category go to meta. No boxes.
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
    strip_option_prefix,
)
from components.data.record import LETTERS, Record


def parse_choices(value) -> list[str]:
    if isinstance(value, str):
        lines = [ln for ln in value.split("\n") if ln.strip()]
        if lines and not lines[0].lstrip().startswith("("):
            lines = lines[1:]  # "The choices are listed below:"
        value = lines
    if not isinstance(value, list) or len(value) < 2:
        raise RowError("answer choices must be a list of at least 2")
    return [strip_option_prefix(str(v), LETTERS[i]) for i, v in enumerate(value)]


def map_row(row: dict, base_dir: Path | None, source: str, split: str, check: ImageChecker) -> Record:
    rid = str(field(row, "Question_id", "question_id", "index"))
    question = str(field(row, "Text", "question")).strip()
    options = parse_choices(field(row, "Answer choices", "multi-choice options"))
    answer = check_answer(normalize_letter(field(row, "Ground truth", "answer")), options)
    image_value = field(row, "Image", "image", "bytes")
    data = image_bytes(image_value, base_dir)
    width, height = check(data, f"{source} {rid}")
    category = str(field(row, "Subtask", "l2-category", "category", required=False) or "mme_realworld")
    meta = {
        "task": field(row, "Task", required=False),
        "subtask": field(row, "Subtask", "l2-category", required=False),
        "category": field(row, "Category", "category", required=False),
    }
    if isinstance(image_value, str) and len(image_value) < 512:
        meta["image"] = image_value
    meta = {k: str(v) for k, v in meta.items() if v is not None}
    return Record(rid, source, split, data, width, height, question, options, answer, category, [], meta)


def files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in {".json", ".tsv", ".parquet"})
        if not found:
            raise SourceError(f"{path}: no .json, .tsv or .parquet question file inside")
        return found
    return [path]


def load(path: Path, source: str, split: str, check: ImageChecker) -> Iterator[tuple[str, object]]:
    for file in files(path):
        yield from load_rows(iter_rows(file), source, split, check, file.parent)


def load_rows(rows, source, split, check, base_dir: Path | None = None) -> Iterator[tuple[str, object]]:
    for n, row in enumerate(rows):
        if "_error" in row:
            yield f"row-{n}", failing(row["_error"])
            continue
        fallback = str(row.get("Question_id", row.get("question_id", row.get("index", f"row-{n}"))))
        yield fallback, lambda r=row: map_row(r, base_dir, source, split, check)
