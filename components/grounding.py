"""Grounding geometry of MGPO: resize rule, box parsing and validation, mapping, cropping.

Pure functions on numbers, strings and PIL images, used by every episode driver (local engines,
the verl agent loop, evaluation, SFT trajectory building); no backend re-implements them.

Frames: the *seen* frame is the image the model actually saw, after Qwen2.5-VL's `smart_resize`
(sides multiples of 28 inside [min_pixels, max_pixels]); the *original* frame is the full-resolution
file. Boxes are (x1, y1, x2, y2) floats, x right, y down, in pixels of one of those frames.

Departures from the paper's code (all documented in MGPO.md as "be more tolerant"):
- `parse_box` also accepts floats, an unfenced list or object, a bare `"bbox_2d": [...]` in
  broken JSON, and a bare `[x1, y1, x2, y2]`, and records which form matched;
- `validate_box(mode="clip")` clips instead of rejecting (params `episode.invalid_box`);
- `first_view` decodes large JPEGs at reduced scale (Pillow draft mode) before the final resize;
  `benchmarks/episode_first_view.py` measures its speed and pixel difference.
Run the tests: `.venv/bin/python -m pytest tests/components/test_grounding.py -q`.
"""

from __future__ import annotations

import io
import json
import math
import re
import warnings
from dataclasses import dataclass
from typing import Literal

from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

Box = tuple[float, float, float, float]
FACTOR = 28  # Qwen2.5-VL: 14-px patches merged 2x2, so sides are multiples of 28.

# Reasons a box is invalid (stable strings: they go into predictions and metrics).
NO_BOX = "no_box"
NOT_FINITE = "not_finite"
UNORDERED = "unordered"
OUTSIDE = "outside_frame"
TOO_SMALL = "too_small"
ASPECT = "aspect_ratio"


class ImageError(ValueError):
    """An image cannot be used (too large, unreadable); the message names the image."""


