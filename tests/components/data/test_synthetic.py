"""The synthetic benchmark: determinism, balanced letters, geometry and pixel content."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from components.config import SyntheticConfig
from components.data.build import build_synthetic
from components.data.oracle import Views
from components.data.parquet import read_records
from components.data.synthetic import (
    FRAME_COLOURS,
    PAIRS,
    balanced_position,
    family_count_before,
    is_attribute,
    make_sample,
    split_specs,
)

VIEWS = Views(3136, 50176, 12544, 50176)


def small(**kw) -> SyntheticConfig:
    base = dict(
        width=512, height=384, train=6, val=2, test=8, split_4k={"count": 1, "width": 640, "height": 360}
    )
    base["scale_sweep"] = {"sizes": [0.1, 0.2], "per_size": 2}
    base.update(kw)
    return SyntheticConfig(**base)


def prepare_cfg(seed: int = 0, **kw):
    from components.config import PrepareConfig

    return PrepareConfig(seed=seed, rows_per_group=4, synthetic=small(**kw))


def test_same_seed_same_sha256_other_seed_differs(tmp_path):
    a = build_synthetic(prepare_cfg(0), tmp_path / "a", VIEWS, progress=False)
    b = build_synthetic(prepare_cfg(0), tmp_path / "b", VIEWS, progress=False)
    c = build_synthetic(prepare_cfg(1), tmp_path / "c", VIEWS, progress=False)
    sha = {
        k: {s: e["sha256"] for s, e in res.manifest["splits"].items()}
        for k, res in zip("abc", (a, b, c), strict=True)
    }
    assert sha["a"] == sha["b"]
    assert all(sha["a"][s] != sha["c"][s] for s in ("train", "val", "test", "scale_sweep", "test_4k"))
    # the whole folder is reproducible: manifest and contact sheet too (no timings inside)
    for name in ("manifest.json", "contact_sheet.png"):
        assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes()
    assert a.manifest["splits"]["scale_sweep"]["rows"] == 4 and a.manifest["splits"]["test_4k"]["rows"] == 1
    assert sorted(p.name for p in a.out_dir.iterdir()) == [
        "contact_sheet.png",
        "manifest.json",
        "scale_sweep.parquet",
        "test.parquet",
        "test_4k.parquet",
        "train.parquet",
        "val.parquet",
    ]
    assert not list((tmp_path / "a").glob(".*partial"))


def test_sample_is_independent_of_generation_order():
    cfg = small()
    spec = split_specs(cfg)[0]
    late = make_sample(cfg, 3, spec, 5, "s")
    again = make_sample(cfg, 3, spec, 5, "s")
    assert late == again and late.id == "s-train-00005"


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 5), blocks=st.integers(1, 6), seed=st.integers(0, 10**6))
def test_positions_balanced_in_every_block(n, blocks, seed):
    positions = [balanced_position(seed, "train", "attribute", k, n) for k in range(n * blocks)]
    for b in range(blocks):
        assert sorted(positions[b * n : (b + 1) * n]) == list(range(n))


@settings(max_examples=60, deadline=None)
@given(share=st.floats(0, 1), count=st.integers(0, 400))
def test_family_schedule_has_the_exact_share(share, count):
    attrs = sum(is_attribute(i, share) for i in range(count))
    assert attrs == family_count_before(count, share)
    assert abs(attrs - share * count) <= 1


def test_split_letters_are_balanced_per_family():
    cfg = small(num_options=3, attribute_share=0.5)
    spec = split_specs(cfg)[0]
    records = [make_sample(cfg, 0, spec, i, "s") for i in range(24)]
    attr = Counter(r.answer for r in records if r.category == "attribute")
    spatial = Counter(r.answer for r in records if r.category == "spatial")
    assert attr == {"A": 4, "B": 4, "C": 4} and spatial == {"A": 6, "B": 6}
    assert all(len(r.options) == 3 for r in records if r.category == "attribute")


def _pixels(record) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(record.image_bytes)).convert("RGB"), dtype=np.int32)


@pytest.mark.parametrize("index", range(6))
def test_sample_content_matches_its_labels(index):
    cfg = small(width=1024, height=768, detail_px=4)
    spec = split_specs(cfg)[0]
    r = make_sample(cfg, 0, spec, index, "s").validate()
    img = _pixels(r)
    assert img.shape == (768, 1024, 3) and (r.width, r.height) == (1024, 768)
    objects = r.meta["objects"]
    names = [o["name"] for o in objects]
    assert len(set(names)) == len(names)
    for obj in objects:
        x1, y1, x2, y2 = obj["box"]
        side = x2 - x1
        assert 0.14 * 768 - 1 <= side <= 0.22 * 768 + 1
        # the frame's colour is the name's colour (sampled mid-frame on the left edge)
        colour = FRAME_COLOURS[obj["name"].split()[0]]
        frame = img[(y1 + y2) // 2, x1 + max(1, round(0.06 * side))]
        assert np.abs(frame - colour).max() < 60, (obj, frame)
        # the interior is a checkerboard of the pattern's two colours
        c1, c2 = (np.asarray(c) for c in PAIRS[obj["pattern"]])
        cx, cy, q = (x1 + x2) // 2, (y1 + y2) // 2, side // 6
        centre = img[cy - q : cy + q, cx - q : cx + q].reshape(-1, 3)
        near = np.minimum(np.abs(centre - c1).max(1), np.abs(centre - c2).max(1))
        assert np.mean(near < 90) > 0.9
    if r.category == "attribute":
        assert r.meta["targets"] == [names[0]] and r.target_boxes == [objects[0]["box"]]
        assert r.answer_text == objects[0]["pattern"] == r.meta["pattern"]
        assert all(o["pattern"] in r.options and o["pattern"] != r.answer_text for o in objects[1:])
        assert f"inside the {names[0]}?" in r.question
    else:
        a, b = (np.asarray(box) for box in r.target_boxes)
        lo = 0 if r.meta["axis"] == "horizontal" else 1
        first = a[lo] < b[lo]
        truth = {("horizontal", True): "left", ("horizontal", False): "right"}.get(
            (r.meta["axis"], first), "above" if first else "below"
        )
        assert r.answer_text == truth
        assert a[lo + 2] <= b[lo] or b[lo + 2] <= a[lo]  # separated along the asked axis


def test_scale_sweep_and_4k_splits():
    cfg = small(width=1024, height=768)
    specs = {s.name: s for s in split_specs(cfg)}
    sweep = [make_sample(cfg, 0, specs["scale_sweep"], i, "s") for i in range(4)]
    assert [r.meta["target_size"] for r in sweep] == [0.1, 0.1, 0.2, 0.2]
    assert all(r.category == "attribute" for r in sweep)
    assert [r.target_boxes[0][2] - r.target_boxes[0][0] for r in sweep] == [77, 77, 154, 154]
    big = make_sample(cfg, 0, specs["test_4k"], 0, "s")
    assert (big.width, big.height) == (640, 360)
    assert Image.open(io.BytesIO(big.image_bytes)).size == (640, 360)


def test_every_split_reads_back(tmp_path):
    result = build_synthetic(prepare_cfg(0), tmp_path, VIEWS, progress=False)
    for split, entry in result.manifest["splits"].items():
        records = list(read_records(result.out_dir / entry["file"]))
        assert len(records) == entry["rows"] and all(r.split == split for r in records)
        assert len({r.id for r in records}) == len(records)
        assert Counter(r.category for r in records) == entry["categories"]


@pytest.mark.parametrize("tint", [0.0, 0.8])
def test_position_tint_puts_position_into_red_and_blue(tint):
    """With the tint the background's red rises left to right and its blue top to bottom, by
    about 2 x TINT_LEVELS x tint whatever the image's random base colour; without it, neither."""
    from components.data.synthetic import TINT_LEVELS, background

    for seed in range(3):
        px = background(np.random.default_rng(seed), 512, 384, clutter=0.3, tint=tint).astype(float)
        red_rise = px[:, -32:, 0].mean() - px[:, :32, 0].mean()
        blue_rise = px[-32:, :, 2].mean() - px[:32, :, 2].mean()
        green_rise = px[:, -32:, 1].mean() - px[:, :32, 1].mean()
        expected = 2 * TINT_LEVELS * tint * (1 - 32 / 512)
        assert abs(red_rise - expected) < 25 and abs(blue_rise - 2 * TINT_LEVELS * tint * (1 - 32 / 384)) < 25
        assert abs(green_rise) < 25


def test_large_decoys_shrink_until_they_fit():
    """Two objects of up to 45% of the short side: the decoy is shrunk, never refused."""
    cfg = small(width=2048, height=1536, target_size=(0.44, 0.45), decoys=2, attribute_share=1.0)
    spec = split_specs(cfg)[0]
    for i in range(6):
        rec = make_sample(cfg, 0, spec, i, "s")
        boxes = [o["box"] for o in rec.meta["objects"]]
        assert len(boxes) == 3
        target_side = boxes[0][2] - boxes[0][0]
        assert target_side >= round(0.44 * 1536)
        for a in range(3):
            for b in range(a + 1, 3):
                ax1, ay1, ax2, ay2 = boxes[a]
                bx1, by1, bx2, by2 = boxes[b]
                assert ax2 <= bx1 or bx2 <= ax1 or ay2 <= by1 or by2 <= ay1  # never overlapping
