"""The science sweep's method code: its run plan, fingerprints, and the summary statistics.

`mgpo science` (flows/science.py) trains, per seed of `science.seeds`, one SFT model and from it
one RL model per arm of `science.modes` (rl.mode: mgpo, or direct, the single-turn GRPO
baseline), all at the same budget, and evaluates each RL model on every `evaluate.benchmarks`
entry in `science.eval_modes`. This module holds what is not orchestration:

- the plan: `seed_params` / `arm_params` derive each run's params from the sweep's (a seed sets
  `sft.seed` and `rl.seed`; evaluation keeps `evaluate.seed`, so every arm and seed answers the
  same questions in the same option order: paired), with its folders under `science.out_dir`;
- fingerprints of each run's inputs (`sft_fingerprint`, `arm_fingerprint`), so a rerun skips a
  run whose outputs exist with the same fingerprint (`is_done`);
- the statistics (`summarize`): per seed and arm the accuracy with its 95% Wilson interval;
  pooled over seeds the accuracy over all questions pooled with its Wilson interval, and the
  across-seed mean and sample standard deviation; per benchmark the MGPO-minus-direct
  difference (each arm in its own protocol, and both arms in each protocol), with Newcombe's
  95% interval for a difference of proportions (from the two Wilson intervals; it treats the
  arms as independent, which is conservative for paired questions) and whether the pooled
  intervals overlap. `to_markdown` renders the same as a table.

Run: `mgpo science --params params.yaml --params params/science.yaml`.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from components.config import Params
from components.evaluation.metrics import wilson_interval

DONE = "science.json"  # a finished run's marker: its fingerprint and what it produced


# --------------------------------------------------------------------------------- plan


def seed_dir(params: Params, seed: int) -> Path:
    return Path(params.science.out_dir) / f"seed_{seed}"


def seed_params(params: Params, seed: int) -> Params:
    """The params of one seed's SFT run (and the base of its arms): seeds and folders set."""
    root = seed_dir(params, seed)
    paths = params.paths.model_copy(
        update={
            "sft_model": str(root / "sft" / "model"),
            "sft_dir": str(root / "sft"),
            "sft_data": str(root / "sft" / "data"),
            "checkpoints": str(root / "sft" / "checkpoints"),
        }
    )
    return params.model_copy(
        update={
            "paths": paths,
            "sft": params.sft.model_copy(update={"seed": seed}),
            "rl": params.rl.model_copy(update={"seed": seed}),
        }
    )


def arm_dir(params: Params, seed: int, arm: str) -> Path:
    return seed_dir(params, seed) / arm


def arm_params(seeded: Params, seed: int, arm: str) -> Params:
    """One arm's RL and evaluation params, from its seed's params: rl.mode, folders, the one model."""
    root = arm_dir(seeded, seed, arm)
    paths = seeded.paths.model_copy(
        update={
            "rl_model": str(root / "model"),
            "rl_dir": str(root / "rl"),
            "eval_dir": str(root / "eval"),
            "checkpoints": str(root / "checkpoints"),
        }
    )
    evaluate = seeded.evaluate.model_copy(
        update={"models": {arm: str(root / "model")}, "modes": list(seeded.science.eval_modes)}
    )
    return seeded.model_copy(
        update={"paths": paths, "rl": seeded.rl.model_copy(update={"mode": arm}), "evaluate": evaluate}
    )


def missing_inputs(params: Params) -> list[str]:
    """What the sweep needs before it starts, as `key: path` lines (empty: all there)."""
    need = {
        "paths.base_model": Path(params.paths.base_model) / "config.json",
        "sft.train_data": Path(params.sft.train_data),
        "rl.train_data": Path(params.rl.train_data),
        "rl.val_data": Path(params.rl.val_data),
        **{f"evaluate.benchmarks.{k}": Path(v) for k, v in params.evaluate.benchmarks.items()},
    }
    missing = [f"{key}: {path} not found" for key, path in need.items() if not path.is_file()]
    if not params.evaluate.benchmarks:
        missing.append("evaluate.benchmarks: empty (name at least one canonical parquet)")
    return missing


# ------------------------------------------------------------------------- fingerprints


def _digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _file_digest(path: str | Path) -> str:
    from components.data.parquet import sha256_file

    return sha256_file(path) if Path(path).is_file() else "missing"


