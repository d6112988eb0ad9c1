"""Tests of components/grounding.py: properties (hypothesis) and tables."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from components import grounding as g

BUDGETS = st.sampled_from([(3136, 50176), (12544, 50176), (200704, 1003520), (3136, 12544)])


@st.composite
def sizes(draw):
    w = draw(st.integers(56, 9000))
    h = draw(st.integers(max(28, math.ceil(w / 150)), min(9000, w * 150)))
    return w, h


@st.composite
def seen_boxes(draw, seen):
    sw, sh = seen
    x1 = draw(st.floats(0, sw - 1, allow_nan=False))
    y1 = draw(st.floats(0, sh - 1, allow_nan=False))
    x2 = draw(st.floats(min(x1 + 1e-3, sw), sw, allow_nan=False))
    y2 = draw(st.floats(min(y1 + 1e-3, sh), sh, allow_nan=False))
    return (x1, y1, x2, y2)


def coord_image(w: int, h: int) -> Image.Image:
    """Each pixel encodes its own coordinates, so a crop's content reveals where it came from."""
    ys, xs = np.mgrid[0:h, 0:w]
    arr = np.stack([xs % 256, ys % 256, (xs // 256) + 16 * (ys // 256)], axis=-1).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


# ---------------------------------------------------------------------------------- resize


def test_seen_size_matches_smart_resize_order_and_budget():
    assert g.seen_size(2048, 1536, 3136, 50176) == (252, 168)
    assert g.seen_size(100, 100, 12544, 50176) == (112, 112)
    w, h = g.seen_size(3840, 2160, 200704, 1003520)
    assert w % 28 == 0 and h % 28 == 0 and 200704 <= w * h <= 1003520 and w > h


@settings(max_examples=200, deadline=None)
@given(sizes(), BUDGETS)
def test_seen_size_is_in_budget_and_multiple_of_28(size, budget):
    w, h = g.seen_size(*size, *budget)
    assert w % 28 == 0 and h % 28 == 0
    # smart_resize may pass the budget only when a side is clamped at 28 (extreme aspect).
    assert w * h <= budget[1] or min(w, h) == 28
    assert w * h >= budget[0] or max(w, h) == 9000 // 28 * 28 or min(w, h) == 28
    # A fixed point: the processor, resizing this size again, leaves it unchanged.
    assert g.seen_size(w, h, *budget) == (w, h)


# --------------------------------------------------------------------------------- mapping


@settings(max_examples=300, deadline=None)
@given(st.data(), sizes(), BUDGETS)
def test_mapping_round_trips_within_a_pixel(data, size, budget):
    seen = g.seen_size(*size, *budget)
    box = data.draw(seen_boxes(seen))
    back = g.to_seen(g.to_original(box, seen, size), seen, size)
    assert all(abs(a - b) < 1e-6 * max(1.0, abs(a)) for a, b in zip(box, back, strict=True))
    # Integer pixels in the larger frame still land within one pixel of the smaller frame.
    if size[0] >= seen[0] and size[1] >= seen[1]:
        rounded = tuple(round(v) for v in g.to_original(box, seen, size))
        again = g.to_seen(rounded, seen, size)
        assert all(abs(a - b) <= 1.0 for a, b in zip(box, again, strict=True))


@settings(max_examples=300, deadline=None)
@given(st.data(), sizes(), BUDGETS)
def test_valid_seen_box_maps_inside_original(data, size, budget):
    seen = g.seen_size(*size, *budget)
    box = data.draw(seen_boxes(seen))
    valid, reason = g.validate_box(box, *seen, min_side=0.0, max_aspect=1e9)
    assert reason is None
    orig = g.to_original(valid, seen, size)
    assert g.contains((0, 0, size[0], size[1]), orig, tol=1e-6 * max(size))
    region = g.crop_region(orig, *size)
    assert 0 <= region[0] < region[2] <= size[0] and 0 <= region[1] < region[3] <= size[1]


# ---------------------------------------------------------------------------------- crops


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_crop_contains_exactly_the_mapped_region(data):
    w, h = data.draw(st.integers(300, 700)), data.draw(st.integers(300, 700))
    image = coord_image(w, h)
    x1 = data.draw(st.floats(0, w - 30))
    y1 = data.draw(st.floats(0, h - 30))
    x2 = data.draw(st.floats(x1 + 10, w))
    y2 = data.draw(st.floats(y1 + 10, h))
    box = (x1, y1, x2, y2)
    region = g.crop_region(box, w, h)
    # The region covers the box and exceeds it by less than a pixel on each side.
    assert g.contains(region, box)
    assert all(abs(a - b) < 1 for a, b in zip(region, box, strict=True))
    rw, rh = region[2] - region[0], region[3] - region[1]
    budget = data.draw(BUDGETS)
    out = g.crop(image, box, *budget)
    assert out.size == g.seen_size(rw, rh, *budget) and out.mode == "RGB"
    # When the region already has the budget's size, the crop is the region's pixels exactly.
    sw, sh = 28 * max(1, rw // 28), 28 * max(1, rh // 28)
    if sw <= rw and sh <= rh:
        exact_box = (region[0], region[1], region[0] + sw, region[1] + sh)
        exact = g.crop(image, exact_box, sw * sh, sw * sh)
        assert exact.size == (sw, sh)
        np.testing.assert_array_equal(
            np.asarray(exact), np.asarray(image)[region[1] : region[1] + sh, region[0] : region[0] + sw]
        )


def test_crop_enlarges_small_and_shrinks_large_regions():
    image = coord_image(2000, 1500)
    small = g.crop(image, (100, 100, 160, 150), 12544, 50176)
    assert small.width * small.height >= 12544 and small.size[0] > 60
    large = g.crop(image, (0, 0, 2000, 1500), 12544, 50176)
    assert large.width * large.height <= 50176 and large.size[0] < 2000


def test_crop_from_original_keeps_full_resolution_detail():
    """A 1-px checkerboard survives a small crop (cut from the original) but not the first view."""
    arr = (np.indices((1024, 1024)).sum(0) % 2 * 255).astype(np.uint8)
    image = Image.fromarray(np.stack([arr] * 3, -1), "RGB")
    piece = np.asarray(g.crop(image, (500, 500, 612, 612), 12544, 12544)).astype(float)
    assert piece.std() > 100  # the 112x112 region is kept 1:1
    view = np.asarray(g.first_view(image, 3136, 12544)).astype(float)
    assert view.std() < 20  # shrunk 9x: the pattern averages to gray


# ------------------------------------------------------------------------------- validation

VALIDATION_TABLE = [
    ((10, 10, 100, 100), None),
    (None, g.NO_BOX),
    ((10, 10, math.nan, 100), g.NOT_FINITE),
    ((100, 10, 10, 100), g.UNORDERED),
    ((10, 100, 100, 100), g.UNORDERED),
    ((-1, 10, 100, 100), g.OUTSIDE),
    ((10, 10, 201, 100), g.OUTSIDE),
    ((10, 10, 100, 151), g.OUTSIDE),
    ((10, 10, 38, 100), g.TOO_SMALL),  # side exactly 28 is not > 28
    ((10, 10, 39, 100), None),
    ((0, 0, 200, 29.5), None),
]


@pytest.mark.parametrize(("box", "reason"), VALIDATION_TABLE)
def test_validate_box_reject_table(box, reason):
    out, why = g.validate_box(box, 200, 150)
    assert why == reason
    assert (out is None) == (reason is not None)


def test_validate_box_aspect_and_clip():
    assert g.validate_box((0, 0, 3000, 29.5), 4000, 100, max_aspect=100) == (None, g.ASPECT)
    assert g.validate_box((0, 0, 2900, 29.5), 4000, 100, max_aspect=100)[1] is None
    clipped, why = g.validate_box((-20, 10, 250, 100), 200, 150, mode="clip")
    assert why is None and clipped == (0.0, 10.0, 200.0, 100.0)
    assert g.validate_box((210, 10, 250, 100), 200, 150, mode="clip") == (None, g.OUTSIDE)
    assert g.validate_box((180, 10, 250, 100), 200, 150, mode="clip") == (None, g.TOO_SMALL)
    assert g.validate_box((100, 10, 50, 100), 200, 150, mode="clip") == (None, g.UNORDERED)


def test_iou_and_contains():
    assert g.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert g.iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert g.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert g.iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0
    assert g.contains((0, 0, 10, 10), (2, 2, 10, 10)) and not g.contains((0, 0, 10, 10), (2, 2, 11, 10))


# ---------------------------------------------------------------------------------- parsing

PARSE_TABLE = [
    (
        '```json\n[\n\t{"bbox_2d": [10, 20, 110, 220], "label": "cat"}\n]\n```',
        (10, 20, 110, 220),
        "fenced_json",
        "cat",
    ),
    (
        'I look.\n```json\n[{"bbox_2d": [1.5, 2, 3e1, 40], "label": "x"}]\n``` then',
        (1.5, 2, 30, 40),
        "fenced_json",
        "x",
    ),
    ('```json\n{"bbox_2d": [1, 2, 3, 4]}\n```', (1, 2, 3, 4), "fenced_json", None),
    ('```\n[{"label": "a"}, {"bbox_2d": [5, 6, 7, 8], "label": 3}]\n```', (5, 6, 7, 8), "fenced_json", None),
    ('[{"bbox_2d": [10, 20, 30, 40], "label": "dog"}]', (10, 20, 30, 40), "json", "dog"),
    ('{"bbox_2d": [10, 20, 30, 40]}', (10, 20, 30, 40), "json", None),
    ('```json\n[{"bbox_2d": [10, 20, 30, 40], "label": "trunc', (10, 20, 30, 40), "bbox_2d", None),
    ('text "bbox_2d": [1., 2, 3, 4], "label": "ok"}', (1, 2, 3, 4), "bbox_2d", "ok"),
    ("the region is [12, 34, 56, 78].", (12, 34, 56, 78), "list", None),
    ("x [-5, 0, 10.25, 7]", (-5, 0, 10.25, 7), "list", None),
    ("[-5, 0, 10.25, 7]", (-5, 0, 10.25, 7), "list", None),
    ("no box here, \\boxed{A}", None, None, None),
    ("[1, 2, 3]", None, None, None),
    ('{"bbox_2d": [1, 2, 3]}', None, None, None),
    ('{"bbox_2d": [true, 2, 3, 4]}', None, None, None),
    ('{"bbox_2d": [NaN, 2, 3, 4]}', None, None, None),
    ('{"bbox_2d": [1e999, 2, 3, 4]}', None, None, None),
    ('{"bbox_2d": ["1", 2, 3, 4]}', None, None, None),
    ("", None, None, None),
    ("[" * 5000 + "]" * 5000, None, None, None),
]


@pytest.mark.parametrize(("text", "box", "form", "label"), PARSE_TABLE)
def test_parse_box_table(text, box, form, label):
    got = g.parse_box(text)
    if box is None:
        assert got is None
    else:
        assert got is not None and got.box == tuple(float(v) for v in box)
        assert got.form == form and got.label == label


JSONISH = st.lists(
    st.sampled_from(
        [
            '{"bbox_2d": ',
            "[",
            "]",
            "{",
            "}",
            ", ",
            "```json\n",
            "```",
            '"label": "a"',
            " ",
            "\n",
            "-",
            ".",
            "e",
            "1",
            "23",
            "4.5",
            "NaN",
            "true",
        ]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(), JSONISH, st.binary().map(lambda b: b.decode("latin-1"))))
def test_parse_box_never_raises(text):
    got = g.parse_box(text)
    if got is not None:
        assert len(got.box) == 4 and all(math.isfinite(v) for v in got.box)
        assert got.form in {"fenced_json", "json", "bbox_2d", "list"}


@settings(max_examples=400, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_categories=["Nd"])),
    st.lists(st.integers(-999, 9999), max_size=3),
    st.data(),
)
def test_parse_box_needs_four_numbers(text, numbers, data):
    # Text with at most three numbers in it never yields a box, however JSON-like it looks.
    pieces = [text, *(f" {n} " for n in numbers), '{"bbox_2d": [', "]}", "```json\n", "```", ", "]
    order = data.draw(st.permutations(pieces))
    joined = "".join(order)
    assert len(re.findall(r"\d+", joined.replace("bbox_2d", ""))) <= 3
    assert g.parse_box(joined) is None


def test_parse_box_rejects_non_strings():
    assert g.parse_box(None) is None  # type: ignore[arg-type]
    assert g.parse_box(b"[1,2,3,4]") is None  # type: ignore[arg-type]


# ------------------------------------------------------------------------- first view / guard


def jpeg_bytes(w: int, h: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_first_view_has_exact_seen_size_and_draft_is_close():
    data = jpeg_bytes(1600, 1200)
    fast = g.first_view(data, 3136, 50176)
    full = g.first_view(data, 3136, 50176, draft=False)
    assert fast.size == full.size == g.seen_size(1600, 1200, 3136, 50176)
    assert fast.mode == "RGB"
    diff = np.abs(np.asarray(fast, dtype=float) - np.asarray(full, dtype=float)).mean()
    assert diff < 4.0
    png = io.BytesIO()
    Image.open(io.BytesIO(data)).save(png, "PNG")
    assert g.first_view(png.getvalue(), 3136, 50176).size == fast.size


def test_first_view_accepts_pil_and_grayscale():
    img = Image.new("L", (500, 300), 128)
    out = g.first_view(img, 3136, 50176)
    assert out.mode == "RGB" and out.size == g.seen_size(500, 300, 3136, 50176)


def test_decompression_bomb_guard_names_the_image():
    data = jpeg_bytes(1000, 1000)
    with pytest.raises(g.ImageError, match=r"sample-7: 1000x1000 = 1000000 pixels exceeds"):
        g.first_view(data, 3136, 50176, max_image_pixels=999_999, name="sample-7")
    with pytest.raises(g.ImageError, match="sample-8: cannot be read"):
        g.load_original(b"not an image", name="sample-8")
    assert g.load_original(data, max_image_pixels=1_000_000).size == (1000, 1000)
