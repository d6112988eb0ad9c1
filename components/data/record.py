"""The canonical record: one multiple-choice question about one image, whatever its source.

Every source (the synthetic generator, V* Bench, HR-Bench, MME-RealWorld) maps to `Record`;
`components.data.parquet` writes and reads it. The image is kept as its original encoded bytes
(never re-encoded), with its size read from the header. Boxes are (x1, y1, x2, y2) in original
pixels. `answer` is a letter ('A' is the first option); option order is kept as published.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field
from typing import Any

LETTERS = string.ascii_uppercase
MIN_OPTIONS = 2
MAX_OPTIONS = 26


class RecordError(ValueError):
    """A record breaks the schema; the message names the record id and the field."""


def letter(index: int) -> str:
    """Option letter of a 0-based option index ('A' for 0)."""
    if not 0 <= index < MAX_OPTIONS:
        raise ValueError(f"option index {index} is outside 0..{MAX_OPTIONS - 1}")
    return LETTERS[index]


def index_of(answer: str) -> int:
    """0-based option index of an answer letter ('A' -> 0)."""
    if not isinstance(answer, str) or len(answer) != 1 or answer not in LETTERS:
        raise ValueError(f"answer {answer!r} is not a capital letter A-Z")
    return LETTERS.index(answer)


@dataclass
class Record:
    id: str
    source: str
    split: str
    image_bytes: bytes
    width: int
    height: int
    question: str
    options: list[str]
    answer: str
    category: str
    target_boxes: list[list[float]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def answer_index(self) -> int:
        return index_of(self.answer)

    @property
    def answer_text(self) -> str:
        return self.options[self.answer_index]

    def validate(self) -> Record:
        """Check the schema; raise RecordError naming the id and field. Returns self."""
        rid = self.id if isinstance(self.id, str) and self.id else "<no id>"

        def fail(msg: str) -> RecordError:
            return RecordError(f"record {rid}: {msg}")

        if not isinstance(self.id, str) or not self.id:
            raise fail("id must be a non-empty string")
        for name in ("source", "split", "category"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise fail(f"{name} must be a non-empty string")
        if not isinstance(self.image_bytes, bytes | bytearray) or not self.image_bytes:
            raise fail("image_bytes is empty")
        if not (isinstance(self.width, int) and isinstance(self.height, int)):
            raise fail("width and height must be integers")
        if self.width <= 0 or self.height <= 0:
            raise fail(f"image size {self.width}x{self.height} is not positive")
        if not isinstance(self.question, str) or not self.question.strip():
            raise fail("question is empty")
        if not isinstance(self.options, list) or not MIN_OPTIONS <= len(self.options) <= MAX_OPTIONS:
            raise fail(f"options must be a list of {MIN_OPTIONS}..{MAX_OPTIONS} strings")
        if any(not isinstance(o, str) or not o.strip() for o in self.options):
            raise fail("every option must be a non-empty string")
        if len(set(self.options)) != len(self.options):
            raise fail(f"options repeat: {self.options}")
        try:
            idx = index_of(self.answer)
        except ValueError as exc:
            raise fail(str(exc)) from None
        if idx >= len(self.options):
            raise fail(f"answer {self.answer} is not among the {len(self.options)} options")
        for box in self.target_boxes:
            if len(box) != 4 or not all(isinstance(v, int | float) and math.isfinite(v) for v in box):
                raise fail(f"target box {box} is not four finite numbers")
            x1, y1, x2, y2 = box
            if not (x1 < x2 and y1 < y2):
                raise fail(f"target box {box} is not ordered (x1 < x2, y1 < y2)")
            if x1 < 0 or y1 < 0 or x2 > self.width or y2 > self.height:
                raise fail(f"target box {box} leaves the {self.width}x{self.height} image")
        if not isinstance(self.meta, dict):
            raise fail("meta must be a dict")
        return self
