"""The whole params file: `Params`, overlays, overrides and the one loader.

A params source is one file (`params.yaml`) or a list of files: the first is the base and each
later one a partial overlay deep-merged on it (`merge_into`: mappings merge, so an overlay
cannot remove a key; lists and scalars replace). `-S key.path=value` overrides come last. The
result is validated once; an error names the key and, when an overlay or an override set it,
where it came from.
"""

from __future__ import annotations

import copy
import re
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import yaml
from pydantic import ValidationError, model_validator

from components.config.base import ParamsError, Section
from components.config.sections import EpisodeConfig, ModelConfig, Paths, PrepareConfig, Tracking
from components.config.stages import EvaluateConfig, PipelineConfig, PromoteConfig, ScienceConfig
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
    science: ScienceConfig = ScienceConfig()

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


def apply_overrides(data: dict, overrides: list[str], origin: dict[tuple, str] | None = None) -> dict:
    """Return a copy of `data` with each `key.path=value` set; the key must already exist.

    `origin` (key path -> where it was set), when given, records each override."""
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
        if origin is not None:
            origin[tuple(keys)] = f"-S {text}"
    return out


def _is_free_mapping(keys: list[str]) -> bool:
    # evaluate.models / evaluate.benchmarks are user-named mappings: new names are fine.
    return len(keys) == 3 and keys[0] == "evaluate" and keys[1] in {"models", "benchmarks"}


def _origin_of(loc: tuple, origin: dict[tuple, str]) -> str | None:
    """Where the longest set prefix of `loc` came from (an overlay file or an override)."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in origin:
            return origin[loc[:end]]
    return None


def format_errors(exc: ValidationError, source: str, origin: dict[tuple, str] | None = None) -> str:
    lines = [f"invalid params in {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        where = _origin_of(tuple(str(p) for p in err["loc"]), origin or {})
        lines.append(f"  {loc}: {msg}" + (f" (set in {where})" if where else ""))
    return "\n".join(lines)


def validate_params(data: dict, source: str = "params", origin: dict[tuple, str] | None = None) -> Params:
    try:
        return Params.model_validate(data or {})
    except ValidationError as exc:
        raise ParamsError(format_errors(exc, source, origin)) from None


ParamsPath: TypeAlias = str | list[str]
"""One params file, or the base file followed by its overlays (what `--params` passes on)."""


def params_files(path: str | Path | Sequence[str | Path]) -> list[Path]:
    """The files of a params source: [base, overlay, ...] (one file: [that file])."""
    files = [Path(path)] if isinstance(path, str | Path) else [Path(p) for p in path]
    if not files:
        raise ParamsError("no params file given")
    return files


def read_params_file(path: str | Path) -> dict:
    """One params file's mapping; missing, invalid YAML or a non-mapping top level name the file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"params file {path}: top level must be a mapping")
    return data


def merge_into(
    base: MutableMapping,
    overlay: dict,
    origin: dict[tuple, str] | None = None,
    source: str = "",
    prefix: tuple = (),
) -> MutableMapping:
    """Deep-merge `overlay` into `base` in place: mappings merge, lists and scalars replace.

    Works on plain dicts and on ruamel's round-trip maps (so a merge into params.yaml keeps its
    comments). `origin` records `source` for every key path the overlay sets or replaces (not
    for the mappings it merges into, so an error elsewhere in a section is not blamed on it).
    """
    for key, value in overlay.items():
        path = (*prefix, str(key))
        if isinstance(value, dict) and isinstance(base.get(key), MutableMapping):
            merge_into(base[key], value, origin, source, path)
            continue
        base[key] = copy.deepcopy(value)
        if origin is not None:
            origin[path] = source
    return base


def load_params_data(
    path: str | Path | Sequence[str | Path], overrides: list[str] | None = None
) -> tuple[dict, str, dict[tuple, str]]:
    """(merged data, a name for the source, key path -> the overlay or override that set it)."""
    files = params_files(path)
    data = read_params_file(files[0])
    origin: dict[tuple, str] = {}
    for overlay in files[1:]:
        merge_into(data, read_params_file(overlay), origin, str(overlay))
    data = apply_overrides(data, overrides or [], origin)
    return data, " + ".join(str(f) for f in files), origin


def load_params(
    path: str | Path | Sequence[str | Path] = "params.yaml", overrides: list[str] | None = None
) -> Params:
    """Read a params file (or a base file and its overlays), apply overrides, validate."""
    data, source, origin = load_params_data(path, overrides)
    return validate_params(data, source, origin)
