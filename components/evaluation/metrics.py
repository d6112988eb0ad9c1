"""Metrics of one (model, benchmark, mode) group of predictions, and of a whole evaluation.

Input rows are predictions (one per question view: a question under one option order, cycle
and repeat; see `components.evaluation.runner`). Fields read: `group` (the question; circular
views share it), `cycle`, `repeat`, `category`, `correct`, `answered`, `error`, `n_options`,
`num_turns`, `tokens`, `seconds`, and for multi-turn modes `box_valid`, `iou`, `crop_hit`, `coverage`
(None when the record has no target box).

Definitions (all rule-based, no judge model):
- a question is right in one repeat when every one of its views is right (one view unless
  circular evaluation made several); `accuracy` is the mean over repeats of the share of right
  questions, `accuracy_std` the standard deviation over repeats (0 with one repeat);
- `accuracy_ci_low/high`: 95% Wilson score interval for `n` questions at that accuracy;
- `chance`: the expected accuracy of uniform guessing (1/options, to the power of the views
  when circular);
- multi-turn modes: `valid_box_ratio` (share of views whose first box passed the paper's rules),
  and over views whose record has a target box, `mean_iou` (IoU of the box mapped to the
  original image with the best-matching target box; an invalid box counts 0),
  `crop_hit_ratio` (the turn-1 crop holds at least half of a target box: the episode's
  `crop_hit`, the paper's "crops that suffice" proxy) and `mean_coverage` (the share of the
  target inside the crop, 1.0 when the crop contains it whole); `mean_turns` (model turns);
- cost: `tokens_generated` (all turns), `tokens_per_sample`, `seconds_per_sample` (worker time
  per view) and `samples_per_second`.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable

MULTI_TURN_MODES = ("mgpo", "oracle")
# Keys that measure speed, not quality: they differ between otherwise identical runs.
TIMING_KEYS = frozenset({"seconds_per_sample", "samples_per_second", "wall_seconds"})


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion; (0, 1) when n is 0.

    Written out (a few lines) because accuracies averaged over `samples` repeats are fractional
    success counts, which scipy's `binomtest(...).proportion_ci` does not accept.
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside [0, {n}]")
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At p = 0 or 1 the bound is exactly 0 or 1; rounding would leave 1e-17.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def _round(x: float) -> float:
    return round(float(x), 6)


def question_outcomes(rows: Iterable[dict]) -> dict[int, dict[str, bool]]:
    """repeat -> question group -> right (all of its views right)."""
    out: dict[int, dict[str, bool]] = defaultdict(dict)
    for row in rows:
        group, repeat = row["group"], int(row.get("repeat", 0))
        out[repeat][group] = out[repeat].get(group, True) and bool(row["correct"])
    return dict(out)


def accuracy_stats(rows: list[dict]) -> dict:
    """n (questions), accuracy, its std over repeats, and the Wilson interval."""
    outcomes = question_outcomes(rows)
    if not outcomes:
        return {"n": 0, "accuracy": 0.0, "accuracy_std": 0.0, "accuracy_ci_low": 0.0, "accuracy_ci_high": 1.0}
    per_repeat = [sum(q.values()) / len(q) for _, q in sorted(outcomes.items())]
    n = max(len(q) for q in outcomes.values())
    acc = statistics.fmean(per_repeat)
    lo, hi = wilson_interval(acc * n, n)
    return {
        "n": n,
        "accuracy": _round(acc),
        "accuracy_std": _round(statistics.stdev(per_repeat)) if len(per_repeat) > 1 else 0.0,
        "accuracy_ci_low": _round(lo),
        "accuracy_ci_high": _round(hi),
    }


def chance(rows: list[dict]) -> float:
    """Expected accuracy of uniform guessing over the questions of these rows."""
    per_group: dict[tuple[str, int], float] = {}
    for row in rows:
        k = (row["group"], int(row.get("repeat", 0)))
        per_group[k] = per_group.get(k, 1.0) / max(1, int(row["n_options"]))
    return _round(statistics.fmean(per_group.values())) if per_group else 0.0


def _mean(values: list[float]) -> float:
    return _round(statistics.fmean(values)) if values else 0.0


def summarize(rows: list[dict], mode: str) -> dict:
    """Every metric of one (model, benchmark, mode) group; see the module docstring."""
    rows = list(rows)
    out = accuracy_stats(rows)
    out["views"] = len(rows)
    out["repeats"] = len({int(r.get("repeat", 0)) for r in rows})
    out["cycles"] = max((int(r.get("cycle", 0)) for r in rows), default=0) + 1
    out["chance"] = chance(rows)
    out["accuracy_views"] = _mean([float(bool(r["correct"])) for r in rows])
    out["answered_ratio"] = _mean([float(bool(r.get("answered"))) for r in rows])
    out["errors"] = sum(1 for r in rows if r.get("error"))
    if mode in MULTI_TURN_MODES:
        out["valid_box_ratio"] = _mean([float(bool(r.get("box_valid"))) for r in rows])
        with_target = [r for r in rows if r.get("iou") is not None]
        out["with_target"] = len(with_target)
        out["mean_iou"] = _mean([float(r["iou"]) for r in with_target])
        out["crop_hit_ratio"] = _mean([float(bool(r.get("crop_hit"))) for r in with_target])
        out["mean_coverage"] = _mean([float(r.get("coverage") or 0.0) for r in with_target])
        out["mean_turns"] = _mean([float(r.get("num_turns", 0)) for r in rows])
    tokens = sum(int(r.get("tokens", 0)) for r in rows)
    seconds = sum(float(r.get("seconds", 0.0)) for r in rows)
    out["tokens_generated"] = tokens
    out["tokens_per_sample"] = _round(tokens / len(rows)) if rows else 0.0
    out["seconds_per_sample"] = _round(seconds / len(rows)) if rows else 0.0
    out["samples_per_second"] = _round(len(rows) / seconds) if seconds > 0 else 0.0
    categories: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        categories[row["category"]].append(row)
    out["categories"] = {
        cat: {**accuracy_stats(cat_rows), "chance": chance(cat_rows)}
        for cat, cat_rows in sorted(categories.items())
    }
    return out


def group_rows(rows: Iterable[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """(model, benchmark, mode) -> rows, in first-seen order."""
    out: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for row in rows:
        out[(row["model"], row["benchmark"], row["mode"])].append(row)
    return dict(out)


def compute_metrics(rows: Iterable[dict], throughput: dict[tuple[str, str, str], dict] | None = None) -> dict:
    """metrics.json: model -> benchmark -> mode -> `summarize(...)`.

    `throughput` (optional, per group: `views` evaluated in this run and their `wall_seconds`)
    replaces `samples_per_second` by wall-clock throughput, which is what parallel workers
    change; without it the figure is worker time per view.
    """
    out: dict = {}
    for (model, bench, mode), group in sorted(group_rows(rows).items()):
        summary = summarize(group, mode)
        measured = (throughput or {}).get((model, bench, mode))
        if measured and measured.get("views") and measured.get("wall_seconds", 0) > 0:
            summary["wall_seconds"] = _round(measured["wall_seconds"])
            summary["samples_per_second"] = _round(measured["views"] / measured["wall_seconds"])
        out.setdefault(model, {}).setdefault(bench, {})[mode] = summary
    return out


def strip_timing(metrics: dict) -> dict:
    """A copy of a metrics tree without the timing keys (for comparing two runs)."""
    if isinstance(metrics, dict):
        return {k: strip_timing(v) for k, v in metrics.items() if k not in TIMING_KEYS}
    return metrics