def sft_fingerprint(seeded: Params) -> str:
    """The inputs of a seed's SFT run: its params sections, the base model's config, the data."""
    base = Path(seeded.paths.base_model)
    return _digest(
        {
            "sft": seeded.sft.model_dump(mode="json"),
            "episode": seeded.episode.model_dump(mode="json"),
            "base_model": _file_digest(base / "config.json") + _file_digest(base / "model.safetensors"),
            "train_data": _file_digest(seeded.sft.train_data),
        }
    )


def arm_fingerprint(armed: Params, sft_print: str) -> str:
    """The inputs of an arm's RL run and evaluation: its SFT model's fingerprint, params, data."""
    return _digest(
        {
            "sft": sft_print,
            "rl": armed.rl.model_dump(mode="json"),
            "evaluate": armed.evaluate.model_dump(mode="json", exclude={"models"}),
            "data": {p: _file_digest(p) for p in (armed.rl.train_data, armed.rl.val_data)},
            "benchmarks": {k: _file_digest(v) for k, v in armed.evaluate.benchmarks.items()},
        }
    )


def is_done(folder: str | Path, fingerprint: str, outputs: Sequence[str | Path] = ()) -> dict | None:
    """The marker of a finished run with this fingerprint whose outputs exist, else None."""
    marker = Path(folder) / DONE
    try:
        done = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if done.get("fingerprint") != fingerprint or not all(Path(o).exists() for o in outputs):
        return None
    return done


def mark_done(folder: str | Path, fingerprint: str, **record: object) -> dict:
    out = {"fingerprint": fingerprint, **record}
    path = Path(folder) / DONE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2, default=str) + "\n")
    tmp.replace(path)
    return out


# ---------------------------------------------------------------------------- statistics


def proportion(accuracy: float, n: int) -> dict:
    """An accuracy over n questions with its 95% Wilson interval."""
    lo, hi = wilson_interval(accuracy * n, n)
    return {"accuracy": accuracy, "n": n, "ci_low": lo, "ci_high": hi}


def pooled(per_seed: Mapping[object, Mapping]) -> dict:
    """Pooled over seeds: the accuracy over all questions of all seeds with its Wilson interval,
    and the across-seed mean and sample standard deviation (None with one seed)."""
    results = list(per_seed.values())
    n = sum(int(r["n"]) for r in results)
    right = sum(float(r["accuracy"]) * int(r["n"]) for r in results)
    accuracy = right / n if n else 0.0
    lo, hi = wilson_interval(right, n)
    seeds = [float(r["accuracy"]) for r in results]
    return {
        "accuracy": accuracy,
        "n": n,
        "ci_low": lo,
        "ci_high": hi,
        "seed_mean": statistics.fmean(seeds) if seeds else 0.0,
        "seed_std": statistics.stdev(seeds) if len(seeds) > 1 else None,
        "seeds": len(seeds),
    }


def difference(a: Mapping, b: Mapping) -> dict:
    """a - b of two pooled accuracies: Newcombe's 95% interval, and whether their intervals overlap."""
    d = a["accuracy"] - b["accuracy"]
    lo = d - math.sqrt((a["accuracy"] - a["ci_low"]) ** 2 + (b["ci_high"] - b["accuracy"]) ** 2)
    hi = d + math.sqrt((a["ci_high"] - a["accuracy"]) ** 2 + (b["accuracy"] - b["ci_low"]) ** 2)
    return {
        "difference": d,
        "ci_low": lo,
        "ci_high": hi,
        "intervals_overlap": a["ci_low"] <= b["ci_high"] and b["ci_low"] <= a["ci_high"],
    }


