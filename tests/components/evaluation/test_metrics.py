"""Metrics on hand-made predictions: accuracy, Wilson intervals, IoU, crop-hit, circular, repeats."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from components.evaluation import metrics as M


def row(group="q1", correct=True, mode="mgpo", cycle=0, repeat=0, category="attr", n_options=4, **kw) -> dict:
    base = {
        "model": "m",
        "benchmark": "b",
        "mode": mode,
        "id": group,
        "group": group,
        "cycle": cycle,
        "repeat": repeat,
        "category": category,
        "correct": correct,
        "answered": True,
        "error": None,
        "n_options": n_options,
        "num_turns": 2,
        "tokens": 10,
        "seconds": 0.5,
        "box_valid": True,
        "iou": 0.5,
        "crop_hit": True,
        "coverage": 1.0,
    }
    base.update(kw)
    return base


def test_wilson_matches_textbook_values():
    # Wilson 95% for 8/10: (0.4902, 0.9433) (Newcombe 1998, Table I style); for 0/10 and 10/10.
    lo, hi = M.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = M.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert M.wilson_interval(10, 10)[1] == 1.0
    assert M.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        M.wilson_interval(11, 10)


def test_wilson_agrees_with_scipy_for_integer_counts():
    from scipy.stats import binomtest

    for k, n in [(1, 3), (17, 40), (64, 64), (0, 7), (33, 191)]:
        ci = binomtest(k, n).proportion_ci(method="wilson")
        assert M.wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


@given(st.integers(1, 500), st.data())
def test_wilson_contains_the_estimate(n, data):
    k = data.draw(st.integers(0, n))
    lo, hi = M.wilson_interval(k, n)
    assert 0 <= lo <= k / n <= hi <= 1


def test_accuracy_overall_and_per_category():
    rows = [
        row("a", True, category="attr"),
        row("b", False, category="attr"),
        row("c", True, category="attr"),
        row("d", True, category="spatial", n_options=2),
    ]
    s = M.summarize(rows, "direct")
    assert s["n"] == 4 and s["accuracy"] == 0.75
    assert (s["accuracy_ci_low"], s["accuracy_ci_high"]) == pytest.approx(M.wilson_interval(3, 4), abs=1e-6)
    assert s["categories"]["attr"]["n"] == 3
    assert s["categories"]["attr"]["accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    assert s["categories"]["spatial"]["accuracy"] == 1.0
    assert s["chance"] == pytest.approx((0.25 * 3 + 0.5) / 4, abs=1e-6)
    assert "valid_box_ratio" not in s  # single-turn mode


def test_grounding_metrics_count_invalid_boxes_as_misses():
    rows = [
        row("a", box_valid=True, iou=0.8, crop_hit=True, coverage=1.0),
        row("b", box_valid=False, iou=0.0, crop_hit=False, coverage=0.0),
        row("c", box_valid=True, iou=0.2, crop_hit=False, coverage=0.3),
        row("d", box_valid=True, iou=None, crop_hit=None, coverage=None),  # no target box in the record
    ]
    s = M.summarize(rows, "mgpo")
    assert s["valid_box_ratio"] == 0.75
    assert s["with_target"] == 3
    assert s["mean_iou"] == pytest.approx(1.0 / 3, abs=1e-6)
    assert s["crop_hit_ratio"] == pytest.approx(1 / 3, abs=1e-6)
    assert s["mean_coverage"] == pytest.approx(1.3 / 3, abs=1e-6)
    assert s["mean_turns"] == 2


def test_circular_counts_a_question_right_only_if_every_cycle_is():
    rows = [
        *(row("q1", True, cycle=c) for c in range(4)),
        *(row("q2", c != 2, cycle=c) for c in range(4)),
        *(row("q3", True, cycle=c, n_options=2) for c in range(2)),
    ]
    s = M.summarize(rows, "direct")
    assert s["n"] == 3 and s["views"] == 10 and s["cycles"] == 4
    assert s["accuracy"] == pytest.approx(2 / 3, abs=1e-6)
    assert s["accuracy_views"] == 0.9
    assert s["chance"] == pytest.approx((0.25**4 * 2 + 0.5**2) / 3, abs=1e-6)


def test_repeats_give_mean_and_std():
    # Repeat 0: 2/4 right; repeat 1: 3/4; repeat 2: 4/4 -> mean 0.75, sample std 0.25.
    rights = {0: [1, 1, 0, 0], 1: [1, 1, 1, 0], 2: [1, 1, 1, 1]}
    rows = [row(f"q{i}", bool(v), repeat=r) for r, vs in rights.items() for i, v in enumerate(vs)]
    s = M.summarize(rows, "direct")
    assert s["repeats"] == 3 and s["n"] == 4
    assert s["accuracy"] == 0.75 and s["accuracy_std"] == 0.25
    assert s["categories"]["attr"]["accuracy_std"] == 0.25


def test_cost_metrics_and_wall_clock_throughput():
    rows = [row("a", mode="direct", tokens=10, seconds=0.5), row("b", mode="direct", tokens=30, seconds=1.5)]
    s = M.summarize(rows, "direct")
    assert s["tokens_generated"] == 40 and s["tokens_per_sample"] == 20
    assert s["seconds_per_sample"] == 1.0 and s["samples_per_second"] == 1.0
    tree = M.compute_metrics(rows, {("m", "b", "direct"): {"views": 2, "wall_seconds": 0.5}})
    assert tree["m"]["b"]["direct"]["samples_per_second"] == 4.0
    assert "samples_per_second" not in M.strip_timing(tree)["m"]["b"]["direct"]


def test_errors_and_unanswered_are_counted_wrong():
    rows = [
        row("a", False, answered=False, error="image: cannot be read as an image"),
        row("b", False, answered=False),
        row("c", True),
    ]
    s = M.summarize(rows, "direct")
    assert s["errors"] == 1 and s["answered_ratio"] == pytest.approx(1 / 3, abs=1e-6)
    assert s["accuracy"] == pytest.approx(1 / 3, abs=1e-6)


def test_compute_metrics_tree_shape():
    rows = [row("a", mode="direct"), row("a", mode="mgpo"), {**row("a", mode="direct"), "model": "n"}]
    tree = M.compute_metrics(rows)
    assert set(tree) == {"m", "n"} and set(tree["m"]["b"]) == {"direct", "mgpo"}
    assert all(
        math.isfinite(v) for v in M.strip_timing(tree)["m"]["b"]["mgpo"].values() if isinstance(v, float)
    )
