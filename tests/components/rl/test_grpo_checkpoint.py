"""RL checkpoints: round trip of weights, optimizer and RNG; pruning; refusing another run's state."""

from __future__ import annotations

import pytest
import torch

from components.rl import checkpoint as ckpt


def _model_and_opt(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    model, opt = _model_and_opt(0)
    state = ckpt.TrainerState(step=3, elapsed_s=12.5, history=[{"reward": 0.5}], fingerprint={"seed": 0})
    torch.manual_seed(123)
    saved = ckpt.save(tmp_path, model, opt, state)
    expected_draw = torch.rand(3)

    other, other_opt = _model_and_opt(1)
    torch.manual_seed(999)
    loaded = ckpt.load(saved, other, other_opt, fingerprint={"seed": 0})
    assert loaded.step == 3 and loaded.elapsed_s == 12.5 and loaded.history == [{"reward": 0.5}]
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], other_opt.state_dict()["state"][0]["exp_avg"])
    assert torch.equal(torch.rand(3), expected_draw)  # the RNG continues where it was saved


def test_only_the_newest_checkpoints_are_kept_and_latest_is_the_highest_step(tmp_path):
    model, opt = _model_and_opt(0)
    for step in (2, 10, 4):
        ckpt.save(tmp_path, model, opt, ckpt.TrainerState(step=step), keep=2)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step_000004", "step_000010"]
    assert ckpt.latest(tmp_path).name == "step_000010"
    assert ckpt.latest(tmp_path / "missing") is None


def test_a_half_written_checkpoint_is_never_picked(tmp_path):
    model, opt = _model_and_opt(0)
    ckpt.save(tmp_path, model, opt, ckpt.TrainerState(step=1))
    (tmp_path / ".tmp_step_000002").mkdir()  # what a kill during save leaves behind
    assert ckpt.latest(tmp_path).name == "step_000001"


def test_another_runs_checkpoint_is_refused_naming_the_key(tmp_path):
    model, opt = _model_and_opt(0)
    saved = ckpt.save(tmp_path, model, opt, ckpt.TrainerState(step=1, fingerprint={"mode": "mgpo"}))
    with pytest.raises(ckpt.CheckpointError, match="mode was 'mgpo', now 'direct'"):
        ckpt.load(saved, model, opt, fingerprint={"mode": "direct"})


def test_missing_files_are_named(tmp_path):
    model, opt = _model_and_opt(0)
    saved = ckpt.save(tmp_path, model, opt, ckpt.TrainerState(step=1))
    (saved / "optimizer.pt").unlink()
    with pytest.raises(ckpt.CheckpointError, match=r"no optimizer\.pt"):
        ckpt.load(saved, model, opt)
