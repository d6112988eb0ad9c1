"""Resumable RL checkpoints: weights, optimizer, RNG states, step, elapsed time and history.

Layout: `<dir>/step_<N>/` holding `model.pt` and `optimizer.pt` (tensors, loaded with
`weights_only=True`, so nothing is unpickled), `rng.pt` (torch's CPU generator state) and
`state.json` (step, elapsed seconds, the numpy generator's state, the metric history, and the
run fingerprint). A checkpoint is written into a temporary folder and renamed into place, so a
kill mid-write never leaves a half checkpoint that `latest` would pick; older ones are pruned.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_PREFIX = "step_"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used (missing files, another run's fingerprint)."""


@dataclass
class TrainerState:
    step: int = 0
    elapsed_s: float = 0.0
    numpy_rng: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    val_history: list[dict[str, float]] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)


def save(directory: str | Path, model, optimizer, state: TrainerState, keep: int = 2) -> Path:
    """Write step `state.step`; keep the newest `keep` checkpoints. Returns its folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{_PREFIX}{state.step:06d}"
    tmp = directory / f".tmp_{_PREFIX}{state.step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(model.state_dict(), tmp / "model.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(torch.get_rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state.__dict__, default=_json_default))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def latest(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load(path: str | Path, model, optimizer, fingerprint: dict[str, Any] | None = None) -> TrainerState:
    """Restore weights, optimizer and torch RNG in place; return the trainer state.

    When `fingerprint` is given, every key it shares with the checkpoint's must match: resuming
    another run's checkpoint (other mode, seed, group size...) fails naming the key.
    """
    path = Path(path)
    for name in ("model.pt", "optimizer.pt", "rng.pt", "state.json"):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} has no {name}")
    data = json.loads((path / "state.json").read_text())
    state = TrainerState(**data)
    if fingerprint:
        for key, value in fingerprint.items():
            if key in state.fingerprint and state.fingerprint[key] != value:
                raise CheckpointError(
                    f"checkpoint {path} belongs to another run: {key} was {state.fingerprint[key]!r}, "
                    f"now {value!r} (start without --resume, or restore that setting)"
                )
    model.load_state_dict(torch.load(path / "model.pt", weights_only=True))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    torch.set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return state
