"""Fixtures of the engine tests: a small real tiny Qwen2.5-VL bundle (built once) and records."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.config import load_params
from components.data.record import Record

ROOT = Path(__file__).resolve().parents[3]


def small_params():
    """Repo params with a smaller model (same architecture) and short turns."""
    return load_params(
        ROOT / "params.yaml",
        [
            "model.text.hidden_size=64",
            "model.text.num_layers=2",
            "model.text.mrope_section=[2, 3, 3]",
            "model.vision.hidden_size=32",
            "model.vision.depth=1",
            "model.max_pixels=12544",
            "episode.crop_min_pixels=3136",
            "episode.crop_max_pixels=12544",
            "episode.max_new_tokens=8",
        ],
    )


@pytest.fixture(scope="session")
def params():
    return small_params()


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, params) -> Path:
    from components.models.tiny import build_tiny_bundle

    out = tmp_path_factory.mktemp("engine_tiny") / "bundle"
    build_tiny_bundle(params.model, out, ROOT / "components" / "templates.yaml")
    return out


@pytest.fixture(scope="session")
def engine(bundle):
    from components.engines.transformers_engine import TransformersEngine

    return TransformersEngine.from_pretrained(str(bundle))


def make_record(i: int, size=(900, 700)) -> Record:
    rng = np.random.default_rng(i)
    arr = rng.integers(0, 255, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).resize(size).save(buf, "JPEG", quality=85)
    return Record(
        id=f"e{i}",
        source="test",
        split="test",
        image_bytes=buf.getvalue(),
        width=size[0],
        height=size[1],
        question="What colour is the ring?",
        options=["red", "blue", "green"],
        answer="A",
        category="attribute",
        target_boxes=[[200.0, 150.0, 420.0, 330.0]],
    ).validate()


@pytest.fixture(scope="session")
def records() -> list[Record]:
    # Different sizes, so first views (and their image-token counts) differ within a batch.
    return [make_record(0, (900, 700)), make_record(1, (1300, 600)), make_record(2, (640, 900))]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on 2 shared cores two torch threads spin against each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
