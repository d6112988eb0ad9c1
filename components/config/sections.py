"""Shared sections (`paths`, `tracking`, `episode`) and the `model` and `prepare` stages."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.config.base import Section


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
    rope_theta: float = Field(10000.0, gt=1.0)
    """Rotary base; smaller turns the rotary angle faster per position (Qwen2.5-VL: 1e6)."""

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
    position_tint: float = Field(0.0, ge=0, le=1)
    """Strength of the background's position gradient (red along x, blue along y); 0 = none."""
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
    original_cache: int = Field(16, ge=1)
    """Decoded full-resolution originals kept per process for crops (a GRPO group shares one)."""

    @model_validator(mode="after")
    def _crop(self) -> EpisodeConfig:
        if self.crop_min_pixels > self.crop_max_pixels:
            raise ValueError("crop_min_pixels must not exceed crop_max_pixels")
        return self
