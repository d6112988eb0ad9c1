"""Fixtures of the RL tests: a small real tiny Qwen2.5-VL bundle and small records."""

from __future__ import annotations

from pathlib import Path

import pytest
from rl_testkit import ROOT, make_record, small_params

from components.data.record import Record
from components.models.tiny import build_tiny_bundle


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rl_tiny") / "bundle"
    build_tiny_bundle(small_params().model, out, ROOT / "components" / "templates.yaml")
    return out


@pytest.fixture
def records() -> list[Record]:
    return [make_record(i, "red" if i % 2 else "blue", answer_first=i % 3 != 0) for i in range(6)]
