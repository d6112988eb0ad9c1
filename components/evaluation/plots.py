"""PNG plots of an evaluation (matplotlib, Agg backend: no display needed).

- `accuracy_by_category.png`: per model and benchmark, accuracy per category (and overall) for
  each mode, with 95% Wilson intervals and the chance level;
- `accuracy_vs_target_size.png`: on benchmarks whose records carry `meta.target_size` at a few
  fixed values (the synthetic scale-sweep split), accuracy against target size for direct and
  MGPO (oracle dotted, as the upper bound): the picture of the pixel limit.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from components.evaluation.metrics import accuracy_stats, chance, group_rows

MODE_COLOURS = {"direct": "#4c72b0", "mgpo": "#dd8452", "oracle": "#55a868"}
MAX_SWEEP_SIZES = 12  # more distinct sizes than this is a random size, not a sweep


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sweep_points(rows: list[dict]) -> dict[float, dict] | None:
    """target size -> accuracy stats, or None when the rows are not a size sweep."""
    by_size: dict[float, list[dict]] = defaultdict(list)
    for row in rows:
        size = row.get("target_size")
        if size is None:
            return None
        by_size[round(float(size), 4)].append(row)
    if not 2 <= len(by_size) <= MAX_SWEEP_SIZES:
        return None
    return {size: accuracy_stats(group) for size, group in sorted(by_size.items())}


def _placeholder(out: Path, message: str) -> Path:
    # DVC declares both plots; a run without the data still writes a figure that says why.
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 2))
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_accuracy_by_category(rows: list[dict], out: Path) -> Path:
    """Grouped bars: category (and overall) x mode, one panel per model and benchmark."""
    groups = group_rows(rows)
    panels = sorted({(m, b) for m, b, _ in groups})
    if not panels:
        return _placeholder(out, "no predictions to plot")
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels)), squeeze=False)
    for ax, (model, bench) in zip(axes[:, 0], panels, strict=True):
        modes = [mode for m, b, mode in groups if (m, b) == (model, bench)]
        cats = sorted({r["category"] for mode in modes for r in groups[(model, bench, mode)]})
        labels = ["overall", *cats]
        width = 0.8 / max(1, len(modes))
        for i, mode in enumerate(modes):
            mrows = groups[(model, bench, mode)]
            stats = [accuracy_stats(mrows)] + [
                accuracy_stats([r for r in mrows if r["category"] == c]) for c in cats
            ]
            xs = [j + (i - (len(modes) - 1) / 2) * width for j in range(len(labels))]
            acc = [s["accuracy"] for s in stats]
            err = [
                [s["accuracy"] - s["accuracy_ci_low"] for s in stats],
                [s["accuracy_ci_high"] - s["accuracy"] for s in stats],
            ]
            ax.bar(xs, acc, width, yerr=err, capsize=3, label=mode, color=MODE_COLOURS.get(mode))
        # Chance does not depend on the mode; one mode's rows give it (pooling would multiply).
        ax.axhline(
            chance(groups[(model, bench, modes[0])]),
            color="gray",
            linestyle="--",
            linewidth=1,
            label="chance",
        )
        ax.set_xticks(range(len(labels)), labels)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{model} on {bench}")
        ax.legend(loc="upper right", fontsize=8, ncols=len(modes) + 1)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_accuracy_vs_size(rows: list[dict], out: Path) -> Path:
    """Accuracy against target size, one panel per size-sweep benchmark (a placeholder saying so
    when no benchmark of the evaluation is a size sweep)."""
    groups = group_rows(rows)
    benches = sorted({b for _, b, _ in groups})
    curves: dict[str, list[tuple[str, str, dict]]] = {}
    for bench in benches:
        for (model, b, mode), grows in sorted(groups.items()):
            if b != bench:
                continue
            points = sweep_points(grows)
            if points:
                curves.setdefault(bench, []).append((model, mode, points))
    if not curves:
        return _placeholder(out, "no size-sweep benchmark (records with a few fixed meta.target_size values)")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(6.5 * len(curves), 4), squeeze=False)
    styles = ["-", "--", "-.", ":"]
    models = sorted({m for lines in curves.values() for m, _, _ in lines})
    for ax, (bench, lines) in zip(axes[0], curves.items(), strict=True):
        for model, mode, points in lines:
            xs = list(points)
            ys = [points[x]["accuracy"] for x in xs]
            lo = [points[x]["accuracy_ci_low"] for x in xs]
            hi = [points[x]["accuracy_ci_high"] for x in xs]
            style = ":" if mode == "oracle" else styles[models.index(model) % len(styles)]
            colour = MODE_COLOURS.get(mode)
            ax.plot(xs, ys, style, marker="o", color=colour, label=f"{model} {mode}")
            ax.fill_between(xs, lo, hi, color=colour, alpha=0.12)
        ax.set_xlabel("target side / image short side")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.05)
        ax.set_title(f"accuracy vs target size ({bench})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


PLOT_FILES = ("accuracy_by_category.png", "accuracy_vs_target_size.png")


def make_plots(rows: list[dict], plots_dir: Path) -> list[Path]:
    """Write both plots (names in PLOT_FILES); return their paths."""
    return [
        plot_accuracy_by_category(rows, plots_dir / PLOT_FILES[0]),
        plot_accuracy_vs_size(rows, plots_dir / PLOT_FILES[1]),
    ]
