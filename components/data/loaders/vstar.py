"""V* Bench (Wu & Xie 2023; 191 questions: direct_attributes with 4 options, relative_position
with 2) in its three packagings:
- a folder per category, each question an image plus a JSON with `question`, `options` (the
  first one is correct) and `bbox` as [x, y, w, h] per target object;
- a JSON-lines file with `question_id`, `image` (path relative to the file), `text` (question,
  then "(A) ..." lines, then an instruction), `category` and `label`; boxes are taken from the
  image's sibling JSON when present;
- a parquet (as on the hub) with `text`, `label`, `category`, `question_id`, `image`.
Option order is kept as published (the folder format's answer is therefore always A);
shuffling is the evaluator's job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from components.data.loaders.common import (
    ImageChecker,
    RowError,
    SourceError,
    check_answer,
    clip_boxes,
    failing,
    field,
    image_bytes,
    iter_rows,
    normalize_letter,
    parse_options_text,
)
from components.data.record import Record, letter

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def xywh_boxes(value) -> list[list[float]]:
    """[x, y, w, h] or a list of them -> [[x1, y1, x2, y2], ...]."""
    if not value:
        return []
    if isinstance(value, list | tuple) and len(value) == 4 and all(isinstance(v, int | float) for v in value):
        value = [value]
    out = []
    for b in value:
        if not (isinstance(b, list | tuple) and len(b) == 4 and all(isinstance(v, int | float) for v in b)):
            raise RowError(f"bbox {b!r} is not [x, y, w, h]")
        x, y, w, h = (float(v) for v in b)
        if w <= 0 or h <= 0:
            raise RowError(f"bbox {b!r} has no area")
        out.append([x, y, x + w, y + h])
    return out


def _record(rid, source, split, data, check, question, options, answer, category, boxes, meta) -> Record:
    width, height = check(data, f"{source} {rid}")
    boxes, clipped = clip_boxes(boxes, width, height)
    if clipped:
        meta = {**meta, "boxes_clipped": True}
    return Record(rid, source, split, data, width, height, question, options, answer, category, boxes, meta)


def folder_items(root: Path) -> Iterator[tuple[str, Path]]:
    """(category, question JSON) for each question of the folder packaging, sorted."""
    for cat_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for json_path in sorted(cat_dir.glob("*.json")):
            yield cat_dir.name, json_path


def map_folder_item(category: str, json_path: Path, source: str, split: str, check: ImageChecker) -> Record:
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RowError(f"{json_path.name} is not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise RowError(f"{json_path.name} is not a JSON object")
    image = next(
        (json_path.with_suffix(s) for s in IMAGE_SUFFIXES if json_path.with_suffix(s).is_file()), None
    )
    if image is None:
        raise RowError(f"no image beside {json_path.name}")
    options = field(data, "options")
    if not isinstance(options, list) or len(options) < 2:
        raise RowError("options must be a list of at least 2")
    rid = f"{category}/{json_path.stem}"
    meta = {"target_object": data.get("target_object"), "image": f"{category}/{image.name}"}
    return _record(
        rid, source, split, image.read_bytes(), check, str(field(data, "question")),
        [str(o) for o in options], "A", category, xywh_boxes(data.get("bbox")), meta,
    )  # fmt: skip


def map_text_row(row: dict, base_dir: Path | None, source: str, split: str, check: ImageChecker) -> Record:
    """A jsonl or parquet row: question and options live in `text`."""
    rid = str(field(row, "question_id", "id", "index"))
    question, options = parse_options_text(str(field(row, "text", "question")))
    image_value = field(row, "image")
    boxes: list[list[float]] = []
    meta: dict = {}
    sibling = None
    if isinstance(image_value, str) and base_dir is not None and len(image_value) < 512:
        meta["image"] = image_value
        candidate = (base_dir / image_value).with_suffix(".json")
        if candidate.is_file():
            try:
                sibling = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                sibling = None
    label = field(row, "label", "answer", required=False)
    if label is not None:
        answer = normalize_letter(label)
    elif sibling and sibling.get("options") and sibling["options"][0] in options:
        # The folder format's convention: its first option is the correct one.
        answer = letter(options.index(sibling["options"][0]))
    else:
        raise RowError("missing field 'label' (and no sibling JSON to take the answer from)")
    if sibling:
        boxes = xywh_boxes(sibling.get("bbox"))
        meta["target_object"] = sibling.get("target_object")
    category = str(field(row, "category", required=False) or "vstar")
    data = image_bytes(image_value, base_dir)
    return _record(
        rid,
        source,
        split,
        data,
        check,
        question,
        options,
        check_answer(answer, options),
        category,
        boxes,
        meta,
    )


def load(path: Path, source: str, split: str, check: ImageChecker) -> Iterator[tuple[str, object]]:
    """(fallback id, Record-or-exception thunk) pairs; see loaders.load_benchmark."""
    if path.is_dir():
        jsonls = sorted(path.glob("*.jsonl"))
        if any(folder_items(path)):
            for category, json_path in folder_items(path):
                yield (
                    f"{category}/{json_path.stem}",
                    lambda c=category, j=json_path: map_folder_item(c, j, source, split, check),
                )
            return
        if not jsonls:
            raise SourceError(f"{path}: no category folders with question JSONs and no .jsonl file")
        path = jsonls[0]
    base = path.parent
    for n, row in enumerate(iter_rows(path)):
        if "_error" in row:
            yield f"line-{row.get('_line', n)}", failing(row["_error"])
            continue
        fallback = str(row.get("question_id", f"row-{n}"))
        yield fallback, lambda r=row: map_text_row(r, base, source, split, check)


def load_rows(rows, source: str, split: str, check: ImageChecker) -> Iterator[tuple[str, object]]:
    """Hub rows (the parquet packaging's columns)."""
    for n, row in enumerate(rows):
        yield (
            str(row.get("question_id", f"row-{n}")),
            lambda r=row: map_text_row(r, None, source, split, check),
        )