def summarize(
    metrics: Mapping[tuple[int, str], Mapping],
    seeds: Sequence[int],
    arms: Sequence[str],
    eval_modes: Sequence[str],
    benchmarks: Sequence[str],
) -> dict:
    """The sweep's summary from each (seed, arm)'s evaluation metrics.json (arm -> benchmark ->
    mode -> {accuracy, n, ...}, the arm's model named after the arm)."""
    out: dict = {"seeds": list(seeds), "arms": list(arms), "eval_modes": list(eval_modes), "benchmarks": {}}
    for bench in benchmarks:
        table: dict = {}
        for arm in arms:
            for mode in eval_modes:
                per_seed = {}
                for seed in seeds:
                    m = metrics[(seed, arm)][arm][bench][mode]
                    per_seed[str(seed)] = proportion(float(m["accuracy"]), int(m["n"]))
                table.setdefault(arm, {})[mode] = {"per_seed": per_seed, "pooled": pooled(per_seed)}
        entry: dict = {"arms": table, "comparisons": {}}
        if {"mgpo", "direct"} <= set(arms):
            pairs = {}
            if {"mgpo", "direct"} <= set(eval_modes):  # each arm in the protocol it was trained on
                pairs["own_protocol"] = ("mgpo", "direct")
            for mode in eval_modes:
                pairs[f"{mode}_protocol"] = (mode, mode)
            for name, (mode_a, mode_b) in pairs.items():
                a, b = table["mgpo"][mode_a]["pooled"], table["direct"][mode_b]["pooled"]
                entry["comparisons"][name] = {
                    "mgpo_arm_mode": mode_a,
                    "direct_arm_mode": mode_b,
                    "mgpo": a["accuracy"],
                    "direct": b["accuracy"],
                    **difference(a, b),
                    "per_seed_difference": {
                        str(s): table["mgpo"][mode_a]["per_seed"][str(s)]["accuracy"]
                        - table["direct"][mode_b]["per_seed"][str(s)]["accuracy"]
                        for s in seeds
                    },
                }
        out["benchmarks"][bench] = entry
    return out


def flat_figures(summary: Mapping) -> dict[str, float]:
    """MLflow metrics of the summary: pooled accuracies and the differences."""
    out: dict[str, float] = {}
    for bench, entry in summary["benchmarks"].items():
        for arm, modes in entry["arms"].items():
            for mode, cell in modes.items():
                for k in ("accuracy", "ci_low", "ci_high", "seed_mean"):
                    out[f"{bench}.{arm}_arm.{mode}.pooled_{k}"] = float(cell["pooled"][k])
        for name, c in entry["comparisons"].items():
            out[f"{bench}.mgpo_minus_direct.{name}"] = float(c["difference"])
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _cell(c: Mapping) -> str:
    return f"{_pct(c['accuracy'])} [{_pct(c['ci_low'])}, {_pct(c['ci_high'])}]"


def to_markdown(summary: Mapping, budget: Mapping | None = None) -> str:
    """summary.md: per benchmark a table (arm x protocol: each seed, pooled, seed mean ± std) and
    the MGPO-minus-direct differences. Accuracies in %, 95% intervals in brackets."""
    seeds = summary["seeds"]
    lines = [
        "# Science sweep: SFT -> MGPO RL vs SFT -> single-turn GRPO (direct)",
        "",
        f"Seeds {', '.join(map(str, seeds))}; accuracy in % with its 95% interval (Wilson; pooled: over "
        "all questions of all seeds); seed mean ± sample std across seeds.",
    ]
    if budget:
        lines += ["", "Budget: " + ", ".join(f"`{k}={v}`" for k, v in budget.items())]
    for bench, entry in summary["benchmarks"].items():
        lines += ["", f"## {bench}", ""]
        head = ["arm", "protocol", *[f"seed {s}" for s in seeds], "pooled", "n", "seed mean ± std"]
        lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for arm, modes in entry["arms"].items():
            for mode, cell in modes.items():
                p = cell["pooled"]
                std = "n/a" if p["seed_std"] is None else _pct(p["seed_std"])
                row = [
                    arm,
                    mode,
                    *[_cell(cell["per_seed"][str(s)]) for s in seeds],
                    _cell(p),
                    str(p["n"]),
                    f"{_pct(p['seed_mean'])} ± {std}",
                ]
                lines.append("| " + " | ".join(row) + " |")
        if entry["comparisons"]:
            lines += [
                "",
                "| MGPO minus direct | MGPO arm | direct arm | difference [95% Newcombe] | pooled intervals |",
                "| --- | --- | --- | --- | --- |",
            ]
            for name, c in entry["comparisons"].items():
                overlap = "overlap" if c["intervals_overlap"] else "do not overlap"
                lines.append(
                    f"| {name.replace('_', ' ')} | {c['mgpo_arm_mode']} {_pct(c['mgpo'])} | "
                    f"{c['direct_arm_mode']} {_pct(c['direct'])} | {_pct(c['difference'])} "
                    f"[{_pct(c['ci_low'])}, {_pct(c['ci_high'])}] | {overlap} |"
                )
    return "\n".join(lines) + "\n"
