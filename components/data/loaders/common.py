"""What every benchmark loader shares: row sources (TSV, parquet, JSON, JSONL, hub), image
checks, field access with named errors, option parsing.

A loader yields `Record` for good rows and `Skipped(id, reason)` for bad ones (missing field,
unreadable or truncated image, image over the pixel limit, answer not among the options); the
stage records every skip in the manifest and fails past `prepare.max_skipped_fraction`.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from components.data.record import LETTERS


@dataclass(frozen=True)
class Skipped:
    id: str
    reason: str
    split: str = ""


class RowError(ValueError):
    """A row cannot become a record; the message is the reason recorded in the manifest."""


class SourceError(ValueError):
    """A benchmark source (file, folder, hub id) cannot be read at all; names the path."""


def failing(reason: str):
    """A row thunk that fails with `reason` (for rows that could not even be parsed)."""

    def thunk():
        raise RowError(reason)

    return thunk


# ----------------------------------------------------------------------------- row sources


def iter_tsv(path: Path) -> Iterator[dict]:
    """Rows of a TSV (VLMEvalKit style, pandas-quoted), streamed; base64 fields can be huge."""
    csv.field_size_limit(sys.maxsize)
    with open(path, newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f, delimiter="\t")


def iter_parquet(path: Path, batch_size: int = 32) -> Iterator[dict]:
    """Rows of a parquet file, a batch at a time (image columns stay bytes)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise SourceError(f"{path}: not a readable parquet file ({exc})") from None
    for batch in pf.iter_batches(batch_size=batch_size):
        yield from batch.to_pylist()


def iter_jsonl(path: Path) -> Iterator[dict]:
    """Rows of a JSON-lines file; an unparsable line becomes a row carrying `_error`."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                row = {"_error": f"line {n} is not JSON ({exc.msg})", "_line": n}
            yield row if isinstance(row, dict) else {"_error": f"line {n} is not an object", "_line": n}


def iter_json(path: Path) -> Iterator[dict]:
    """Rows of a JSON file holding a list of objects (or {"data": [...]})."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: not a readable JSON file ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise SourceError(f"{path}: expected a JSON list of questions")
    for n, row in enumerate(data):
        yield row if isinstance(row, dict) else {"_error": f"item {n} is not an object", "_line": n}


def iter_rows(path: Path) -> Iterator[dict]:
    """Rows of one table file by suffix: .tsv, .parquet, .jsonl, .json."""
    suffix = path.suffix.lower()
    readers = {".tsv": iter_tsv, ".parquet": iter_parquet, ".jsonl": iter_jsonl, ".json": iter_json}
    if suffix not in readers:
        raise SourceError(
            f"{path}: unsupported file type {suffix!r} (expected .tsv, .parquet, .jsonl, .json)"
        )
    yield from readers[suffix](path)


def iter_hub(repo_id: str, split: str) -> Iterator[dict]:
    """Rows of a Hugging Face hub dataset (needs the network; not exercised offline).

    Image columns are cast to undecoded `{bytes, path}` so the original bytes are kept.
    """
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets ships with verl
        raise SourceError(f"hub dataset {repo_id}: the `datasets` package is missing ({exc})") from None
    try:
        ds = datasets.load_dataset(repo_id, split=split)
    except Exception as exc:
        raise SourceError(
            f"hub dataset {repo_id} (split {split}) cannot be loaded: {exc}. Offline? Download it and "
            "set the benchmark's `path` to the local file or folder."
        ) from None
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    yield from ds


def looks_like_hub_id(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text))


# ----------------------------------------------------------------------------------- fields


def field(row: dict, *names: str, required: bool = True):
    """The first present, non-empty value among `names`; RowError naming them if required."""
    for name in names:
        value = row.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if isinstance(value, float) and value != value:  # NaN from pandas-written files
            continue
        return value
    if required:
        raise RowError(f"missing field {' / '.join(repr(n) for n in names)}")
    return None


def row_id(row: dict, *names: str, fallback: str) -> str:
    value = field(row, *names, required=False)
    return str(value) if value is not None else fallback


def normalize_letter(value) -> str:
    """'A', ' a ', '(A)', 'A.' -> 'A'; RowError otherwise."""
    text = str(value).strip().strip("().:").strip().upper()
    if len(text) != 1 or text not in LETTERS:
        raise RowError(f"answer {value!r} is not an option letter")
    return text


