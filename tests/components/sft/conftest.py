"""Fixtures for the SFT tests: a very small Qwen2.5-VL bundle and a hand-made trajectory file."""

from __future__ import annotations

from pathlib import Path

import pytest
from sft_fixtures import ROOT, tiny_model_cfg, write_handmade

from components.models.tiny import build_tiny_bundle


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft_tiny") / "bundle"
    build_tiny_bundle(tiny_model_cfg(), out, ROOT / "components" / "templates.yaml")
    return out


@pytest.fixture
def handmade(tmp_path) -> Path:
    return write_handmade(tmp_path / "traj.parquet")