def seen_size(orig_w: int, orig_h: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) of the frame the model sees for an original of orig_w x orig_h.

    transformers' `smart_resize` takes and returns (height, width); this wrapper is (w, h).
    For very elongated images (a side clamped to 28) smart_resize's output can exceed the
    budget, and applied again it moves; we iterate to its fixed point, so an image resized to
    this size passes through the processor unchanged (one step for ordinary images).
    """
    if orig_w <= 0 or orig_h <= 0:
        raise ValueError(f"image size must be positive, got {orig_w}x{orig_h}")
    h, w = orig_h, orig_w
    for _ in range(8):
        nh, nw = smart_resize(h, w, factor=FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)
        if (nh, nw) == (h, w):
            break
        h, w = nh, nw
    return w, h


# ----------------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ParsedBox:
    """A box read from model text, with the form it was written in."""

    box: Box
    form: str
    """fenced_json | json | bbox_2d | list (see `parse_box`)."""
    label: str | None = None


_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_BBOX_KEY = re.compile(r"[\"']bbox_2d[\"']\s*:\s*\[([^\[\]]{0,200})\]")
_LABEL_KEY = re.compile(r"[\"']label[\"']\s*:\s*\"([^\"\n]{0,200})\"")
_NUM_FULL = re.compile(_NUM)
_BARE_LIST = re.compile(rf"\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]")
_MAX_JSON_CHARS = 20_000  # longer "JSON" is not a box; skip json.loads on it (cost, recursion)


def _four_numbers(values) -> Box | None:
    if not isinstance(values, (list, tuple)) or len(values) != 4:
        return None
    out = []
    for v in values:
        # bool is an int subclass in Python; `true` is not a coordinate.
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        f = float(v)
        if not math.isfinite(f):
            return None
        out.append(f)
    return (out[0], out[1], out[2], out[3])


def _from_json(obj) -> tuple[Box, str | None] | None:
    """First item with a four-number bbox_2d in a list of objects, or in one object."""
    items = obj if isinstance(obj, list) else [obj]
    for item in items:
        if isinstance(item, dict) and "bbox_2d" in item:
            box = _four_numbers(item["bbox_2d"])
            if box is not None:
                label = item.get("label")
                return box, label if isinstance(label, str) else None
    return None


def _loads(text: str):
    if len(text) > _MAX_JSON_CHARS:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def parse_box(text: str) -> ParsedBox | None:
    """Read the first box from model text; None when there is none. Never raises.

    Forms, tried in order (the first that yields four finite numbers wins):
    - `fenced_json`: a ```json fenced block holding `[{"bbox_2d": [...], "label": ...}]` or one
      such object (the paper's form);
    - `json`: the whole text (stripped) is such a list or object, unfenced;
    - `bbox_2d`: a `"bbox_2d": [n, n, n, n]` anywhere, e.g. inside truncated or broken JSON;
    - `list`: a bare `[n, n, n, n]` anywhere.
    Numbers may be ints or floats; NaN, infinities and booleans are refused.
    """
    if not isinstance(text, str) or not text:
        return None
    try:
        for m in _FENCE.finditer(text):
            found = _from_json(_loads(m.group(1).strip()))
            if found:
                return ParsedBox(found[0], "fenced_json", found[1])
        found = _from_json(_loads(text.strip()))
        if found:
            return ParsedBox(found[0], "json", found[1])
        m = _BBOX_KEY.search(text)
        if m:
            parts = [p.strip() for p in m.group(1).split(",")]
            if len(parts) == 4 and all(_NUM_FULL.fullmatch(p) for p in parts):
                box = _four_numbers([float(p) for p in parts])
            else:
                box = None
            if box is not None:
                label = _LABEL_KEY.search(text)
                return ParsedBox(box, "bbox_2d", label.group(1) if label else None)
        m = _BARE_LIST.search(text)
        if m:
            box = _four_numbers([float(g) for g in m.groups()])
            if box is not None:
                return ParsedBox(box, "list", None)
    except Exception:
        return None
    return None


# -------------------------------------------------------------------------------- validation


def validate_box(
    box: Box | None,
    seen_w: int,
    seen_h: int,
    min_side: float = 28,
    max_aspect: float = 100,
    mode: Literal["reject", "clip"] = "reject",
) -> tuple[Box | None, str | None]:
    """Apply the paper's rules in the seen frame; return (box, None) or (None, reason).

    Valid: finite, x1 < x2 and y1 < y2, inside [0, seen_w] x [0, seen_h], each side > min_side,
    aspect ratio (long side / short side) < max_aspect. With mode="clip" an ordered box leaving
    the frame is clipped to it first (then the size rules apply to the clipped box).
    """
    if box is None:
        return None, NO_BOX
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        return None, NOT_FINITE
    if not (x1 < x2 and y1 < y2):
        return None, UNORDERED
    if mode == "clip":
        x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(seen_w), x2), min(float(seen_h), y2)
        if not (x1 < x2 and y1 < y2):
            return None, OUTSIDE
    elif x1 < 0 or y1 < 0 or x2 > seen_w or y2 > seen_h:
        return None, OUTSIDE
    w, h = x2 - x1, y2 - y1
    if w <= min_side or h <= min_side:
        return None, TOO_SMALL
    if max(w / h, h / w) >= max_aspect:
        return None, ASPECT
    return (x1, y1, x2, y2), None


# --------------------------------------------------------------------------------- geometry


def to_original(box: Box, seen: tuple[int, int], orig: tuple[int, int]) -> Box:
    """Map a seen-frame box to original pixels: x * W_orig / W_seen (the paper's rule)."""
    sx, sy = orig[0] / seen[0], orig[1] / seen[1]
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def to_seen(box: Box, seen: tuple[int, int], orig: tuple[int, int]) -> Box:
    """Map an original-frame box into the seen frame (inverse of `to_original`)."""
    return to_original(box, orig, seen)


@dataclass(frozen=True)
class Frame:
    """How one image shown to the model maps to original pixels: orig = offset + seen * scale.

    The first view is `Frame.first_view(seen, orig)` (offset 0, the paper's rule); a crop of
    region (l, t, r, b) shown at (w, h) is `Frame.of_crop(region, (w, h))`.
    """

    size: tuple[int, int]
    """(width, height) of the image as the model sees it."""
    offset: tuple[float, float] = (0.0, 0.0)
    scale: tuple[float, float] = (1.0, 1.0)

    @classmethod
    def first_view(cls, seen: tuple[int, int], orig: tuple[int, int]) -> Frame:
        return cls(seen, (0.0, 0.0), (orig[0] / seen[0], orig[1] / seen[1]))

    @classmethod
    def of_crop(cls, region: tuple[int, int, int, int], shown: tuple[int, int]) -> Frame:
        return cls(
            shown,
            (float(region[0]), float(region[1])),
            ((region[2] - region[0]) / shown[0], (region[3] - region[1]) / shown[1]),
        )

    def to_original(self, box: Box) -> Box:
        (ox, oy), (sx, sy) = self.offset, self.scale
        return (ox + box[0] * sx, oy + box[1] * sy, ox + box[2] * sx, oy + box[3] * sy)

    def to_seen(self, box: Box) -> Box:
        (ox, oy), (sx, sy) = self.offset, self.scale
        return ((box[0] - ox) / sx, (box[1] - oy) / sy, (box[2] - ox) / sx, (box[3] - oy) / sy)


def union(boxes: list[Box]) -> Box:
    """The smallest box holding all `boxes`."""
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def coverage(target: Box, region: Box) -> float:
    """Share of `target`'s area inside `region` (1.0 when the region holds it whole)."""
    iw = min(target[2], region[2]) - max(target[0], region[0])
    ih = min(target[3], region[3]) - max(target[1], region[1])
    area = max(0.0, target[2] - target[0]) * max(0.0, target[3] - target[1])
    return max(0.0, iw) * max(0.0, ih) / area if area > 0 else 0.0


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0 when either is empty)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    area_a = max(0.0, a[2] - a[0]) * max(0.0, a[3] - a[1])
    area_b = max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def contains(outer: Box, inner: Box, tol: float = 0.0) -> bool:
    """True when `inner` lies inside `outer` (edges may touch; `tol` pixels of slack)."""
    return (
        inner[0] >= outer[0] - tol
        and inner[1] >= outer[1] - tol
        and inner[2] <= outer[2] + tol
        and inner[3] <= outer[3] + tol
    )


def crop_region(box_orig: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel region cut for a box: floor of the top-left, ceil of the bottom-right,
    clamped to the image, at least one pixel each side. It covers the box and exceeds it by
    less than one pixel on each side."""
    left = min(max(0, math.floor(box_orig[0])), width - 1)
    top = min(max(0, math.floor(box_orig[1])), height - 1)
    right = max(min(width, math.ceil(box_orig[2])), left + 1)
    bottom = max(min(height, math.ceil(box_orig[3])), top + 1)
    return left, top, right, bottom


def crop(image: Image.Image, box_orig: Box, min_pixels: int, max_pixels: int) -> Image.Image:
    """Cut `box_orig` (original pixels) from the ORIGINAL image and resize it into the budget.

    The result has exactly `seen_size` of the cut region, so the processor leaves it unchanged:
    large crops are shrunk, small ones enlarged (bicubic), as in the paper.
    """
    region = crop_region(box_orig, image.width, image.height)
    w, h = region[2] - region[0], region[3] - region[1]
    if max(w, h) / min(w, h) > 200:
        raise ValueError(f"crop region {region} has aspect ratio above 200; smart_resize refuses it")
    target = seen_size(w, h, min_pixels, max_pixels)
    piece = image.crop(region)
    if piece.mode != "RGB":
        piece = piece.convert("RGB")
    return piece if piece.size == target else piece.resize(target, Image.Resampling.BICUBIC)


# -------------------------------------------------------------------------------- decoding


def open_image(source: bytes | Image.Image, max_image_pixels: int | None = None, name: str = "image"):
    """Open (lazily, header only) an image from bytes or pass a PIL image through, with a
    decompression-bomb guard that names the image. Raises ImageError."""
    if isinstance(source, Image.Image):
        img = source
    else:
        try:
            with warnings.catch_warnings():
                # Our own limit (max_image_pixels) decides; Pillow's warning is noise here.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(source))
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{name}: refused by Pillow's decompression-bomb limit ({exc})") from None
        except Exception as exc:
            raise ImageError(f"{name}: cannot be read as an image ({type(exc).__name__}: {exc})") from None
    if max_image_pixels is not None and img.width * img.height > max_image_pixels:
        raise ImageError(
            f"{name}: {img.width}x{img.height} = {img.width * img.height} pixels exceeds the limit "
            f"of {max_image_pixels} (prepare.max_image_pixels); refusing to decode it"
        )
    return img


def load_original(source: bytes | Image.Image, max_image_pixels: int | None = None, name: str = "image"):
    """The full-resolution RGB image (crops are cut from it)."""
    img = open_image(source, max_image_pixels, name)
    try:
        return img if img.mode == "RGB" else img.convert("RGB")
    except Exception as exc:
        raise ImageError(f"{name}: cannot be decoded ({type(exc).__name__}: {exc})") from None


def first_view(
    source: bytes | Image.Image,
    min_pixels: int,
    max_pixels: int,
    max_image_pixels: int | None = None,
    name: str = "image",
    draft: bool = True,
) -> Image.Image:
    """The first view: the image resized to exactly `seen_size` (RGB).

    The processor then leaves it unchanged (sides already multiples of 28 inside its budget).
    For JPEGs with `draft`, Pillow decodes at 1/2, 1/4 or 1/8 scale (DCT scaling, still at least
    the target size) before the final bicubic resize: an 8K file decodes several times faster.
    """
    img = open_image(source, max_image_pixels, name)
    target = seen_size(img.width, img.height, min_pixels, max_pixels)
    try:
        if draft and getattr(img, "format", None) == "JPEG" and not isinstance(source, Image.Image):
            img.draft("RGB", target)
        img = img if img.mode == "RGB" else img.convert("RGB")
        return img if img.size == target else img.resize(target, Image.Resampling.BICUBIC)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"{name}: cannot be decoded ({type(exc).__name__}: {exc})") from None