_PREFIX = re.compile(r"^\s*\(?([A-Z])[).:]\s*")


def strip_option_prefix(text: str, expected: str | None = None) -> str:
    """'(A) red' -> 'red' (also 'A. red', 'A) red'); text without a prefix is kept."""
    m = _PREFIX.match(text)
    if m and (expected is None or m.group(1) == expected):
        return text[m.end() :].strip()
    return text.strip()


def parse_options_text(text: str) -> tuple[str, list[str]]:
    """Split 'question\\n(A) x\\n(B) y\\nAnswer with ...' into the question and option texts.

    Options are lines starting with (A), (B), ... in order; lines after the last option (an
    instruction) are dropped. Falls back to inline '(A) x (B) y' on one line.
    """
    lines = text.split("\n")
    options: list[str] = []
    question_lines: list[str] = []
    for line in lines:
        m = re.match(r"^\s*\(([A-Z])\)\s*(.*)$", line)
        if m and m.group(1) == LETTERS[len(options)]:
            options.append(m.group(2).strip())
        elif options:
            break
        else:
            question_lines.append(line)
    if len(options) < 2:
        m = re.search(r"\(A\)\s*", text)
        if m:
            question_lines = [text[: m.start()]]
            parts = re.split(r"\s*\(([A-Z])\)\s*", text[m.start() :])
            options = []
            for i in range(1, len(parts) - 1, 2):
                if parts[i] != LETTERS[len(options)]:
                    break
                options.append(parts[i + 1].split("\n")[0].strip())
    question = "\n".join(question_lines).strip()
    if len(options) < 2:
        raise RowError("could not find options '(A) ...', '(B) ...' in the question text")
    return question, options


def check_answer(answer: str, options: list[str]) -> str:
    if LETTERS.index(answer) >= len(options):
        raise RowError(f"answer {answer} is not among the {len(options)} options")
    return answer


# ----------------------------------------------------------------------------------- images


def image_bytes(value, base_dir: Path | None = None) -> bytes:
    """Original encoded bytes from bytes, base64 text, a {bytes, path} dict, or a file path."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return image_bytes(value["bytes"], base_dir)
        if value.get("path"):
            return image_bytes(str(value["path"]), base_dir)
        raise RowError("image dict has neither bytes nor path")
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 512 or not re.search(r"\.(jpe?g|png|webp|bmp|gif|tiff?)$", text, re.I):
            try:
                return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
            except (binascii.Error, ValueError):
                raise RowError("image field is neither a file path nor valid base64") from None
        path = Path(text)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise RowError(f"image file {path} not found")
        return path.read_bytes()
    raise RowError(f"image field has unsupported type {type(value).__name__}")


class ImageChecker:
    """Reads an image's size from its header, refuses it over the pixel limit before decoding,
    then decodes it once to catch corrupt or truncated files. Identical bytes (HR-Bench repeats
    each image in 4 option cycles) are decoded once."""

    def __init__(self, max_image_pixels: int):
        self.max_image_pixels = max_image_pixels
        self._ok: dict[str, tuple[int, int]] = {}

    def __call__(self, data: bytes, name: str) -> tuple[int, int]:
        from components.grounding import ImageError, open_image

        digest = hashlib.sha256(data).hexdigest()
        if digest in self._ok:
            return self._ok[digest]
        try:
            img = open_image(data, self.max_image_pixels, name)  # header only, then the limit
        except ImageError as exc:
            raise RowError(str(exc)) from None
        try:
            img.load()
        except Exception as exc:
            raise RowError(f"{name}: image is corrupt or truncated ({type(exc).__name__}: {exc})") from None
        self._ok[digest] = img.size
        return img.size


def clip_boxes(boxes: list[list[float]], width: int, height: int) -> tuple[list[list[float]], bool]:
    """Clip boxes to the image; RowError when one is empty after clipping. Returns (boxes, clipped)."""
    out, clipped = [], False
    for box in boxes:
        x1, y1, x2, y2 = (float(v) for v in box)
        c = [max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)]
        if not (c[0] < c[2] and c[1] < c[3]):
            raise RowError(f"target box {box} is empty inside the {width}x{height} image")
        clipped |= c != [x1, y1, x2, y2]
        out.append(c)
    return out, clipped
