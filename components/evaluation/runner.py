"""Evaluation runner: models x benchmarks x modes, through the shared `Episode`, resumable.

`evaluate(...)` plans every (model, benchmark, mode) group, skips the views already in
`predictions.jsonl` with the same fingerprint, cuts the rest into fixed chunks of
`evaluate.batch_size` views (the same chunks whatever the number of workers, so serial and Ray
runs batch, and therefore decode, identically), runs each chunk's episodes with an engine
(`components.engines`), and appends one prediction per view as soon as its chunk finishes.
Prompts, boxes, crops and scoring all come from `components.episode`; nothing is re-implemented.

Modes: `direct` (one turn with the choices), `mgpo` (the episode, `episode.max_turns` turns),
`oracle` (the environment writes turn 1 from the target boxes; records without target boxes
are left out of this mode, and a benchmark with none has no oracle entry).

Bad input never stops a run: a view whose image does not decode, or whose episode or engine
call fails, becomes a wrong prediction with `error` set; garbage text is wrong with `reason`
saying why (no `\\boxed{}`, a boxed answer naming no option, cut at max_new_tokens).

A prediction row holds: key, fingerprint, model, benchmark, mode, id, group, cycle, repeat,
order (shown position -> published option index), category, question, options (as shown),
answer (letter as shown), prediction, extracted, correct, answered, reason, error, n_options,
num_turns (model turns), tokens (generated), seconds (chunk wall time per view), truncated,
width, height, target_boxes, target_size (record meta), box_valid / iou / coverage / crop_hit
(turn 1; None in direct mode or without targets), boxes (the box of every turn that the
environment answered with an image), turns (prompt and response text of every model turn).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from components.config import EpisodeConfig, EvaluateConfig
from components.data.parquet import read_records
from components.evaluation.predictions import PredictionStore, prediction_key
from components.evaluation.views import View, fingerprint, views_of

MODES = ("direct", "mgpo", "oracle")
# Episode params that only shape the RL reward, never the answer or its correctness.
REWARD_TERMS = {"format_reward", "grounding_reward"}


@dataclass(frozen=True)
class Chunk:
    """A fixed batch of views of one (model, benchmark, mode) group: the unit of work."""

    model: str
    benchmark: str
    mode: str
    fingerprint: str
    views: tuple[View, ...]
    seed: int
    """Sampling seed of this chunk (derived from evaluate.seed and the chunk's first view)."""


@dataclass(frozen=True)
class WorkerSettings:
    """Everything a worker needs besides its engine (picklable, sent to Ray actors)."""

    episode: EpisodeConfig
    temperature: float
    max_image_pixels: int | None = None


def first_view_budget(processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) of the model's image processor: the first view must be what the
    processor would produce itself, or boxes would be read in the wrong frame."""
    ip = getattr(processor, "image_processor", processor)
    size = getattr(ip, "size", None) or {}
    lo = size.get("shortest_edge") or getattr(ip, "min_pixels", None)
    hi = size.get("longest_edge") or getattr(ip, "max_pixels", None)
    if not lo or not hi:
        raise ValueError(f"image processor {type(ip).__name__} states no min/max pixels")
    return int(lo), int(hi)


def load_engine(
    kind: str, path: str, device: str = "auto", trust_remote_code: bool = False, max_images: int = 8
):
    """(engine, first-view budget) for a resolved model folder or hub id."""
    if kind == "vllm":
        from components.engines.vllm_engine import VLLMEngine

        engine = VLLMEngine.from_pretrained(path, trust_remote_code=trust_remote_code, max_images=max_images)
    else:
        import torch

        from components.engines.transformers_engine import TransformersEngine

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = "bfloat16" if device == "cuda" else "float32"
        engine = TransformersEngine.from_pretrained(
            path, device=device, dtype=dtype, trust_remote_code=trust_remote_code
        )
    return engine, first_view_budget(engine.processor)


# ------------------------------------------------------------------------------ one chunk


def _text_of(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join("<image>" if c.get("type") == "image" else c.get("text", "") for c in content)


def _turn_texts(messages: list[dict]) -> list[dict]:
    """Each model turn with the context text that preceded it since the previous model turn."""
    out, pending = [], []
    for m in messages:
        if m["role"] == "assistant":
            out.append({"prompt": "\n\n".join(pending), "response": _text_of(m)})
            pending = []
        else:
            pending.append(f"[{m['role']}] {_text_of(m)}")
    return out


def _base_row(chunk: Chunk, view: View) -> dict:
    rec = view.record
    return {
        "key": prediction_key(
            chunk.model, chunk.benchmark, chunk.mode, view.source_id, view.cycle, view.repeat
        ),
        "fingerprint": chunk.fingerprint,
        "model": chunk.model,
        "benchmark": chunk.benchmark,
        "mode": chunk.mode,
        "id": view.source_id,
        "group": view.group,
        "cycle": view.cycle,
        "repeat": view.repeat,
        "order": list(view.order),
        "category": rec.category,
        "question": rec.question,
        "options": list(rec.options),
        "answer": rec.answer,
        "n_options": len(rec.options),
        "width": rec.width,
        "height": rec.height,
        "target_boxes": [list(map(float, b)) for b in rec.target_boxes],
        "target_size": (rec.meta or {}).get("target_size"),
        "prediction": None,
        "extracted": None,
        "correct": False,
        "answered": False,
        "reason": None,
        "error": None,
        "num_turns": 0,
        "tokens": 0,
        "seconds": 0.0,
        "truncated": False,
        "box_valid": None,
        "iou": None,
        "coverage": None,
        "crop_hit": None,
        "boxes": [],
        "turns": [],
    }


def error_row(chunk: Chunk, view: View, error: str) -> dict:
    row = _base_row(chunk, view)
    row["error"] = error
    row["reason"] = f"error: {error}"
    if chunk.mode != "direct":
        row["box_valid"] = False
    return row


def result_row(chunk: Chunk, view: View, result, seconds: float) -> dict:
    """A prediction from a finished EpisodeResult."""
    row = _base_row(chunk, view)
    d = result.to_dict()
    reward = result.reward
    row.update(
        prediction=reward.letter,
        extracted=reward.extracted,
        correct=reward.accuracy == 1.0,
        answered=reward.letter is not None,
        num_turns=sum(1 for t in result.turns if not t.by_env),
        tokens=int(d["generated_tokens"]),
        seconds=seconds,
        truncated=bool(d["truncated"]),
        turns=_turn_texts(result.messages),
        invalid_turn=d["invalid_turn"],
    )
    if chunk.mode != "direct":
        first = result.turns[0]
        row.update(box_valid=bool(result.box_valid), iou=result.iou, crop_hit=result.crop_hit)
        row["coverage"] = first.coverage
        # An invalid box is a miss for IoU and crop-hit when the record has a target to hit.
        if rec_has_targets(view) and not result.box_valid:
            row.update(iou=0.0, coverage=0.0, crop_hit=False)
        row["boxes"] = [
            {
                "turn": t["index"],
                "by_env": t["by_env"],
                "form": t["form"],
                "seen": _floats(t["box_seen"]),
                "orig": _floats(t["box_orig"]),
                "valid": t["valid"],
                "reason": t["reason"],
                "iou": t["iou"],
                "coverage": t["coverage"],
            }
            # Every turn but the last was followed by the environment's image (the crop, or the
            # first view again): those are the boxes that mattered. The final turn answers.
            for t in d["turns"][:-1]
        ]
    if not row["correct"]:
        row["reason"] = _why_wrong(reward, row["truncated"])
    return row


def rec_has_targets(view: View) -> bool:
    return bool(view.record.target_boxes)


def _floats(box) -> list[float] | None:
    return None if box is None else [float(v) for v in box]


def _why_wrong(reward, truncated: bool) -> str:
    if reward.extracted is None:
        why = "no \\boxed{} answer in the final turn"
    elif reward.letter is None:
        why = f"boxed answer {reward.extracted[:80]!r} names no option"
    else:
        why = f"chose {reward.letter}"
    return why + (" (cut at max_new_tokens)" if truncated else "")


def run_chunk(
    engine, budget: tuple[int, int], chunk: Chunk, settings: WorkerSettings, templates
) -> list[dict]:
    """Run one chunk's episodes with `engine`; one prediction row per view, never raising for
    a bad sample."""
    from components.engines import tokens
    from components.engines.base import SamplingParams, run_episodes
    from components.episode import Episode

    # vision tokens end an episode as an invalid turn (a sampler that is not ours, vLLM's, may
    # draw them; the transformers engine never does)
    processor = getattr(engine, "processor", None)
    forbidden = tokens.vision_token_ids(processor.tokenizer) if processor is not None else ()
    episodes, live, rows = [], [], [None] * len(chunk.views)
    for i, view in enumerate(chunk.views):
        try:
            episodes.append(
                Episode(
                    view.record,
                    settings.episode,
                    templates,
                    mode=chunk.mode,
                    first_view=budget,
                    max_image_pixels=settings.max_image_pixels,
                    forbidden_ids=forbidden,
                )
            )
            live.append(i)
        except Exception as exc:
            rows[i] = error_row(chunk, view, f"{type(exc).__name__}: {exc}")
    params = SamplingParams(
        max_new_tokens=settings.episode.max_new_tokens, temperature=settings.temperature, seed=chunk.seed
    )
    start = time.perf_counter()
    try:
        results = run_episodes(engine, episodes, params, batch_size=max(1, len(episodes)))
        per_view = (time.perf_counter() - start) / max(1, len(episodes))
        for i, result in zip(live, results, strict=True):
            rows[i] = result_row(chunk, chunk.views[i], result, per_view)
    except Exception as exc:
        engine.reset()
        batch_error = f"{type(exc).__name__}: {exc}"
        for i in live:
            one = time.perf_counter()
            try:
                solo = Episode(
                    chunk.views[i].record,
                    settings.episode,
                    templates,
                    mode=chunk.mode,
                    first_view=budget,
                    max_image_pixels=settings.max_image_pixels,
                    forbidden_ids=forbidden,
                )
                (result,) = run_episodes(engine, [solo], params, batch_size=1)
                rows[i] = result_row(chunk, chunk.views[i], result, time.perf_counter() - one)
            except Exception as solo_exc:
                engine.reset()
                rows[i] = error_row(chunk, chunk.views[i], f"engine: {type(solo_exc).__name__}: {solo_exc}")
                rows[i]["batch_error"] = batch_error
    return rows


# ------------------------------------------------------------------------------ planning


@dataclass
class Group:
    """One (model, benchmark, mode) with its fingerprint and what this run evaluated."""

    model: str
    benchmark: str
    mode: str
    fingerprint: str
    views_total: int = 0
    views_done_before: int = 0
    views_run: int = 0
    wall_seconds: float = 0.0
    skipped_no_target: int = 0
    keys: list[str] = field(default_factory=list)
    """Every planned view's key (done before or run now): what the metrics summarize."""


def chunk_seed(seed: int, first_key: str) -> int:
    return zlib.crc32(f"{seed}:{first_key}".encode())


def plan_chunks(
    group: Group,
    records: Iterable,
    cfg: EvaluateConfig,
    done: Callable[[str], bool],
) -> Iterator[Chunk]:
    """Fixed chunks of `cfg.batch_size` views over all views (done views are dropped from
    their chunk, never moved to another: batching stays the same on resume)."""
    batch: list[View] = []

    def flush():
        todo = [
            v
            for v in batch
            if not done(
                prediction_key(group.model, group.benchmark, group.mode, v.source_id, v.cycle, v.repeat)
            )
        ]
        group.views_done_before += len(batch) - len(todo)
        if todo:
            first = prediction_key(
                group.model, group.benchmark, group.mode, batch[0].source_id, batch[0].cycle, batch[0].repeat
            )
            return Chunk(
                group.model,
                group.benchmark,
                group.mode,
                group.fingerprint,
                tuple(todo),
                chunk_seed(cfg.seed, first),
            )
        return None

    for record in records:
        if group.mode == "oracle" and not record.target_boxes:
            group.skipped_no_target += 1
            continue
        for view in views_of(record, cfg.seed, cfg.shuffle_options, cfg.circular, cfg.samples):
            group.views_total += 1
            group.keys.append(
                prediction_key(
                    group.model, group.benchmark, group.mode, view.source_id, view.cycle, view.repeat
                )
            )
            batch.append(view)
            if len(batch) == cfg.batch_size:
                chunk = flush()
                batch = []
                if chunk:
                    yield chunk
    if batch:
        chunk = flush()
        if chunk:
            yield chunk


def group_fingerprint(
    model_hash: str, bench_hash: str, mode: str, cfg: EvaluateConfig, episode: EpisodeConfig, extra: dict
) -> str:
    # What decides a prediction. Not included: max_samples and samples (more of them only add
    # views), batch_size and workers (chunks are fixed by batch_size; a new batch_size re-plans
    # the chunks but finished views stay valid up to float noise of padding).
    return fingerprint(
        model=model_hash,
        benchmark=bench_hash,
        mode=mode,
        seed=cfg.seed,
        shuffle=cfg.shuffle_options,
        circular=cfg.circular,
        temperature=cfg.temperature,
        engine=cfg.engine,
        episode=episode.model_dump(mode="json", exclude=REWARD_TERMS),
        **extra,
    )


@dataclass
class Outcome:
    groups: list[Group] = field(default_factory=list)
    skipped_models: dict[str, str] = field(default_factory=dict)


def records_of(path: str, max_samples: int):
    return read_records(path, limit=max_samples or None)


def run_groups(
    groups: list[Group],
    bench_paths: dict[str, str],
    cfg: EvaluateConfig,
    store: PredictionStore,
    execute: Callable[[Iterator[Chunk]], Iterator[list[dict]]],
    progress: Callable[[str], None] = print,
) -> None:
    """Evaluate each group's missing views with `execute` (serial or Ray), appending rows."""
    for group in groups:
        chunks = plan_chunks(
            group, records_of(bench_paths[group.benchmark], cfg.max_samples), cfg, store.__contains__
        )
        start = time.perf_counter()
        for rows in execute(chunks):
            store.extend(rows)
            group.views_run += len(rows)
        group.wall_seconds = time.perf_counter() - start
        progress(
            f"evaluate: {group.model} / {group.benchmark} / {group.mode}: {group.views_run} views run, "
            f"{group.views_done_before} resumed, {group.wall_seconds:.1f}s"
            + (
                f", {group.skipped_no_target} records without target boxes left out"
                if group.skipped_no_target
                else ""
            )
        )


def serial_executor(engine, budget, settings: WorkerSettings, templates):
    def execute(chunks: Iterator[Chunk]) -> Iterator[list[dict]]:
        for chunk in chunks:
            yield run_chunk(engine, budget, chunk, settings, templates)

    return execute


def bench_path(path: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"benchmark file {path} not found (run `mgpo prepare`?)")
    return p
