"""The whole params file: `Params`, overrides and the one loader."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, model_validator

from components.config.base import ParamsError, Section
from components.config.sections import EpisodeConfig, ModelConfig, Paths, PrepareConfig, Tracking
from components.config.stages import EvaluateConfig, PipelineConfig, PromoteConfig
from components.config.training import RLConfig, SFTConfig


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
        parent = self.promote.parent
        if parent and parent not in self.evaluate.models:
            raise ValueError(
                f"promote.parent {parent!r} is not one of evaluate.models {sorted(self.evaluate.models)}: "
                f"evaluate it (add evaluate.models.{parent}) or set promote.parent to '' to skip the check"
            )
        if parent and parent == self.promote.candidate:
            raise ValueError(f"promote.parent {parent!r} is the candidate itself")
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
