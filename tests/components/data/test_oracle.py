"""The oracle self-check reads what a patch embedding sees: a crop of the named object answers
the attribute question when the checker cells are whole patches in the crop, the first view does
not (near chance), and a pattern finer than a patch is reported unreadable even in the crop (the
pixel-variance classifier it replaces called 4-px cells in a 224-px crop 100% legible)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from components.config import SyntheticConfig
from components.data.oracle import (
    MIN_CONTRAST,
    OracleCheck,
    Views,
    applies,
    axis_rms,
    central_patches,
    classify,
)
from components.data.synthetic import PAIR_NAMES, PAIRS, make_sample, split_specs

VIEWS = Views(3136, 50176, 100352, 200704)  # params.yaml defaults (model and episode sections)
OLD_VIEWS = Views(3136, 50176, 12544, 50176)  # the earlier 224-px crop budget


def run_oracle(cfg: SyntheticConfig, count: int, split: str = "test", views: Views = VIEWS) -> dict:
    spec = {s.name: s for s in split_specs(cfg)}[split]
    check = OracleCheck(views)
    for i in range(count):
        check.add(make_sample(cfg, 0, spec, i, "synthetic"))
    return check.summary()


def test_classifier_on_pure_patterns():
    for k, name in enumerate(PAIR_NAMES):
        c1, c2 = (np.asarray(c, float) for c in PAIRS[name])
        checker = np.where((np.indices((16, 16)).sum(0) % 2 == 0)[..., None], c1, c2).reshape(-1, 3)
        assert classify(checker, PAIR_NAMES) == k
    flat = np.full((64, 3), 127.0) + np.random.default_rng(0).normal(0, 0.5, (64, 3))
    assert axis_rms(flat, PAIR_NAMES).max() < MIN_CONTRAST
    assert classify(flat, PAIR_NAMES, guess=3) == 3


def checker(cell: int, side: int = 112, pair: str = "red and cyan") -> Image.Image:
    c1, c2 = (np.asarray(c, np.uint8) for c in PAIRS[pair])
    parity = (np.indices((side, side)) // cell).sum(0) % 2 == 0
    return Image.fromarray(np.where(parity[..., None], c1, c2))


def test_patch_means_see_whole_cells_but_not_sub_patch_texture():
    """16-px cells: patch means keep the two colours; 2-px cells: every patch is about the same gray."""
    box = (0, 0, 112, 112)
    coarse = central_patches(checker(16), box, 14)
    fine = central_patches(checker(2), box, 14)
    assert coarse.shape == fine.shape == (36, 3)  # the 6x6 patches whose centres are in the middle 70%
    assert axis_rms(coarse, PAIR_NAMES)[0] > 50
    assert axis_rms(fine, PAIR_NAMES).max() < MIN_CONTRAST
    assert classify(fine, PAIR_NAMES, guess=4) == 4


def test_default_design_crop_answers_first_view_does_not():
    """2048x1536, 16-px cells, 448-px crop budget (the defaults): 24 attribute questions."""
    cfg = SyntheticConfig(test=32, detail_px=16)
    s = run_oracle(cfg, 32)["overall"]
    assert s["n"] == 24 and s["chance"] == 0.25
    assert s["crop_accuracy"] >= 0.95
    assert s["crop_signal_rms"]["min"] > 50  # whole-patch cells fill the crop with strong contrast
    assert s["first_view_accuracy"] <= s["chance"] + 0.2
    assert s["first_view_target_px"]["min"] >= 20  # while the object spans about one token or more


def test_sub_patch_cells_are_unreadable_even_in_the_crop():
    """The earlier design (4-px cells, 224-px crops): the oracle now says the crop shows nothing."""
    cfg = SyntheticConfig(test=32, detail_px=4)
    s = run_oracle(cfg, 32, views=OLD_VIEWS)["overall"]
    assert s["crop_accuracy"] <= s["chance"] + 0.25
    assert s["crop_signal_rms"]["mean"] < MIN_CONTRAST


def test_4k_split_behaves_the_same():
    cfg = SyntheticConfig(detail_px=16, split_4k={"count": 4, "width": 3840, "height": 2160})
    s = run_oracle(cfg, 4, "test_4k")["overall"]
    assert s["crop_accuracy"] == 1.0


def test_oracle_sees_a_legible_pattern_in_the_first_view():
    """At 512x384 the first view is only ~2x smaller: 16-px cells stay whole patches there."""
    cfg = SyntheticConfig(width=512, height=384, test=12, detail_px=32, target_size=(0.4, 0.45), attribute_share=1.0)
    s = run_oracle(cfg, 12)["overall"]
    assert s["first_view_accuracy"] >= 0.85 and s["first_view_signal_rms"]["mean"] > 20


def test_scale_sweep_is_reported_per_size():
    cfg = SyntheticConfig(width=1024, height=768, scale_sweep={"sizes": [0.1, 0.25], "per_size": 2})
    summary = run_oracle(cfg, 4, "scale_sweep")
    sizes = summary["by_target_size"]["scale_sweep"]
    assert sorted(sizes) == ["0.1", "0.25"] and all(v["n"] == 2 for v in sizes.values())
    assert sizes["0.1"]["first_view_target_px"]["mean"] < sizes["0.25"]["first_view_target_px"]["mean"]


@pytest.mark.parametrize("family", ["spatial"])
def test_only_attribute_questions_are_judged(family):
    cfg = SyntheticConfig(width=512, height=384, attribute_share=0.0)
    record = make_sample(cfg, 0, split_specs(cfg)[0], 0, "s")
    assert record.category == family and not applies(record)
    check = OracleCheck(VIEWS)
    assert check.add(record) is None and check.summary()["overall"] == {"n": 0}
