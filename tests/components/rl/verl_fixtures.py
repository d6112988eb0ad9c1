"""Helpers for the verl plug-in tests: a small real Qwen2.5-VL bundle, canonical parquet, params."""

from __future__ import annotations

import itertools
from pathlib import Path

from components.config import Params, load_params
from components.data.parquet import write_records
from components.data.synthetic import generate_split, split_specs
from components.models.tiny import build_tiny_bundle

ROOT = Path(__file__).resolve().parents[3]

# The embedded model's architecture and tokenizer, smaller so the bundle builds in seconds.
SMALL_MODEL = [
    "model.text.hidden_size=64",
    "model.text.num_layers=1",
    "model.text.intermediate_size=128",
    "model.text.mrope_section=[2, 3, 3]",
    "model.vision.hidden_size=32",
    "model.vision.depth=1",
    "model.vision.intermediate_size=64",
    "model.vocab_size=400",
]
# One GPU, short sequences: what a single-node smoke run would use.
ONE_GPU = [
    "rl.verl.nnodes=1",
    "rl.verl.n_gpus_per_node=1",
    "rl.verl.prompt_length=1024",
    "rl.verl.response_length=1024",
    "rl.verl.max_tokens_per_gpu=4096",
]


def params(*overrides: str) -> Params:
    return load_params(ROOT / "params.yaml", [*SMALL_MODEL, *ONE_GPU, *overrides])


def bundle(folder: Path) -> Path:
    """Build (once per folder) the small bundle: real tokenizer, processor and weights."""
    if not (folder / "config.json").is_file():
        build_tiny_bundle(params().model, folder, ROOT / "components" / "templates.yaml")
    return folder


def canonical_parquet(path: Path, p: Params, split: str = "train", n: int = 4) -> tuple[Path, list]:
    """`n` synthetic records of `split` written by the data stage's own writer."""
    spec = next(s for s in split_specs(p.prepare.synthetic) if s.name == split)
    records = list(itertools.islice(generate_split(p.prepare.synthetic, p.prepare.seed, spec), n))
    write_records(path, records)
    return path, records
