"""Typed parameters: the one loader for `params.yaml`.

`load_params(path, overrides)` reads the YAML, applies `key.path=value` overrides and
validates everything with pydantic. Unknown keys, wrong types and impossible values raise
`ParamsError` naming the key path and the reason, e.g.
`rl.rollouts_per_prompt: rollouts per prompt must be >= 2 for GRPO`.
Stage code receives only its own section (plus the shared `paths`, `tracking`, `episode`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ParamsError(ValueError):
    """A params file or override is invalid; the message names the key path."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class Paths(Section):
    base_model: str = "models/base"
    """Embedded tiny Qwen2.5-VL bundle (build_model output)."""
    sft_model: str = "models/sft"
    """SFT warmup output (Hugging Face folder)."""
    rl_model: str = "models/rl"
    """MGPO RL output (Hugging Face folder)."""
    raw_dir: str = "data/raw"
    """Where users drop real benchmarks."""
    processed_dir: str = "data/processed"
    """Canonical parquet datasets, one folder per dataset."""
    sft_data: str = "data/sft"
    """SFT trajectories (verl multi-turn SFT parquet)."""
    checkpoints: str = "checkpoints"
    """Resumable trainer checkpoints."""
    eval_dir: str = "results/evaluate"
    """Evaluation outputs."""
    rl_dir: str = "results/rl"
    """RL curves and validation metrics."""
    sft_dir: str = "results/sft"
    """SFT loss curve and final metrics."""
    model_info: str = "results/model.json"
    """What build-model built or found."""
    promotion: str = "results/promotion.json"
    """Promotion decision (DVC metrics file)."""


class Tracking(Section):
    uri: str = "sqlite:///mlflow.db"
    """MLflow tracking URI; MLFLOW_TRACKING_URI overrides it."""
    experiment: str = "mgpo"
    """MLflow experiment holding every stage run."""
    registered_model: str = "mgpo-embedded"
    """Registry name; versions get aliases sft, candidate, champion."""


class TextConfig(Section):
    hidden_size: int = Field(256, gt=0)
    """Text transformer width."""
    num_layers: int = Field(4, gt=0)
    """Text transformer depth."""
    num_heads: int = Field(4, gt=0)
    """Attention heads."""
    num_kv_heads: int = Field(2, gt=0)
    """Key/value heads (grouped-query attention)."""
    intermediate_size: int = Field(768, gt=0)
    """MLP width."""
    mrope_section: list[int] = [8, 12, 12]
    """M-RoPE split of head_dim/2 into (time, height, width)."""
    max_position_embeddings: int = Field(4096, gt=0)
    """Longest sequence the rotary embedding covers."""

    @model_validator(mode="after")
    def _heads(self) -> TextConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be divisible by num_kv_heads")
        half = self.hidden_size // self.num_heads // 2
        if len(self.mrope_section) != 3 or sum(self.mrope_section) != half:
            raise ValueError(f"mrope_section must be 3 numbers summing to head_dim/2 = {half}")
        return self


class VisionConfig(Section):
    depth: int = Field(2, gt=0)
    """Vision transformer blocks."""
    hidden_size: int = Field(128, gt=0)
    """Vision width."""
    num_heads: int = Field(4, gt=0)
    """Vision attention heads."""
    intermediate_size: int = Field(256, gt=0)
    """Vision MLP width."""
    patch_size: int = Field(14, gt=0)
    """Pixels per patch side."""
    spatial_merge_size: int = Field(2, gt=0)
    """Patches merged per token side."""
    window_size: int = Field(112, gt=0)
    """Window attention size in pixels."""

    @model_validator(mode="after")
    def _heads(self) -> VisionConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        return self


class ModelConfig(Section):
    source: str = "tiny"
    """'tiny' builds the embedded model; else a Hugging Face id or local path."""
    seed: int = 0
    """Seed for the tokenizer corpus order and the random weights."""
    trust_remote_code: bool = False
    """Allow custom model code from a hub repo."""
    min_pixels: int = Field(3136, gt=0)
    """First-view pixel floor of the image processor."""
    max_pixels: int = Field(50176, gt=0)
    """First-view pixel budget."""
    vocab_size: int = Field(1024, ge=300)
    """Tokenizer vocabulary trained locally, special tokens included."""
    text: TextConfig = TextConfig()
    vision: VisionConfig = VisionConfig()

    @model_validator(mode="after")
    def _pixels(self) -> ModelConfig:
        if self.min_pixels > self.max_pixels:
            raise ValueError("min_pixels must not exceed max_pixels")
        return self


