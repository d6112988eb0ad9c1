"""Stage `promote`: move the registry's `champion` alias to the candidate when it is better.

The candidate's figure is read from the evaluation (`<paths.eval_dir>/metrics.json`, entry
`promote.candidate` / `promote.gate_benchmark` / `promote.gate_mode`, metric
`promote.gate_metric`), and so is its parent's (`promote.parent`, default `sft`: the model the
candidate was trained from, scored in the same evaluation). The candidate must beat both its
parent and the champion by `promote.min_improvement`, strictly, first run included: with no
champion yet, an RL model that scores below (or ties) its own SFT model is not promoted. The
champion (if a version holds the alias) is evaluated on the same
gate with the same evaluation code and settings (components/evaluation), into
`promote.champion_eval_dir`, a DVC output kept between runs: the evaluation's own fingerprints
make re-scoring an unchanged champion free. Completeness: an evaluation counts only when it
scored every question the gate asks for (`evaluate.max_samples` of the gate benchmark) without
errors. The decision rule is components/registry.py's `decide`.

Before deciding, every stage locked in dvc.lock gets its output hashes on its MLflow run and
model versions (components/lineage.py), and the candidate is checked to be what was evaluated:
the hash of `paths.rl_model` the evaluation read must be the one the candidate's run wrote.

The decision, every figure, both comparisons (`comparisons.parent`, `comparisons.champion`)
and the reason go to `paths.promotion` (DVC metrics), as tags on the candidate's version and
as tags and metrics of the stage's MLflow run. `mgpo promote --rollback` moves `champion` back to the version that
held it before (recorded on the version) and writes nothing DVC tracks.
Departure from the paper: the paper has no registry; this is the project's release gate.

Run: `mgpo promote` (DVC: `dvc repro promote`); `mgpo promote --rollback`.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from flows._stage import ParamsPath, params_for


def expected_questions(benchmark_path: str, max_samples: int, mode: str) -> int:
    """How many questions a complete evaluation of this benchmark and mode scores."""
    from components.data.parquet import count_rows, read_records

    if mode == "oracle":  # only records with a target box are evaluated in oracle mode
        n = sum(1 for r in read_records(benchmark_path) if r.target_boxes)
    else:
        n = count_rows(benchmark_path)
    return min(n, max_samples) if max_samples else n


def errors_of(metrics: dict, model: str, benchmark: str, mode: str) -> int:
    return int(metrics.get(model, {}).get(benchmark, {}).get(mode, {}).get("errors", 0))


def figure_from_metrics(metrics: dict, model: str, params, expected: int, version: str | None, source: str):
    """GateFigure of one model; errored views do not count as evaluated."""
    from components.registry import GateFigure, gate_figure

    cfg = params.promote
    fig = gate_figure(
        metrics,
        model,
        cfg.gate_benchmark,
        cfg.gate_mode,
        cfg.gate_metric,
        expected,
        version=version,
        source=source,
    )
    if fig is None:
        return None
    errors = errors_of(metrics, model, cfg.gate_benchmark, cfg.gate_mode)
    return GateFigure(fig.value, max(0, fig.evaluated - errors), expected, version, source, model)


def candidate_mismatch(root: Path, params, candidate_tags: dict[str, str]) -> str | None:
    """Why the evaluated model is not the candidate version, or None (same, or not checkable).

    Checkable under DVC: dvc.lock's `evaluate` entry holds the hash of the model folder the
    evaluation read; the candidate's version carries the hash its run wrote (after finalize).
    """
    from components import lineage

    model_dir = params.evaluate.models.get(params.promote.candidate, "")
    evaluated = lineage.read_lock(root).get("evaluate", {}).get("deps", {}).get(model_dir)
    written = candidate_tags.get(lineage.tag_key(lineage.OUT_TAG, model_dir))
    if evaluated and written and evaluated != written:
        return (
            f"the evaluation read {model_dir} with DVC hash {evaluated}, but the candidate version "
            f"holds {written}: rerun `dvc repro evaluate`"
        )
    return None


def evaluate_champion(params, version: str):
    """Score the champion on the gate with the evaluation stage's own code and settings."""
    from components.evaluation.session import evaluate

    cfg = params.promote
    eval_cfg = params.evaluate.model_copy(
        update={
            "models": {"champion": f"models:/{params.tracking.registered_model}/{version}"},
            "benchmarks": {cfg.gate_benchmark: params.evaluate.benchmarks[cfg.gate_benchmark]},
            "modes": [cfg.gate_mode],
        }
    )
    result = evaluate(
        eval_cfg, params.episode, cfg.champion_eval_dir, trust_remote_code=params.model.trust_remote_code
    )
    return result.metrics


def _rollback(params) -> dict:
    import mlflow
    from mlflow import MlflowClient

    from components import registry

    left, restored = registry.rollback(MlflowClient(), params.tracking.registered_model)
    mlflow.set_tags(
        {
            "mgpo.promotion.action": "rollback",
            "mgpo.promotion.left": left,
            "mgpo.promotion.restored": restored,
        }
    )
    name = params.tracking.registered_model
    print(f"promote: rolled back {name}@{registry.CHAMPION} from version {left} to version {restored}")
    return {"action": "rollback", "left": left, "champion": restored}


