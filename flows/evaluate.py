"""Stage `evaluate`: models x benchmarks x modes (direct, mgpo, oracle), with one MLflow run.

Reads `evaluate` (models, benchmarks, modes, bias controls, workers) and `episode` from
params.yaml; writes into `paths.eval_dir`: `predictions.jsonl` (resumable: a rerun skips
finished views), `metrics.json` (DVC metrics: model -> benchmark -> mode -> accuracy with a 95%
Wilson interval, per-category accuracy, valid-box ratio, mean IoU, crop-hit ratio, turns,
tokens, seconds per sample, samples per second), `plots/*.png` (DVC plots) and a
self-contained `report.html`. The MLflow run logs the metrics (flattened) and those files.
Departures from the paper: options are shuffled with a seed by default and decoding is greedy
(the paper validated at temperature 1.0 with published option order); circular evaluation and
repeated sampling are available (`evaluate.circular`, `evaluate.samples`).

Run: `mgpo evaluate` (DVC: `dvc repro evaluate`), e.g. `mgpo evaluate --model base
-S evaluate.max_samples=8 -S evaluate.workers=2`.
"""

from __future__ import annotations

import re

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._stage import ParamsPath, params_for

_METRIC_CHARS = re.compile(r"[^A-Za-z0-9_\-. /:]")


def flat_metrics(metrics: dict) -> dict[str, float]:
    """MLflow metrics `model.benchmark.mode.name` (and `...categories.cat.name`)."""
    out: dict[str, float] = {}

    def walk(node, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{_METRIC_CHARS.sub('_', str(k))}"
            if isinstance(v, dict):
                walk(v, key + ".")
            elif isinstance(v, bool | int | float):
                out[key] = float(v)

    walk(metrics, "")
    return out


@task(name="evaluate-models", cache_policy=NO_CACHE)
def evaluate_task(cfg, episode, eval_dir: str, models: list[str] | None, trust_remote_code: bool):
    from components.evaluation.session import evaluate

    return evaluate(cfg, episode, eval_dir, only_models=models, trust_remote_code=trust_remote_code)


def summary_lines(metrics: dict) -> list[str]:
    lines = []
    for model, benches in metrics.items():
        for bench, modes in benches.items():
            for mode, m in modes.items():
                extra = ""
                if "valid_box_ratio" in m:
                    extra = (
                        f" valid-box {m['valid_box_ratio']:.2f} IoU {m['mean_iou']:.2f}"
                        f" crop-hit {m['crop_hit_ratio']:.2f} turns {m['mean_turns']:.1f}"
                    )
                lines.append(
                    f"{model:>8} {bench:>16} {mode:>7}: accuracy {m['accuracy']:.3f} "
                    f"[{m['accuracy_ci_low']:.3f}, {m['accuracy_ci_high']:.3f}] n={m['n']} "
                    f"chance {m['chance']:.3f}{extra} {m['samples_per_second']:.2f} samples/s"
                )
    return lines


def run_evaluate(params, models: list[str] | None = None, tags: dict[str, str] | None = None) -> dict:
    """The stage's work in one MLflow run (inside a flow): evaluate, log, print; the metrics.
    `mgpo science` calls it per arm."""
    import mlflow

    from components.tracking import stage_run

    cfg, episode = params.evaluate, params.episode
    tags = {"mgpo.models": ",".join(models or cfg.models), **(tags or {})}
    with stage_run("evaluate", params.tracking, {"evaluate": cfg, "episode": episode}, tags=tags):
        result = evaluate_task(
            cfg, episode, params.paths.eval_dir, models or None, params.model.trust_remote_code
        )
        flat = flat_metrics(result.metrics)
        items = list(flat.items())
        for i in range(0, len(items), 500):  # MLflow's batch limit is 1000 metrics
            mlflow.log_metrics(dict(items[i : i + 500]))
        for path in result.files.values():
            mlflow.log_artifact(str(path), artifact_path="plots" if path.suffix == ".png" else None)
        if result.skipped_models:
            mlflow.set_tag("mgpo.skipped_models", str(result.skipped_models)[:5000])
    for line in summary_lines(result.metrics):
        print(line)
    for name, why in result.skipped_models.items():
        print(f"evaluate: skipped {name}: {why}")
    print(f"evaluate: wrote {', '.join(str(p) for p in result.files.values())}")
    return result.metrics


@flow(name="evaluate")
def evaluate_flow(
    params_path: ParamsPath = "params.yaml",
    overrides: list[str] | None = None,
    models: list[str] | None = None,
) -> dict:
    return run_evaluate(params_for(params_path, overrides), models)


def run(params_path: ParamsPath, overrides: list[str], model: list[str] | None = None, **_: object) -> int:
    from components.evaluation.session import check_inputs

    params = params_for(params_path, overrides)  # invalid params fail here, before Prefect starts
    check_inputs(params.evaluate, list(model or []) or None)  # missing models/benchmarks too
    evaluate_flow(params_path, overrides, list(model or []) or None)
    return 0
