"""RL stage outputs: the grounding-emergence plot and the per-step table.

`plot_emergence` draws, against the step, the valid-box ratio, the crop-hit ratio and the
accuracy of the training rollouts (sampled, thin line) and of the validation passes: greedy
(solid lines, filled markers) and sampled at the rollout temperature (dashed lines, hollow
markers), for each protocol validated. The paper's Figure 3 (valid boxes rising with RL while
the reward is answer correctness only), with crop-hit beside it (a valid box is not yet a box
on the target).
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


PANELS = (
    ("valid_box_ratio", "valid-box ratio"),
    ("crop_hit_ratio", "crop-hit ratio"),
    ("accuracy", "accuracy"),
)
# Validation passes: (key prefix, label, line style, filled markers).
VAL_PASSES = (("val", "greedy", "-", True), ("val_sampled", "sampled", "--", False))


def validation_lines(val_history: Sequence[dict], key: str) -> list[dict]:
    """The validation lines of one panel: label, steps, values and style, per protocol and pass."""
    lines = []
    for protocol, marker, colour in (("mgpo", "o", "C0"), ("direct", "s", "C1")):
        for prefix, how, style, filled in VAL_PASSES:
            vkey = f"{prefix}_{protocol}_{key}"
            points = [(v["step"], v[vkey]) for v in val_history if vkey in v]
            if points:
                xs, ys = zip(*points, strict=True)
                lines.append(
                    {
                        "label": f"validation, {protocol} protocol ({how})",
                        "steps": list(xs),
                        "values": list(ys),
                        "style": {
                            "marker": marker,
                            "ls": style,
                            "color": colour,
                            "markerfacecolor": colour if filled else "white",
                        },
                    }
                )
    return lines


def plot_emergence(history: Sequence[dict], val_history: Sequence[dict], mode: str, out: str | Path) -> Path:
    """PNG of valid-box ratio, crop-hit ratio and accuracy vs step (training rollouts, and
    greedy and sampled validation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(14, 3.9), sharex=True)
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        steps = [h["step"] for h in history if key in h]
        if steps:
            ax.plot(
                steps,
                [h[key] for h in history if key in h],
                lw=1,
                alpha=0.6,
                color="0.45",
                label=f"train rollouts ({mode}, sampled)",
            )
        for line in validation_lines(val_history, key):
            ax.plot(line["steps"], line["values"], lw=1.5, label=line["label"], **line["style"])
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
