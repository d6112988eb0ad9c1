"""Stage `prepare`: build every dataset `params.yaml` names, as verl-ready parquet.

Default: the synthetic high-resolution benchmark (`prepare.synthetic`: train, val, test,
scale_sweep and test_4k splits) with its oracle self-check; then each real benchmark listed in
`prepare.benchmarks` (V* Bench, HR-Bench, MME-RealWorld from local files, or the hub when a path
is an `owner/name` id and the network is there). Output: `<paths.processed_dir>/<name>/` with
`<split>.parquet`, `manifest.json` and `contact_sheet.png`. One Prefect task per dataset, a progress
bar per split (components/progress.py: live on a terminal, a line every few seconds in a log), and one MLflow run logging the manifests, contact sheets and figures (rows,
seconds, images/s, skipped rows, oracle accuracies). The stage fails with the dataset's name
and reasons when its skipped share passes `prepare.max_skipped_fraction`.
Departure from the paper: the embedded default trains on synthetic data, not MME-RealWorld.

Run: `mgpo prepare` (DVC: `dvc repro prepare`), e.g. `mgpo prepare -S prepare.synthetic.train=64`.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._stage import ParamsPath, params_for


@task(name="build-synthetic", cache_policy=NO_CACHE)
def build_synthetic_task(prepare, processed_dir: str, views):
    from components.data.build import build_synthetic

    return build_synthetic(prepare, processed_dir, views)


@task(name="build-benchmark", cache_policy=NO_CACHE)
def build_benchmark_task(src, prepare, raw_dir: str, processed_dir: str):
    from components.data.build import build_benchmark

    return build_benchmark(src, prepare, raw_dir, processed_dir)


def metrics_of(result) -> dict[str, float]:
    """Flat MLflow metrics of one built dataset."""
    m = result.manifest
    name = result.name
    out = {
        f"{name}.seconds": round(result.seconds, 3),
        f"{name}.images_per_s": round(result.images_per_s, 3),
        f"{name}.skipped": len(m["skipped"]),
        f"{name}.skipped_fraction": m["skipped_fraction"],
    }
    for split, entry in m["splits"].items():
        out[f"{name}.{split}.rows"] = entry["rows"]
        out[f"{name}.{split}.mib"] = round(entry["bytes"] / 2**20, 3)
    oracle = m.get("oracle")
    if oracle:
        for scope, summary in [("all", oracle["overall"]), *oracle["splits"].items()]:
            for key in ("crop_accuracy", "first_view_accuracy", "first_view_argmax_accuracy", "chance"):
                if key in summary:
                    out[f"{name}.oracle.{scope}.{key}"] = summary[key]
        for size, summary in oracle["by_target_size"].get("scale_sweep", {}).items():
            for key in ("crop_accuracy", "first_view_accuracy"):
                out[f"{name}.oracle.size_{size}.{key}"] = summary[key]
    return out


def _log_dataset(result) -> None:
    import mlflow

    mlflow.log_artifact(str(result.out_dir / "manifest.json"), artifact_path=f"datasets/{result.name}")
    if result.contact_sheet is not None:
        mlflow.log_artifact(str(result.contact_sheet), artifact_path=f"datasets/{result.name}")
    mlflow.log_metrics(metrics_of(result))


@flow(name="prepare")
def prepare_flow(params_path: ParamsPath = "params.yaml", overrides: list[str] | None = None) -> dict:
    import mlflow

    from components.data.manifest import SkipThresholdError
    from components.data.oracle import Views
    from components.tracking import stage_run

    params = params_for(params_path, overrides)
    prepare, paths = params.prepare, params.paths
    views = Views(
        params.model.min_pixels,
        params.model.max_pixels,
        params.episode.crop_min_pixels,
        params.episode.crop_max_pixels,
        params.model.vision.patch_size,
    )
    sections = {"prepare": prepare, "views": views.__dict__, "paths": {"processed_dir": paths.processed_dir}}
    summary: dict[str, dict] = {}
    with stage_run("prepare", params.tracking, sections):
        names = [prepare.synthetic.name] + [b.name for b in prepare.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"prepare: dataset names must be unique, got {names}")
        results = [build_synthetic_task(prepare, paths.processed_dir, views)]
        _log_dataset(results[0])
        for src in prepare.benchmarks:
            try:
                result = build_benchmark_task(src, prepare, paths.raw_dir, paths.processed_dir)
            except SkipThresholdError:
                failed = Path(paths.processed_dir) / src.name / "manifest.json"
                if failed.is_file():
                    mlflow.log_artifact(str(failed), artifact_path=f"datasets/{src.name}")
                raise
            _log_dataset(result)
            results.append(result)
        for r in results:
            summary[r.name] = {
                "splits": {s: e["rows"] for s, e in r.manifest["splits"].items()},
                "skipped": len(r.manifest["skipped"]),
                "seconds": round(r.seconds, 1),
                "images_per_s": round(r.images_per_s, 2),
            }
            if "oracle" in r.manifest:
                o = r.manifest["oracle"]["overall"]
                summary[r.name]["oracle"] = {
                    k: o.get(k) for k in ("n", "crop_accuracy", "first_view_accuracy", "chance")
                }
    print(f"prepare: {json.dumps(summary)}")
    return summary


def run(params_path: ParamsPath, overrides: list[str], **_: object) -> int:
    import sys

    from components.data.loaders import SourceError
    from components.data.manifest import SkipThresholdError

    params_for(params_path, overrides)  # invalid params fail here, before Prefect starts
    try:
        prepare_flow(params_path, overrides)
    except (SkipThresholdError, SourceError) as exc:
        # Bad input, not a bug: one clear line (the Prefect and MLflow runs are marked failed).
        print(f"mgpo prepare: {exc}", file=sys.stderr)
        return 1
    return 0
