"""Flow `reevaluate-champion`: score the registry's champion on every configured benchmark.

The weekly deployment in prefect.yaml runs it. It evaluates `models:/<registered_model>/<v>`
(the version holding `champion` when the flow starts) on every `evaluate.benchmarks` entry in
every `evaluate.modes`, with the evaluation stage's own code and settings, into
`promote.reevaluate_dir` (outside DVC's outputs, so the nightly pipeline is not disturbed; the
evaluation's fingerprints make an unchanged champion on unchanged data free to re-score). The
figures go to an MLflow run and as tags `mgpo.eval.<benchmark>.<mode>.<metric>` on the version,
so a drift (new benchmark files, a changed episode) shows on the champion itself. With no
champion yet it records that and ends successfully.

Run: `python -m flows.reevaluate [--params params.yaml] [-S key=value]`; scheduled: prefect.yaml.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from prefect import flow

from flows._stage import ParamsPath, params_for

# The figures worth a tag on the version; everything else is in the MLflow run.
TAGGED = ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "n", "valid_box_ratio", "crop_hit_ratio")


def version_eval_tags(metrics: dict, model: str = "champion") -> dict[str, str]:
    tags = {}
    for bench, modes in metrics.get(model, {}).items():
        for mode, m in modes.items():
            for key in TAGGED:
                if key in m:
                    tags[f"mgpo.eval.{bench}.{mode}.{key}"] = str(m[key])
    return tags


@flow(name="reevaluate-champion")
def reevaluate_champion_flow(
    params_path: ParamsPath = "params.yaml", overrides: list[str] | None = None
) -> dict:
    import mlflow
    from mlflow import MlflowClient

    from components import registry
    from components.evaluation.session import check_inputs, evaluate
    from components.tracking import stage_run
    from flows.evaluate import flat_metrics

    params = params_for(params_path, overrides)
    name = params.tracking.registered_model
    with stage_run("reevaluate", params.tracking, {"evaluate": params.evaluate, "episode": params.episode}):
        client = MlflowClient()
        champ = registry.alias_version(client, name, registry.CHAMPION)
        if champ is None:
            mlflow.set_tag("mgpo.reevaluate", "no champion")
            print(f"reevaluate: {name} has no {registry.CHAMPION!r} version yet; nothing to evaluate")
            return {"champion": None}
        version = str(champ.version)
        mlflow.set_tag("mgpo.reevaluate.version", version)
        cfg = params.evaluate.model_copy(update={"models": {"champion": f"models:/{name}/{version}"}})
        check_inputs(cfg, None)  # every benchmark file present, before any model is loaded
        result = evaluate(
            cfg,
            params.episode,
            params.promote.reevaluate_dir,
            trust_remote_code=params.model.trust_remote_code,
        )
        items = list(flat_metrics(result.metrics).items())
        for i in range(0, len(items), 500):
            mlflow.log_metrics(dict(items[i : i + 500]))
        for path in result.files.values():
            mlflow.log_artifact(str(path))
        tags = version_eval_tags(result.metrics)
        tags["mgpo.eval.at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)
    print(f"reevaluate: {name} version {version}: {json.dumps(version_eval_tags(result.metrics))}")
    return {"champion": version, "metrics": result.metrics}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Score the registry's champion on every configured benchmark."
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "-S", "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE"
    )
    args = parser.parse_args(argv)
    from components.config import ParamsError

    try:
        params_for(args.params, args.overrides)
    except ParamsError as exc:
        print(f"reevaluate: {exc}", file=sys.stderr)
        return 2
    reevaluate_champion_flow(args.params, args.overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
