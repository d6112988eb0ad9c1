"""The two visual skills the embedded default rests on are learned on a reduced budget, by the
probe in experiments/learnability.py (real tiny model, processor, prompts and generator).

Slow (about 10 minutes each on one core): `make test-all` runs them. The figures they check
are far below the measured ones in docs/learnability.md (crop reading 0.95 at 200 steps; x1
0.64 against a constant's 0.22 at 250 steps), so a pass is not luck and a fail is a regression.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def probe():
    spec = importlib.util.spec_from_file_location("learnability", ROOT / "experiments" / "learnability.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_reading_the_oracle_crop_is_learned(tmp_path):
    rows = probe().main(
        [
            "read_crop",
            "--steps",
            "200",
            "--batch",
            "8",
            "--train",
            "300",
            "--val",
            "60",
            "--eval-every",
            "100",
            "-S",
            "prepare.synthetic.detail_px=16",
            "-S",
            "prepare.synthetic.target_size=[0.14, 0.22]",
            "--out",
            str(tmp_path / "read"),
        ]
    )
    assert rows[0]["acc"] < 0.45  # an untrained model does not read it
    assert rows[-1]["acc"] >= 0.7


@pytest.mark.slow
def test_localizing_a_large_target_is_learned(tmp_path):
    rows = probe().main(
        [
            "locate",
            "--steps",
            "250",
            "--fresh",
            "--orig-scale",
            "0.15",
            "--eval-every",
            "125",
            "-S",
            "prepare.synthetic.position_tint=1",
            "-S",
            "prepare.synthetic.decoys=0",
            "-S",
            "prepare.synthetic.num_distractors=0",
            "-S",
            "prepare.synthetic.clutter_density=0",
            "--out",
            str(tmp_path / "locate"),
        ]
    )
    last = rows[-1]
    x1, y1 = last["coord_acc"][0], last["coord_acc"][1]
    const_x1, const_y1 = last["constant"][0], last["constant"][1]
    assert x1 >= const_x1 + 0.15 and y1 >= const_y1 + 0.1  # well above a constant box
