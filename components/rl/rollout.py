"""Rollouts for GRPO: `group_size` episodes per record through the shared engine, with faults
isolated to the rollout that caused them.

The episode (`components.episode.Episode`) owns the protocol, prompts, boxes, crops and the
reward; the engine (`components.engines`) owns generation. This module only groups them:
- an episode that cannot be built (an unreadable image, a size that disagrees with its
  header) is dropped with its reason;
- when a batched engine call raises, the batch is rerun in halves from fresh episodes
  (recursively), so only an episode that raises again on its own is dropped (with its reason)
  and the rest are kept. A rerun resamples its episodes, so it is never silent: each failed
  batch is a `Failure` of kind "rerun" with its reason, logged as a warning and counted by the
  trainer (`retried_batches`), beside the dropped rollouts (`failed_rollouts`);
- what is left is returned with the failures; the trainer skips a group with fewer than two
  rollouts (a GRPO advantage needs a group).
The engine never samples a vision token (`components.engines.tokens.forbid_vision_tokens`), the
failure that used to trigger these reruns (a sampled `<|image_pad|>` broke the next turn's M-RoPE).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from components.engines.base import Engine, SamplingParams, run_episodes
from components.episode import Episode, EpisodeResult

log = logging.getLogger(__name__)


@dataclass
class Rollout:
    group: int
    """Index of the record in the step's list (the GRPO group id)."""
    result: EpisodeResult


@dataclass
class Failure:
    group: int
    record_id: str
    reason: str
    kind: str = "dropped"
    """dropped: the rollout is lost; rerun: a batch holding it raised and was rerun in halves."""

    def describe(self) -> str:
        if self.kind == "rerun":
            return f"batch with record {self.record_id} rerun in halves: {self.reason}"
        return f"record {self.record_id} dropped: {self.reason}"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def run_groups(
    engine: Engine,
    records: Sequence,
    group_size: int,
    make_episode: Callable[[object], Episode],
    params: SamplingParams,
    batch_size: int,
) -> tuple[list[Rollout], list[Failure]]:
    """Run `group_size` episodes of every record; return the finished rollouts and the failures."""
    jobs: list[tuple[int, object]] = []
    failures: list[Failure] = []
    episodes: list[Episode] = []
    for g, record in enumerate(records):
        for _ in range(group_size):
            try:
                episodes.append(make_episode(record))
                jobs.append((g, record))
            except Exception as exc:
                failures.append(Failure(g, str(getattr(record, "id", g)), _reason(exc)))
    rollouts: list[Rollout] = []
    for start in range(0, len(episodes), batch_size):
        chunk = list(range(start, min(start + batch_size, len(episodes))))
        _run_isolating(
            engine, chunk, [episodes[i] for i in chunk], jobs, make_episode, params, rollouts, failures
        )
    for f in failures:
        log.warning("rollout %s", f.describe())
    return rollouts, failures


def _run_isolating(engine, chunk, episodes, jobs, make_episode, params, rollouts, failures) -> None:
    """Run a batch; when it raises, rerun each half from fresh episodes (bisection), so that one
    faulty episode costs about 2 log2(batch) extra batched runs, not a batch of single runs."""
    try:
        results = run_episodes(engine, episodes, params, batch_size=len(episodes))
        rollouts += [Rollout(jobs[i][0], r) for i, r in zip(chunk, results, strict=True)]
        return
    except Exception as exc:
        engine.reset()
        if len(chunk) == 1:
            g, record = jobs[chunk[0]]
            failures.append(Failure(g, str(getattr(record, "id", g)), _reason(exc)))
            return
        g, record = jobs[chunk[0]]
        failures.append(
            Failure(g, str(getattr(record, "id", g)), f"{len(chunk)} episodes: {_reason(exc)}", "rerun")
        )
    half = len(chunk) // 2
    for part in (chunk[:half], chunk[half:]):
        kept, fresh = [], []
        for i in part:
            g, record = jobs[i]
            try:
                fresh.append(make_episode(record))
                kept.append(i)
            except Exception as exc:
                failures.append(Failure(g, str(getattr(record, "id", g)), _reason(exc)))
        if kept:
            _run_isolating(engine, kept, fresh, jobs, make_episode, params, rollouts, failures)


def usable_groups(
    rollouts: Sequence[Rollout], num_groups: int, min_size: int = 2
) -> tuple[list[Rollout], list[int]]:
    """Rollouts of groups with at least `min_size` members, and the skipped group ids."""
    sizes: dict[int, int] = {}
    for r in rollouts:
        sizes[r.group] = sizes.get(r.group, 0) + 1
    skipped = [g for g in range(num_groups) if sizes.get(g, 0) < min_size]
    return [r for r in rollouts if sizes[r.group] >= min_size], skipped