def _decide(params) -> dict:
    import mlflow
    from mlflow import MlflowClient

    from components import lineage, registry

    cfg, name = params.promote, params.tracking.registered_model
    root = Path.cwd()
    client = MlflowClient()
    # A declared DVC output: it must exist even when there is no champion to score.
    Path(cfg.champion_eval_dir).mkdir(parents=True, exist_ok=True)
    finalized = lineage.finalize_all(client, root)
    mlflow.set_tag("mgpo.promotion.finalized_stages", ",".join(s for s, r in finalized.items() if r))

    metrics_path = Path(params.paths.eval_dir) / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"evaluation metrics {metrics_path} not found (run `mgpo evaluate` first)")
    metrics = json.loads(metrics_path.read_text())
    gate_path = params.evaluate.benchmarks[cfg.gate_benchmark]
    expected = expected_questions(gate_path, params.evaluate.max_samples, cfg.gate_mode)
    gate = {
        "benchmark": cfg.gate_benchmark,
        "mode": cfg.gate_mode,
        "metric": cfg.gate_metric,
        "expected_questions": expected,
    }

    cand_v = registry.alias_version(client, name, registry.CANDIDATE)
    champ_v = registry.alias_version(client, name, registry.CHAMPION)
    if cand_v is None:
        candidate = None
        mismatch = f"no version of {name!r} holds the {registry.CANDIDATE!r} alias (run `mgpo rl`)"
    else:
        candidate = figure_from_metrics(
            metrics, cfg.candidate, params, expected, str(cand_v.version), str(metrics_path)
        )
        mismatch = candidate_mismatch(root, params, cand_v.tags)

    parent = None
    if cfg.parent:  # scored in the same evaluation as the candidate; missing counts as incomplete
        parent = figure_from_metrics(metrics, cfg.parent, params, expected, None, str(metrics_path))
        if parent is None:
            parent = registry.GateFigure(None, 0, expected, None, str(metrics_path), cfg.parent)

    champion = None
    if champ_v is not None:
        if cand_v is not None and str(champ_v.version) == str(cand_v.version):
            champion = registry.GateFigure(
                candidate.value if candidate else None,
                candidate.evaluated if candidate else 0,
                expected,
                str(champ_v.version),
                "the candidate itself",
                "champion",
            )
        else:
            champ_metrics = evaluate_champion(params, str(champ_v.version))
            champion = figure_from_metrics(
                champ_metrics, "champion", params, expected, str(champ_v.version), cfg.champion_eval_dir
            )
            if champion is None:
                champion = registry.GateFigure(
                    None, 0, expected, str(champ_v.version), cfg.champion_eval_dir, "champion"
                )

    if mismatch:
        decision = registry.Decision(
            False, "incomplete", mismatch, candidate, champion, cfg.min_improvement, parent
        )
    else:
        rolled_back = cand_v is not None and registry.ROLLED_BACK_TAG in cand_v.tags
        decision = registry.decide(
            candidate, champion, cfg.min_improvement, parent=parent, candidate_rolled_back=rolled_back
        )
    if decision.promote:
        registry.promote(client, name, str(cand_v.version), str(champ_v.version) if champ_v else None)
    record = registry.decision_record(decision, gate, str(cand_v.version) if cand_v else None)
    record["champion_version"] = (
        str(cand_v.version) if decision.promote else (str(champ_v.version) if champ_v else None)
    )
    if cand_v is not None:
        registry.tag_decision(client, name, str(cand_v.version), record)
    registry.write_json_atomic(params.paths.promotion, record)

    mlflow.log_dict(record, "promotion.json")
    mlflow.set_tags(
        {f"mgpo.promotion.{k}": str(record[k]) for k in ("outcome", "reason", "champion_version")}
    )
    for name_, comparison in record["comparisons"].items():  # parent, champion
        if comparison is not None:
            who = comparison["model"] if name_ == "parent" else f"version {comparison['version']}"
            mlflow.set_tags(
                {
                    f"mgpo.promotion.vs_{name_}": who,
                    f"mgpo.promotion.vs_{name_}.beaten": str(comparison["beaten"]),
                }
            )
    keys = ("promoted", "candidate_value", "champion_value", "delta", "parent_value", "parent_delta")
    numbers = {k: record[k] for k in keys}
    mlflow.log_metrics({k: float(v) for k, v in numbers.items() if v is not None})
    verb = "promoted" if decision.promote else "kept"
    print(f"promote: {verb} ({decision.outcome}): {decision.reason}")
    print(f"promote: {name}@{registry.CHAMPION} is version {record['champion_version']}")
    return record


@flow(name="promote")
def promote_flow(
    params_path: ParamsPath = "params.yaml", overrides: list[str] | None = None, rollback: bool = False
) -> dict:
    from components.tracking import stage_run

    params = params_for(params_path, overrides)
    tags = {"mgpo.promotion.action": "rollback" if rollback else "gate"}
    sections = {"promote": params.promote, "tracking": params.tracking}
    with stage_run("promote", params.tracking, sections, tags=tags):
        return _rollback(params) if rollback else _decide(params)


def run(params_path: ParamsPath, overrides: list[str], rollback: bool = False, **_: object) -> int:
    import sys

    from components.registry import RegistryError

    params_for(params_path, overrides)  # invalid params fail here, before Prefect starts
    try:
        promote_flow(params_path, overrides, rollback=rollback)
    except RegistryError as exc:
        print(f"mgpo promote: {exc}", file=sys.stderr)
        return 1
    return 0
