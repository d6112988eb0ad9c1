"""RL stage outputs: the grounding-emergence plot and the per-step table.

`plot_emergence` draws, against the step, the valid-box ratio and the accuracy of the training
rollouts (sampled, thin lines) and of the greedy validation passes (markers): the paper's
Figure 3 (valid boxes rising with RL while the reward is answer correctness only).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

STEP_COLUMNS = [
    "step",
    "reward_mean",
    "accuracy",
    "valid_box_ratio",
    "iou",
    "crop_hit_ratio",
    "response_tokens_per_turn",
    "kl",
    "entropy",
    "clip_frac",
    "grad_norm",
    "logprob_gap",
    "seconds_per_step",
]


def write_steps_csv(history: Sequence[dict], out: str | Path) -> Path:
    """One row per step with the columns above (empty where a figure does not apply)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=STEP_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: _fmt(row.get(k)) for k in STEP_COLUMNS})
    return out


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def plot_emergence(history: Sequence[dict], val_history: Sequence[dict], mode: str, out: str | Path) -> Path:
    """PNG of valid-box ratio and accuracy vs step (training rollouts and validation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    panels = (("valid_box_ratio", "valid-box ratio"), ("accuracy", "accuracy"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        steps = [h["step"] for h in history if key in h]
        if steps:
            ax.plot(
                steps,
                [h[key] for h in history if key in h],
                lw=1,
                alpha=0.6,
                label=f"train rollouts ({mode})",
            )
        for protocol, marker in (("mgpo", "o"), ("direct", "s")):
            vkey = f"val_{protocol}_{key}"
            points = [(v["step"], v[vkey]) for v in val_history if vkey in v]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker=marker, lw=1.5, label=f"validation, {protocol} protocol (greedy)")
        ax.set_title(title)
        ax.set_xlabel("RL step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7, loc="best")
        else:
            ax.text(0.5, 0.5, "not measured in this mode", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(f"Grounding emergence during RL (mode: {mode})")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
