"""Typed parameters: the one loader for `params.yaml`.

`load_params(path, overrides)` reads the YAML (one file, or a base file and partial overlays
deep-merged on it), applies `key.path=value` overrides and validates everything with pydantic. Unknown keys, wrong types and impossible values raise
`ParamsError` naming the key path and the reason, e.g.
`rl.rollouts_per_prompt: rollouts per prompt must be >= 2 for GRPO`.
Stage code receives only its own section (plus the shared `paths`, `tracking`, `episode`).
"""

from components.config.base import ParamsError, Section
from components.config.loader import (
    Params,
    ParamsPath,
    apply_overrides,
    format_errors,
    load_params,
    load_params_data,
    merge_into,
    params_files,
    parse_override,
    read_params_file,
    validate_params,
)
from components.config.sections import (
    BenchmarkSource,
    EpisodeConfig,
    ModelConfig,
    Paths,
    PrepareConfig,
    ScaleSweep,
    Split4K,
    SyntheticConfig,
    TextConfig,
    Tracking,
    VisionConfig,
)
from components.config.stages import EvaluateConfig, PipelineConfig, PromoteConfig, ScienceConfig
from components.config.training import RLConfig, RLVerl, SFTConfig, SFTVerl

__all__ = [
    "BenchmarkSource",
    "EpisodeConfig",
    "EvaluateConfig",
    "ModelConfig",
    "Params",
    "ParamsError",
    "ParamsPath",
    "Paths",
    "PipelineConfig",
    "PrepareConfig",
    "PromoteConfig",
    "RLConfig",
    "RLVerl",
    "SFTConfig",
    "SFTVerl",
    "ScaleSweep",
    "ScienceConfig",
    "Section",
    "Split4K",
    "SyntheticConfig",
    "TextConfig",
    "Tracking",
    "VisionConfig",
    "apply_overrides",
    "format_errors",
    "load_params",
    "load_params_data",
    "merge_into",
    "params_files",
    "parse_override",
    "read_params_file",
    "validate_params",
]
