"""The `evaluate`, `promote`, `pipeline` and `science` sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.config.base import Section


class EvaluateConfig(Section):
    models: dict[str, str] = {}
    """Name -> bundle folder, Hugging Face id, or models:/<name>@<alias>."""
    benchmarks: dict[str, str] = {}
    """Name -> canonical parquet."""
    modes: list[Literal["direct", "mgpo", "oracle"]] = ["direct", "mgpo", "oracle"]
    """Evaluation protocols."""
    max_samples: int = Field(64, ge=0)
    """Questions per benchmark at most (0 = all)."""
    shuffle_options: bool = True
    """Shuffle option order with the seed."""
    seed: int = 0
    """Option-shuffle and sampling seed."""
    circular: bool = False
    """Every cyclic option order; right only if all are right."""
    samples: int = Field(1, ge=1)
    """Repeats per question (mean and std when > 1)."""
    temperature: float = Field(0.0, ge=0)
    """0 = greedy."""
    batch_size: int = Field(16, ge=1)
    """Episodes generated together."""
    workers: int = Field(0, ge=0)
    """Ray workers (0 = serial in this process)."""
    report_cards: int = Field(48, ge=0)
    """Sample cards in report.html per benchmark and mode at most."""
    engine: Literal["transformers", "vllm"] = "transformers"
    """Generation backend (vllm needs the gpu extra and a GPU)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the transformers engine runs (auto: cuda when available)."""

    @model_validator(mode="after")
    def _samples(self) -> EvaluateConfig:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("samples > 1 needs temperature > 0 (greedy repeats are identical)")
        return self


class PromoteConfig(Section):
    candidate: str = "rl"
    """Evaluate model name registered as the candidate."""
    parent: str = "sft"
    """Evaluate model name of the model the candidate was trained from; it must beat it too ("": no check)."""
    gate_benchmark: str = "synthetic_test"
    """Benchmark that decides promotion."""
    gate_mode: Literal["direct", "mgpo", "oracle"] = "mgpo"
    """Mode that decides promotion."""
    gate_metric: str = "accuracy"
    """Metric that decides promotion."""
    min_improvement: float = Field(0.0, ge=0)
    """The candidate must beat its parent and the champion by at least this (strictly: a tie never promotes)."""
    champion_eval_dir: str = "results/promote/champion"
    """Where the champion is scored on the gate (kept: an unchanged champion is not re-scored)."""
    reevaluate_dir: str = "results/champion"
    """Where the weekly re-evaluation scores the champion on every benchmark (outside DVC)."""


class PipelineConfig(Section):
    retries: int = Field(2, ge=0)
    """Retries of a stage after a transient failure (lock held, server hiccup, killed worker)."""
    retry_delay_s: float = Field(15, ge=0)
    """Seconds between those retries."""
    stage_timeout_s: float = Field(0, ge=0)
    """Stop a stage that runs longer than this (0: no limit)."""


class ScienceConfig(Section):
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    """Seeds of the sweep: each sets sft.seed and rl.seed of its runs (evaluation stays paired)."""
    modes: list[Literal["mgpo", "direct"]] = Field(["mgpo", "direct"], min_length=1)
    """RL arms trained from each seed's SFT model (rl.mode), at the same budget."""
    eval_modes: list[Literal["direct", "mgpo", "oracle"]] = Field(["mgpo", "direct"], min_length=1)
    """Evaluation protocols each arm's model is scored in, on every evaluate.benchmarks entry."""
    out_dir: str = "results/science"
    """Where each seed's SFT model, each arm's RL model and evaluation, and summary.json/.md land."""

    @model_validator(mode="after")
    def _unique(self) -> ScienceConfig:
        for name in ("seeds", "modes", "eval_modes"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} must not repeat an entry: {values}")
        return self
