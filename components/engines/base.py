"""The generation-engine interface and the driver that runs episodes through an engine.

An engine generates the next model turn for a batch of episodes (`components.episode.Episode`):
it renders each episode's `messages` + `images`, samples greedily (temperature 0) or at a
temperature with a seed, stops at `<|im_end|>` or `max_new_tokens`, and returns one
`Generation` per episode (sampled ids, their log-probs, and the ids it placed before them).
Engines may keep per-episode state (a KV cache) between calls; a call's episode list is the
working set, so an episode missing from a call is forgotten.

`run_episodes` drives episodes in batches of `batch_size`: every active episode of a batch
advances one turn per engine call, finished ones drop out, and the next batch starts when the
current one is done. Implementations: `transformers_engine.TransformersEngine` (CPU or one GPU);
tests use a scripted engine; the verl agent loop drives `Episode` itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from components.episode import Episode, EpisodeResult, Generation


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 48
    """Generated tokens per turn at most (params episode.max_new_tokens)."""
    temperature: float = 0.0
    """0 = greedy; otherwise sample from softmax(logits / temperature)."""
    seed: int | None = None
    """Seed of the sampling generator (a batch's draws depend on it and on the batch's order)."""

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


class Engine(ABC):
    """Generates one turn for each of a batch of episodes."""

    @abstractmethod
    def generate(self, episodes: Sequence[Episode], params: SamplingParams) -> list[Generation]:
        """One Generation per episode, in order. Log-probs are under the sampling
        distribution: softmax(logits / temperature), or softmax(logits) when greedy."""

    def reset(self) -> None:  # noqa: B027 - optional hook; stateless engines need nothing
        """Forget per-episode state (caches)."""


def run_episodes(
    engine: Engine,
    episodes: Sequence[Episode],
    params: SamplingParams,
    batch_size: int = 16,
    on_result: Callable[[EpisodeResult], None] | None = None,
) -> list[EpisodeResult]:
    """Run every episode to the end; results in the input order.

    Episodes advance together in batches of `batch_size`; a finished episode drops out of its
    batch's next engine call. `on_result` is called as each episode finishes (progress, logs).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    results: list[EpisodeResult | None] = [None] * len(episodes)
    for start in range(0, len(episodes), batch_size):
        batch = list(range(start, min(start + batch_size, len(episodes))))
        active = [i for i in batch if not episodes[i].done]
        while active:
            gens = engine.generate([episodes[i] for i in active], params)
            if len(gens) != len(active):
                raise RuntimeError(f"engine returned {len(gens)} generations for {len(active)} episodes")
            for i, gen in zip(active, gens, strict=True):
                episodes[i].step(gen)
            for i in active:
                if episodes[i].done:
                    results[i] = episodes[i].result()
                    if on_result is not None:
                        on_result(results[i])
            active = [i for i in active if not episodes[i].done]
        for i in batch:
            if results[i] is None:  # already done when handed in
                results[i] = episodes[i].result()
        engine.reset()
    return [r for r in results if r is not None]
