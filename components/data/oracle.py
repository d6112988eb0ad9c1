"""A non-learned oracle that checks the synthetic benchmark measures what MGPO claims.

For each attribute question it classifies the colour pair of the named object's checkerboard
from two views, with the same code the episode uses (`components.grounding`):
(a) the crop of the ground-truth box, cut from the original and resized into the crop budget
    (`episode.crop_min_pixels`..`crop_max_pixels`): should be right ~100% of the time;
(b) the first view, the whole image shrunk into the model's budget (`model.min_pixels`..
    `max_pixels`, transformers' `smart_resize`, bicubic like the Qwen processor), looking at
    the same box mapped into that frame: should be near chance (1 / number of options).
The classifier reads what a patch embedding sees: the image is cut into the model's patches
(`patch` px, 14 for Qwen2.5-VL, aligned to the image origin as the processor cuts them), each
patch is reduced to its mean colour, and the patches whose centres lie in the central part of
the box are compared. It picks the option whose colour axis (colour 1 minus colour 2) carries
the most variance across those patch means: a checkerboard whose cells are whole patches varies
along exactly that axis. A pattern finer than a patch averages to the same gray in every patch
and is invisible here, as it is to the model's patch embedding (a pixel-variance classifier
reported 100% on 4-px cells that no model could read). Below MIN_CONTRAST (rms gray levels
along the best axis) there is no pattern to see, and the oracle guesses (a fixed pseudo-random
option per record id). The manifest also reports the raw argmax without that floor and the
signal levels in both views, so the floor's effect is visible.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from components import grounding
from components.data.record import Record
from components.data.synthetic import PAIRS

CENTRAL_SHARE = 0.7  # side share of the box read by the classifier: inside the 12% frame (76% inner)
MIN_CONTRAST = 24.0  # rms gray levels along a pair's axis below which no pattern is visible (a sub-patch checker keeps up to ~13 in patch means from unequal cell counts)


@dataclass(frozen=True)
class Views:
    """Pixel budgets of the model's first view and of the crop (from params)."""

    min_pixels: int
    max_pixels: int
    crop_min_pixels: int
    crop_max_pixels: int
    patch: int = 14
    """Patch side of the model's vision tower (pixels)."""


def applies(record: Record) -> bool:
    """True for synthetic attribute questions (their options are known colour pairs)."""
    return (
        record.meta.get("family") == "attribute"
        and len(record.target_boxes) >= 1
        and all(o in PAIRS for o in record.options)
    )


def central_patches(image: Image.Image, box: tuple[float, float, float, float], patch: int) -> np.ndarray:
    """Mean RGB colours (N x 3, float) of the `patch`-px patches whose centres lie in the central
    CENTRAL_SHARE of `box` (at least the patch holding the box's centre)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float64)
    rows, cols = arr.shape[0] // patch, arr.shape[1] // patch
    means = arr[: rows * patch, : cols * patch].reshape(rows, patch, cols, patch, 3).mean(axis=(1, 3))
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    hw, hh = (x2 - x1) * CENTRAL_SHARE / 2, (y2 - y1) * CENTRAL_SHARE / 2
    centres = (np.arange(cols) + 0.5) * patch, (np.arange(rows) + 0.5) * patch
    keep_x = np.abs(centres[0] - cx) <= hw
    keep_y = np.abs(centres[1] - cy) <= hh
    if not keep_x.any():
        keep_x[min(cols - 1, int(cx // patch))] = True
    if not keep_y.any():
        keep_y[min(rows - 1, int(cy // patch))] = True
    return means[np.ix_(keep_y, keep_x)].reshape(-1, 3)


def axis_rms(pixels: np.ndarray, options: list[str]) -> np.ndarray:
    """Per option: rms (gray levels) of the pixels along that pair's colour axis."""
    centered = pixels - pixels.mean(axis=0)
    scores = []
    for name in options:
        c1, c2 = (np.asarray(c, dtype=np.float64) for c in PAIRS[name])
        axis = (c1 - c2) / np.linalg.norm(c1 - c2)
        scores.append(float(np.sqrt(np.mean((centered @ axis) ** 2))))
    return np.asarray(scores)


