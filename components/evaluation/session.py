"""One evaluation end to end: plan, run (serial or Ray), then metrics.json, plots and report.html.

`evaluate(cfg, episode, eval_dir, ...)` writes into `eval_dir` (params `paths.eval_dir`):
`predictions.jsonl` (resumable), `metrics.json` (model -> benchmark -> mode -> metrics; see
`components.evaluation.metrics`), `plots/*.png` and `report.html`. The Prefect flow
`flows/evaluate.py` wraps it in an MLflow run.

Models: every `evaluate.models` entry, or the names asked for. A configured local folder that
does not exist yet (models/sft before `mgpo sft`) is skipped with the reason printed and
recorded; a model asked for by name must exist. predictions.jsonl keeps the rows of configured
models not evaluated this time, so `mgpo evaluate --model rl` keeps the base model's results.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from components.config import EpisodeConfig, EvaluateConfig, ParamsError
from components.data.parquet import read_records, sha256_file
from components.evaluation.metrics import compute_metrics
from components.evaluation.plots import make_plots
from components.evaluation.predictions import PredictionStore
from components.evaluation.report import build_report, select_cards
from components.evaluation.runner import (
    Group,
    WorkerSettings,
    bench_path,
    group_fingerprint,
    load_engine,
    run_groups,
    serial_executor,
)
from components.evaluation.views import hash_path
from components.models.loading import ModelNotFound, resolve_model

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
REPORT = "report.html"
PLOTS = "plots"


class EvaluationError(ParamsError):
    """The evaluation cannot start; the message names the params key or file at fault."""


def check_inputs(cfg: EvaluateConfig, only: list[str] | None) -> None:
    """Fail before any work when a model or benchmark named in params is missing."""
    select_models(cfg, only)
    if not cfg.benchmarks:
        raise EvaluationError("evaluate.benchmarks is empty: name at least one canonical parquet")
    for name, path in cfg.benchmarks.items():
        if not Path(path).is_file():
            raise EvaluationError(
                f"evaluate.benchmarks.{name}: benchmark file {path} not found (run `mgpo prepare`?)"
            )


@dataclass
class Result:
    metrics: dict
    groups: list[Group]
    skipped_models: dict[str, str]
    files: dict[str, Path]
    rows: list[dict] = field(default_factory=list)


def select_models(cfg: EvaluateConfig, only: list[str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """(name -> resolved path or hub id, name -> why skipped)."""
    names = list(only) if only else list(cfg.models)
    unknown = [n for n in names if n not in cfg.models]
    if unknown:
        raise EvaluationError(f"evaluate.models has no model {unknown} (known: {sorted(cfg.models)})")
    if not names:
        raise EvaluationError("evaluate.models is empty: name at least one model")
    chosen, skipped = {}, {}
    for name in names:
        ref = cfg.models[name]
        # "models/sft" could be a hub id; it is a local path when its first folder exists here.
        looks_local = not ref.startswith("models:/") and (
            ref.startswith((".", "/")) or ref.count("/") != 1 or Path(ref.split("/")[0]).is_dir()
        )
        if looks_local and not Path(ref).exists():
            why = f"model folder {ref} not found (evaluate.models.{name}; build or train it first)"
            if only:
                raise EvaluationError(why)
            skipped[name] = why
            continue
        try:
            chosen[name] = resolve_model(ref)
        except ModelNotFound as exc:
            raise EvaluationError(f"evaluate.models.{name}: {exc}") from None
    if not chosen:
        raise EvaluationError(f"no model of evaluate.models can be evaluated: {skipped}")
    return chosen, skipped


def _model_hash(path: str) -> str:
    return hash_path(path) if Path(path).exists() else f"hub:{path}"


def _image_lookup(rows: list[dict], bench_paths: dict[str, str]) -> Callable[[str, str], bytes | None]:
    wanted: dict[str, set[str]] = {}
    for r in rows:
        wanted.setdefault(r["benchmark"], set()).add(r["id"])
    found: dict[tuple[str, str], bytes] = {}
    for bench, ids in wanted.items():
        if bench not in bench_paths or not Path(bench_paths[bench]).is_file():
            continue
        for rec in read_records(bench_paths[bench]):
            if rec.id in ids:
                found[(bench, rec.id)] = bytes(rec.image_bytes)
    return lambda bench, sid: found.get((bench, sid))


def evaluate(
    cfg: EvaluateConfig,
    episode: EpisodeConfig,
    eval_dir: str | Path,
    *,
    only_models: list[str] | None = None,
    trust_remote_code: bool = False,
    progress: Callable[[str], None] = print,
) -> Result:
    eval_dir = Path(eval_dir)
    eval_dir.mkdir(parents=True, exist_ok=True)
    models, skipped = select_models(cfg, only_models)
    for name, why in skipped.items():
        progress(f"evaluate: skipping model {name}: {why}")
    bench_hashes = {}
    for name, path in cfg.benchmarks.items():
        try:
            bench_hashes[name] = sha256_file(bench_path(path))
        except FileNotFoundError as exc:
            raise EvaluationError(f"evaluate.benchmarks.{name}: {exc}") from None
    if not bench_hashes:
        raise EvaluationError("evaluate.benchmarks is empty: name at least one canonical parquet")

    groups: list[Group] = []
    for model, path in models.items():
        mhash = _model_hash(path)
        for bench, bhash in bench_hashes.items():
            for mode in cfg.modes:
                fp = group_fingerprint(mhash, bhash, mode, cfg, episode, {})
                groups.append(Group(model, bench, mode, fp))
    current = {(g.model, g.benchmark, g.mode): g.fingerprint for g in groups}

    def keep(row: dict) -> bool:
        k = (row.get("model"), row.get("benchmark"), row.get("mode"))
        if k in current:
            return row.get("fingerprint") == current[k]
        # Rows of configured models not evaluated now stay (their own run made them).
        return row.get("model") in cfg.models and k[1] in cfg.benchmarks and k[2] in cfg.modes

    settings = WorkerSettings(episode=episode, temperature=cfg.temperature)
    with PredictionStore.open(eval_dir / PREDICTIONS, keep=keep) as store:
        for model, path in models.items():
            spec = {
                "kind": cfg.engine,
                "path": path,
                "device": cfg.device,
                "trust_remote_code": trust_remote_code,
                "max_images": episode.max_turns + 1,  # the first view and one crop per later turn
            }
            mine = [g for g in groups if g.model == model]
            start = time.perf_counter()
            if cfg.workers > 0:
                from components.evaluation.parallel import RayPool

                pool = RayPool(cfg.workers, spec, settings)
                progress(
                    f"evaluate: {model}: {cfg.workers} Ray workers ready in {time.perf_counter() - start:.1f}s"
                )
                try:
                    run_groups(mine, cfg.benchmarks, cfg, store, pool.execute, progress)
                finally:
                    pool.close()
            else:
                from components.prompts import load_templates

                engine, budget = load_engine(**spec)
                templates = load_templates(episode.templates, episode.template)
                progress(f"evaluate: {model}: engine ready in {time.perf_counter() - start:.1f}s")
                run_groups(
                    mine,
                    cfg.benchmarks,
                    cfg,
                    store,
                    serial_executor(engine, budget, settings, templates),
                    progress,
                )
                del engine
        planned = {k for g in groups for k in g.keys}
        # predictions.jsonl holds exactly what the metrics summarize (e.g. after max_samples shrank).
        store.retain(lambda r: r["key"] in planned or (r["model"], r["benchmark"], r["mode"]) not in current)
        rows = store.rows()

    throughput = {
        (g.model, g.benchmark, g.mode): {"views": g.views_run, "wall_seconds": g.wall_seconds} for g in groups
    }
    metrics = compute_metrics(rows, throughput)
    metrics_path = eval_dir / METRICS
    tmp = metrics_path.with_name(METRICS + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    tmp.replace(metrics_path)
    plots = make_plots(rows, eval_dir / PLOTS)
    subtitle = (
        f"models: {', '.join(sorted({r['model'] for r in rows}))}; benchmarks: {', '.join(cfg.benchmarks)}; "
        f"modes: {', '.join(cfg.modes)}; options {'shuffled (seed ' + str(cfg.seed) + ')' if cfg.shuffle_options else 'in published order'}"
        f"{'; circular' if cfg.circular else ''}; "
        f"{'greedy' if cfg.temperature == 0 else f'temperature {cfg.temperature}, {cfg.samples} samples'}; "
        f"max_turns {episode.max_turns}; template {episode.template}"
        + (f"; skipped: {skipped}" if skipped else "")
    )
    cards = select_cards(rows, cfg.report_cards)
    report = build_report(
        rows,
        metrics,
        eval_dir / REPORT,
        _image_lookup(cards, cfg.benchmarks),
        (episode.crop_min_pixels, episode.crop_max_pixels),
        cfg.report_cards,
        plots,
        subtitle,
    )
    files = {"predictions": eval_dir / PREDICTIONS, "metrics": metrics_path, "report": report}
    files.update({p.stem: p for p in plots})
    return Result(metrics, groups, skipped, files, rows)