class ScaleSweep(Section):
    sizes: list[float] = [0.04, 0.08, 0.12, 0.18, 0.26]
    """Target sizes of the scale-sweep split (share of the short side)."""
    per_size: int = Field(12, ge=0)
    """Attribute questions per size."""

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[float]) -> list[float]:
        if any(not 0 < s < 0.5 for s in v):
            raise ValueError("every size must be in (0, 0.5)")
        return v


class Split4K(Section):
    count: int = Field(16, ge=0)
    """Questions in the 4K split."""
    width: int = Field(3840, gt=0)
    """4K width."""
    height: int = Field(2160, gt=0)
    """4K height."""


class SyntheticConfig(Section):
    name: str = "synthetic"
    """Dataset folder under paths.processed_dir."""
    width: int = Field(2048, ge=256)
    """Original image width in pixels."""
    height: int = Field(1536, ge=256)
    """Original image height in pixels."""
    jpeg_quality: int = Field(92, ge=50, le=100)
    """Encoding quality of the generated JPEGs."""
    train: int = Field(384, ge=0)
    """Questions in the train split."""
    val: int = Field(32, ge=0)
    """Questions in the val split."""
    test: int = Field(64, ge=0)
    """Questions in the test split."""
    target_size: tuple[float, float] = (0.14, 0.22)
    """Target side as a share of the image's short side (min, max)."""
    detail_px: int = Field(4, ge=1)
    """Checker cell of the inner pattern in original pixels (divides 8; 8 leaks into the first view)."""
    num_distractors: int = Field(40, ge=0)
    """Distractor shapes per image."""
    decoys: int = Field(1, ge=0, le=4)
    """Other named objects in attribute images (their patterns are wrong options)."""
    clutter_density: float = Field(0.5, ge=0, le=1)
    """Background texture strength."""
    attribute_share: float = Field(0.75, ge=0, le=1)
    """Share of attribute questions (the rest are spatial)."""
    num_options: int = Field(4, ge=2, le=5)
    """Options for attribute questions; spatial ones have 2."""
    scale_sweep: ScaleSweep = ScaleSweep()
    split_4k: Split4K = Split4K()

    @field_validator("target_size")
    @classmethod
    def _target(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 < lo <= hi < 0.5:
            raise ValueError("target_size must be (min, max) with 0 < min <= max < 0.5")
        return v


class BenchmarkSource(Section):
    name: str
    """Dataset folder under paths.processed_dir."""
    kind: Literal["vstar", "hrbench", "mme_realworld"]
    """Which loader reads it."""
    path: str
    """Local file or folder, or a hub dataset id when the network is there."""
    split: str = "test"
    """Split name of the written parquet."""


class PrepareConfig(Section):
    seed: int = 0
    """Generator seed; the same seed gives byte-identical parquet."""
    max_image_pixels: int = Field(200_000_000, gt=0)
    """Refuse larger images by name (decompression-bomb guard)."""
    max_skipped_fraction: float = Field(0.05, ge=0, le=1)
    """Fail the stage when more than this share of rows is skipped."""
    rows_per_group: int = Field(64, gt=0)
    """Parquet row-group size (streamed writing)."""
    synthetic: SyntheticConfig = SyntheticConfig()
    benchmarks: list[BenchmarkSource] = []
    """Real benchmarks to convert."""


class EpisodeConfig(Section):
    max_turns: int = Field(2, ge=1, le=8)
    """Model turns per episode (2 is the paper's)."""
    templates: str = "components/templates.yaml"
    """Prompt templates file."""
    template: str = "paper"
    """Template set used for multi-turn episodes."""
    crop_min_pixels: int = Field(12544, gt=0)
    """Crop pixel floor (small crops are enlarged)."""
    crop_max_pixels: int = Field(50176, gt=0)
    """Crop pixel budget (large crops are shrunk)."""
    min_box_side: int = Field(28, ge=1)
    """A valid box's sides exceed this many seen pixels."""
    max_aspect: float = Field(100, gt=1)
    """A valid box's aspect ratio is below this."""
    invalid_box: Literal["reject", "clip"] = "reject"
    """Reject (paper) or clip boxes leaving the seen frame."""
    max_new_tokens: int = Field(48, gt=0)
    """Generated tokens per turn at most."""
    format_reward: float = 0.0
    """Extra reward for a well-formed boxed answer (paper: 0)."""
    grounding_reward: float = 0.0
    """Extra reward for a valid box (paper: 0)."""

    @model_validator(mode="after")
    def _crop(self) -> EpisodeConfig:
        if self.crop_min_pixels > self.crop_max_pixels:
            raise ValueError("crop_min_pixels must not exceed crop_max_pixels")
        return self


class SFTVerl(Section):
    nnodes: int = Field(1, ge=1)
    """Nodes for torchrun."""
    nproc_per_node: int = Field(8, ge=1)
    """GPUs per node."""
    micro_batch_size_per_gpu: int = Field(1, ge=1)
    """Trajectories per GPU per forward."""
    epochs: int = Field(1, ge=1)
    """Passes over the trajectories (an upper bound beside sft.max_steps)."""
    max_tokens_per_gpu: int = Field(0, ge=0)
    """0: fixed micro-batches; >0: dynamic batches of at most this many tokens per GPU."""
    run_on: Literal["local", "ray"] = "local"
    """local: torchrun on this machine; ray: a Ray job on RAY_ADDRESS."""
    checkpoint_dir: str = ""
    """verl checkpoint folder (shared by all nodes); empty: <paths.checkpoints>/sft_verl."""
    job_timeout_s: float = Field(86400, gt=0)
    """Stop waiting for (and stop) the Ray job after this many seconds."""
    extra_overrides: list[str] = []
    """Further Hydra overrides for verl.trainer.sft_trainer."""


class SFTConfig(Section):
    backend: Literal["local", "verl"] = "local"
    """local (transformers) or verl (torchrun)."""
    train_data: str = "data/processed/synthetic/train.parquet"
    """Canonical parquet of the records the trajectories are built from."""
    seed: int = 0
    """Data order and jitter seed."""
    max_steps: int = Field(150, ge=1)
    """Optimizer steps."""
    samples_per_micro_batch: int = Field(8, ge=1)
    """Trajectories per forward/backward."""
    micro_batches_per_step: int = Field(1, ge=1)
    """Gradient accumulation."""
    lr: float = Field(2e-3, gt=0)
    """AdamW peak learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Learning-rate schedule."""
    warmup_steps: int = Field(10, ge=0)
    """Linear warmup steps."""
    grad_clip: float = Field(1.0, gt=0)
    """Max gradient norm."""
    max_seq_len: int = Field(1024, ge=64)
    """Longer trajectories are skipped and counted, never cut."""
    checkpoint_every: int = Field(50, ge=1)
    """Steps between checkpoints."""
    box_jitter: float = Field(0.08, ge=0, le=0.5)
    """Jitter of target boxes as a share of the box side."""
    box_grid: int = Field(28, ge=0)
    """Snap turn-1 boxes outward to this pixel grid (28: whole merged tokens); 0 keeps pixels."""
    missing_box_share: float = Field(0.1, ge=0, le=1)
    """Share of trajectories whose turn 1 has no valid box."""
    direct_share: float = Field(0.0, ge=0, le=1)
    """Share of direct-answer trajectories."""
    verl: SFTVerl = SFTVerl()


class RLVerl(Section):
    nnodes: int = Field(4, ge=1)
    """Nodes in the Ray cluster."""
    n_gpus_per_node: int = Field(8, ge=1)
    """GPUs per node."""
    prompt_length: int = Field(8192, ge=64)
    """Max prompt tokens."""
    response_length: int = Field(8192, ge=64)
    """Max response tokens (all turns and the crop)."""
    rollout_engine: Literal["vllm", "sglang"] = "vllm"
    """verl rollout engine."""
    tensor_parallel_size: int = Field(1, ge=1)
    """vLLM tensor parallelism."""
    gpu_memory_utilization: float = Field(0.6, gt=0, le=1)
    """vLLM memory share."""
    max_tokens_per_gpu: int = Field(32768, ge=128)
    """Dynamic-batch token budget per GPU (at least prompt_length + response_length)."""
    checkpoint_dir: str = ""
    """verl checkpoint folder (shared by all nodes); empty: <paths.checkpoints>/rl_verl."""
    job_timeout_s: float = Field(172800, gt=0)
    """Stop waiting for (and stop) the Ray job after this many seconds."""
    extra_overrides: list[str] = []
    """Further Hydra overrides for verl.trainer.main_ppo."""


class RLConfig(Section):
    backend: Literal["local", "verl"] = "local"
    """local (transformers GRPO) or verl (Ray job)."""
    mode: Literal["mgpo", "direct"] = "mgpo"
    """mgpo (multi-turn grounding) or direct (single-turn GRPO baseline)."""
    seed: int = 0
    """Sampling and data-order seed."""
    max_steps: int = Field(20, ge=1)
    """GRPO steps at most."""
    time_budget_s: float = Field(360, gt=0)
    """Seconds of training at most, over resumes: a step that would end past it is not started."""
    train_data: str = "data/processed/synthetic/train.parquet"
    """Canonical parquet of the RL train questions."""
    val_data: str = "data/processed/synthetic/val.parquet"
    """Canonical parquet of the validation questions."""
    prompts_per_step: int = Field(4, ge=1)
    """Questions sampled per step."""
    rollouts_per_prompt: int = 4
    """Episodes per question (the GRPO group size)."""
    prompts_per_mini_batch: int = Field(4, ge=1)
    """Questions per optimizer mini-batch."""
    ppo_epochs: int = Field(1, ge=1)
    """Passes over each step's rollouts."""
    lr: float = Field(2e-5, gt=0)
    """AdamW learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    clip_ratio: float = Field(0.2, gt=0, lt=1)
    """PPO clip range."""
    kl_coef: float = Field(0.01, ge=0)
    """Low-variance KL to the frozen reference (0 disables)."""
    entropy_coef: float = Field(0.001, ge=0)
    """Entropy bonus."""
    grad_clip: float = Field(1.0, gt=0)
    """Max gradient norm."""
    norm_adv_by_std: bool = True
    """GRPO: divide advantages by the group's std."""
    filter_groups: bool = True
    """Leave groups whose rewards are all equal out of the update (false: keep them, as verl)."""
    temperature: float = Field(1.0, gt=0)
    """Rollout sampling temperature."""
    checkpoint_every: int = Field(5, ge=1)
    """Steps between checkpoints."""
    val_every: int = Field(10, ge=1)
    """Steps between greedy validation passes."""
    val_samples: int = Field(32, ge=1)
    """Val questions per validation pass."""
    rollout_batch_size: int = Field(32, ge=1)
    """Episodes generated together by the local engine."""
    torch_threads: int = Field(1, ge=0)
    """CPU threads of torch in the local trainer (0: torch's default)."""
    verl: RLVerl = RLVerl()

    @field_validator("rollouts_per_prompt")
    @classmethod
    def _group(cls, v: int) -> int:
        if v < 2:
            raise ValueError("rollouts per prompt must be >= 2 for GRPO")
        return v

    @model_validator(mode="after")
    def _mini(self) -> RLConfig:
        if self.prompts_per_step % self.prompts_per_mini_batch:
            raise ValueError("prompts_per_step must be a multiple of prompts_per_mini_batch")
        return self


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
    gate_benchmark: str = "synthetic_test"
    """Benchmark that decides promotion."""
    gate_mode: Literal["direct", "mgpo", "oracle"] = "mgpo"
    """Mode that decides promotion."""
    gate_metric: str = "accuracy"
    """Metric that decides promotion."""
    min_improvement: float = Field(0.0, ge=0)
    """The candidate must beat the champion by at least this (and strictly; a tie keeps it)."""
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


class Params(Section):
    paths: Paths = Paths()
    tracking: Tracking = Tracking()
    model: ModelConfig = ModelConfig()
    prepare: PrepareConfig = PrepareConfig()
    episode: EpisodeConfig = EpisodeConfig()
    sft: SFTConfig = SFTConfig()
    rl: RLConfig = RLConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    promote: PromoteConfig = PromoteConfig()
    pipeline: PipelineConfig = PipelineConfig()

    @model_validator(mode="after")
    def _cross(self) -> Params:
        if self.promote.gate_benchmark not in self.evaluate.benchmarks:
            raise ValueError(
                f"promote.gate_benchmark {self.promote.gate_benchmark!r} is not one of "
                f"evaluate.benchmarks {sorted(self.evaluate.benchmarks)}"
            )
        if self.promote.candidate not in self.evaluate.models:
            raise ValueError(f"promote.candidate {self.promote.candidate!r} is not one of evaluate.models")
        return self


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and YAML-typed value (safe_load, never eval)."""
    if "=" not in text:
        raise ParamsError(f"override {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise ParamsError(f"override {text!r}: empty key in path {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ParamsError(f"override {key}: value {raw!r} is not valid YAML ({exc})") from exc
    if isinstance(value, str) and _FLOAT.fullmatch(value):
        value = float(value)  # YAML 1.1 reads "1e-5" as a string; people mean a number
    return keys, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of `data` with each `key.path=value` set; the key must already exist."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for depth, k in enumerate(keys[:-1]):
            if not isinstance(node.get(k), dict):
                raise ParamsError(f"override {text!r}: {'.'.join(keys[: depth + 1])} is not a section")
            node = node[k]
        if keys[-1] not in node and not _is_free_mapping(keys):
            raise ParamsError(f"override {text!r}: unknown key {'.'.join(keys)}")
        node[keys[-1]] = value
    return out


def _is_free_mapping(keys: list[str]) -> bool:
    # evaluate.models / evaluate.benchmarks are user-named mappings: new names are fine.
    return len(keys) == 3 and keys[0] == "evaluate" and keys[1] in {"models", "benchmarks"}


def format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid params in {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def validate_params(data: dict, source: str = "params") -> Params:
    try:
        return Params.model_validate(data or {})
    except ValidationError as exc:
        raise ParamsError(format_errors(exc, source)) from None


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read, override and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"params file {path}: top level must be a mapping")
    return validate_params(apply_overrides(data, overrides or []), str(path))
