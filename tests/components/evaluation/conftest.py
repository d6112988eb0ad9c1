"""Fixtures of the evaluation tests: a small real tiny Qwen2.5-VL bundle and synthetic benchmarks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from components.config import EpisodeConfig, EvaluateConfig, SyntheticConfig, load_params
from components.data.parquet import write_records
from components.data.synthetic import generate_split, split_specs
from components.models.tiny import build_tiny_bundle

ROOT = Path(__file__).resolve().parents[3]


def small_model_cfg():
    # Smaller than the default so the tests are quick; the architecture is the same.
    return load_params(
        ROOT / "params.yaml",
        [
            "model.text.hidden_size=64",
            "model.text.num_layers=1",
            "model.text.mrope_section=[2, 3, 3]",
            "model.vision.hidden_size=32",
            "model.vision.depth=1",
            "model.vocab_size=400",
        ],
    ).model


@pytest.fixture(scope="session")
def eval_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval_tiny") / "bundle"
    build_tiny_bundle(small_model_cfg(), out, ROOT / "components" / "templates.yaml")
    return out


@pytest.fixture(scope="session")
def eval_benchmarks(tmp_path_factory) -> dict[str, str]:
    """4 test questions and a 4-question scale sweep (two sizes), 1024x768 originals."""
    folder = tmp_path_factory.mktemp("eval_data")
    cfg = SyntheticConfig(width=1024, height=768, train=0, val=0, test=4)
    out = {}
    for spec in split_specs(cfg):
        if spec.name == "test":
            out["test"] = str(folder / "test.parquet")
            write_records(out["test"], generate_split(cfg, 0, spec))
        elif spec.name == "scale_sweep":
            spec = dataclasses.replace(spec, count=4, per_size=2, sizes=(0.06, 0.2))
            out["sweep"] = str(folder / "sweep.parquet")
            write_records(out["sweep"], generate_split(cfg, 0, spec))
    return out


def eval_cfg(bundle, benchmarks, **kw) -> EvaluateConfig:
    base = {
        "models": {"tiny": str(bundle)},
        "benchmarks": dict(benchmarks),
        "max_samples": 4,
        "batch_size": 2,
        "report_cards": 4,
        "device": "cpu",
    }
    base.update(kw)
    return EvaluateConfig(**base)


def episode_cfg(**kw) -> EpisodeConfig:
    return EpisodeConfig(templates=str(ROOT / "components" / "templates.yaml"), max_new_tokens=12, **kw)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run the tiny model on one intra-op thread during these tests, then restore.

    On 2 shared cores under load, two torch threads spin against each other: the same
    evaluation measured 10 s wall with one thread and 61 s with two. Ray workers here use one
    thread each too, so serial and parallel runs compute the same way."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
