"""SFT loss curve: a CSV for `dvc plots` and a PNG for MLflow and the README."""

from __future__ import annotations

import csv
from pathlib import Path

COLUMNS = ("step", "loss", "lr", "grad_norm", "tokens_per_s", "seconds")


def write_steps_csv(history: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for h in history:
            writer.writerow({k: (round(h[k], 6) if isinstance(h[k], float) else h[k]) for k in COLUMNS})
    return path


def smooth(values: list[float], window: int) -> list[float]:
    """Centred moving mean over `window` values (shorter at the ends), so it does not lag."""
    half = window // 2
    spans = (values[max(0, i - half) : i + half + 1] for i in range(len(values)))
    return [sum(span) / len(span) for span in spans]


def plot_loss(history: list[dict], path: str | Path, title: str = "SFT warmup") -> Path:
    """Loss per step (raw and smoothed) with the learning rate on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = [h["step"] for h in history]
    losses = [h["loss"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, color="#9ecae1", linewidth=1, label="loss (per step)")
    ax.plot(
        steps,
        smooth(losses, max(1, len(losses) // 15)),
        color="#08519c",
        linewidth=2,
        label="loss (smoothed)",
    )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy on assistant tokens")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(
        steps, [h["lr"] for h in history], color="#e6550d", linewidth=1, linestyle="--", label="learning rate"
    )
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    lr_lines = lr_ax.get_legend_handles_labels()
    ax.legend(lines[0] + lr_lines[0], lines[1] + lr_lines[1], loc="upper right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
