"""Shared helpers of the episode benchmarks: params, synthetic-like records, timing."""

from __future__ import annotations

import io
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from components.config import load_params
from components.data.record import Record

ROOT = Path(__file__).resolve().parents[1]


def params(overrides=()):
    return load_params(ROOT / "params.yaml", list(overrides))


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour field with sharp shapes: compresses like a photo, not like noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(2, height // 256), max(2, width // 256), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(200):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        s = int(rng.integers(8, max(9, width // 40)))
        draw.rectangle((x, y, x + s, y + s), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return img


def jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def records(n: int, size=(2048, 1536), seed: int = 0) -> list[Record]:
    out = []
    for i in range(n):
        data = jpeg(photo_like(*size, seed + i))
        out.append(
            Record(
                id=f"bench{i}",
                source="bench",
                split="test",
                image_bytes=data,
                width=size[0],
                height=size[1],
                question="What colour is the square?",
                options=["red", "blue", "green", "yellow"],
                answer="A",
                category="attribute",
                target_boxes=[[500.0, 400.0, 800.0, 700.0]],
            ).validate()
        )
    return out


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    """Median wall seconds of `repeats` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times