def classify(pixels: np.ndarray, options: list[str], guess: int = 0) -> int:
    """Index of the option whose colour axis carries the most variance of `pixels`, or `guess`
    when no axis reaches MIN_CONTRAST (a flat region)."""
    scores = axis_rms(pixels, options)
    return int(np.argmax(scores)) if scores.max() >= MIN_CONTRAST else guess


def judge(record: Record, views: Views) -> dict:
    """Oracle answers for one attribute record: crop view, first view, and the seen box side."""
    box = tuple(record.target_boxes[0])
    truth = record.answer_index
    guess = zlib.crc32(record.id.encode()) % len(record.options)
    original = grounding.load_original(record.image_bytes, name=record.id)
    piece = grounding.crop(original, box, views.crop_min_pixels, views.crop_max_pixels)
    crop_px = central_patches(piece, (0, 0, piece.width, piece.height), views.patch)
    view = grounding.first_view(record.image_bytes, views.min_pixels, views.max_pixels, name=record.id)
    seen_box = grounding.to_seen(box, view.size, (record.width, record.height))
    view_px = central_patches(view, seen_box, views.patch)
    view_scores = axis_rms(view_px, record.options)
    return {
        "crop_correct": classify(crop_px, record.options, guess) == truth,
        "first_view_correct": classify(view_px, record.options, guess) == truth,
        "first_view_argmax_correct": int(np.argmax(view_scores)) == truth,
        "crop_signal": float(axis_rms(crop_px, record.options)[truth]),
        "first_view_signal": float(view_scores[truth]),
        "seen_side": min(seen_box[2] - seen_box[0], seen_box[3] - seen_box[1]),
        "chance": 1.0 / len(record.options),
    }


def _stats(values: list[float]) -> dict:
    arr = np.asarray(values)
    return {k: round(float(f(arr)), 2) for k, f in (("min", np.min), ("mean", np.mean), ("max", np.max))}


@dataclass
class _Tally:
    results: list[dict] = field(default_factory=list)

    def add(self, result: dict) -> None:
        self.results.append(result)

    def summary(self) -> dict:
        n = len(self.results)
        if not n:
            return {"n": 0}

        def share(key: str) -> float:
            return round(sum(bool(r[key]) for r in self.results) / n, 4)

        return {
            "n": n,
            "crop_accuracy": share("crop_correct"),
            "first_view_accuracy": share("first_view_correct"),
            "first_view_argmax_accuracy": share("first_view_argmax_correct"),
            "chance": round(sum(r["chance"] for r in self.results) / n, 4),
            "crop_signal_rms": _stats([r["crop_signal"] for r in self.results]),
            "first_view_signal_rms": _stats([r["first_view_signal"] for r in self.results]),
            "first_view_target_px": _stats([r["seen_side"] for r in self.results]),
        }


class OracleCheck:
    """Accumulates oracle results per split (and per target size for the scale sweep)."""

    def __init__(self, views: Views):
        self.views = views
        self._splits: dict[str, _Tally] = defaultdict(_Tally)
        self._sizes: dict[str, dict[float, _Tally]] = defaultdict(lambda: defaultdict(_Tally))
        self._all = _Tally()

    def add(self, record: Record) -> dict | None:
        if not applies(record):
            return None
        result = judge(record, self.views)
        self._all.add(result)
        self._splits[record.split].add(result)
        if record.split == "scale_sweep":
            self._sizes[record.split][round(float(record.meta["target_size"]), 4)].add(result)
        return result

    def summary(self) -> dict:
        return {
            "method": "colour-axis rms of the mean colours of the model's patches in the central 70% of the box",
            "patch": self.views.patch,
            "min_contrast": MIN_CONTRAST,
            "views": {
                "first_view_pixels": [self.views.min_pixels, self.views.max_pixels],
                "crop_pixels": [self.views.crop_min_pixels, self.views.crop_max_pixels],
            },
            "overall": self._all.summary(),
            "splits": {name: t.summary() for name, t in sorted(self._splits.items())},
            "by_target_size": {
                split: {str(size): t.summary() for size, t in sorted(sizes.items())}
                for split, sizes in sorted(self._sizes.items())
            },
        }
