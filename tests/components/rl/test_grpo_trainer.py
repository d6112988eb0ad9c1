"""The local GRPO trainer on the real tiny Qwen2.5-VL: updates, faults, resume, time budget.

Rollouts use the real transformers engine, except where a test needs rewards that differ within
a group (a random-weight model never answers right): there a scripted engine writes the replies
with the shared token helpers, and everything after rollout (the episode, the reward, the
whole-trajectory log-probs, verl's losses, the optimizer) is the real path.
"""

from __future__ import annotations

import math

import pytest
import torch
from rl_testkit import ScriptedEngine, make_record, small_params

from components.engines import tokens
from components.engines.base import Engine
from components.models.loading import load_bundle
from components.rl import grpo
from components.rl.grpo import GRPOTrainer, step_records
from components.rl.rollout import run_groups

RL = [
    "rl.prompts_per_step=2",
    "rl.prompts_per_mini_batch=1",
    "rl.rollouts_per_prompt=3",
    "rl.val_samples=2",
    "rl.max_steps=2",
    "rl.checkpoint_every=1",
    "rl.val_every=10",
    "rl.lr=0.001",
    "rl.filter_groups=false",  # a random model's groups all score 0: keep them so steps update
]


def trainer_for(bundle, records, tmp_path, *overrides, cls=GRPOTrainer):
    p = small_params(*RL, *overrides)
    model, processor = load_bundle(str(bundle))
    return cls(
        p.rl,
        p.episode,
        model,
        processor,
        records,
        records[:2],
        tmp_path / "ckpt",
        (p.model.min_pixels, p.model.max_pixels),
    )


def params_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class ScriptedTrainer(GRPOTrainer):
    """Rollouts by a scripted engine: in each group one reply is right and the others wrong."""

    def engine(self):
        counts: dict[str, int] = {}

        def reply(ep, turn):
            if ep.mode == "mgpo" and turn == 0:
                return '```json\n[{"bbox_2d": [10, 10, 70, 60], "label": "square"}]\n```'
            n = counts[ep.record.id] = counts.get(ep.record.id, 0) + 1
            right = ep.record.answer if n == 1 else "AB"[1 - "AB".index(ep.record.answer)]
            return f"\\boxed{{{right}}}"

        return ScriptedEngine(self.processor, reply)


def test_a_step_with_rewards_that_differ_updates_the_policy(tiny_bundle, records, tmp_path):
    tr = trainer_for(tiny_bundle, records, tmp_path, "rl.kl_coef=0", "rl.entropy_coef=0", cls=ScriptedTrainer)
    before = params_of(tr.model)
    metrics, failures = tr.step()
    assert failures == []
    assert metrics["reward_mean"] == pytest.approx(1 / 3) and metrics["valid_box_ratio"] == 1.0
    assert metrics["zero_variance_groups"] == 0
    for key in ("pg_loss", "loss", "grad_norm", "entropy", "clip_frac"):
        assert math.isfinite(metrics[key]), key
    assert metrics["grad_norm"] > 0  # only the policy gradient is on: advantages drive it
    after = tr.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("lm_head" in k for k in changed) and any("visual" in k for k in changed)


def test_a_real_engine_step_recomputes_the_sampled_logprobs(tiny_bundle, records, tmp_path):
    tr = trainer_for(tiny_bundle, records, tmp_path, "rl.ppo_epochs=2")
    metrics, failures = tr.step()
    assert failures == [] and metrics["failed_rollouts"] == 0
    # the update's full forward (M-RoPE, all images) reproduces rollout's KV-cached log-probs
    assert metrics["logprob_gap"] < 1e-5
    assert math.isfinite(metrics["kl"]) and metrics["kl"] >= 0
    assert 0 < metrics["response_tokens_per_turn"] <= 6
    assert metrics["seconds_per_step"] > 0


def test_a_hot_step_never_samples_vision_tokens_and_keeps_the_logprob_gap(
    tiny_bundle, records, tmp_path, monkeypatch
):
    """At temperature 30 the random model spreads its mass over every id, vision tokens included.
    The sampler and the learner forbid the same 4 ids (one rule, tokens.forbid_vision_tokens):
    none is sampled, no rollout fails or is rerun, and the recomputed log-probs match the sampled
    ones (a one-sided mask put the gap at about 4e-3)."""
    seen = []

    def spy(*args, **kwargs):
        rollouts, failures = run_groups(*args, **kwargs)
        seen.extend(rollouts)
        return rollouts, failures

    monkeypatch.setattr(grpo, "run_groups", spy)
    tr = trainer_for(tiny_bundle, records, tmp_path, "rl.temperature=30", "episode.max_new_tokens=64")
    metrics, failures = tr.step()
    vision = set(tokens.vision_token_ids(tr.processor.tokenizer))
    sampled = [
        t for r in seen for t, m in zip(r.result.response_ids, r.result.response_mask, strict=True) if m
    ]
    assert len(vision) == 4 and len(sampled) > 500
    assert not vision & set(sampled)  # unmasked, this step samples 3 of them
    assert failures == [] and metrics["failed_rollouts"] == 0 and metrics["retried_batches"] == 0
    assert metrics["logprob_gap"] < 1e-5
    assert math.isfinite(metrics["entropy"])


def test_groups_without_a_reward_signal_are_left_out_of_the_update(tiny_bundle, records, tmp_path):
    tr = trainer_for(tiny_bundle, records, tmp_path, "rl.filter_groups=true")
    before = params_of(tr.model)
    metrics, _ = tr.step()
    # a random-weight model never answers right: every group is flat, so nothing is updated
    assert metrics["zero_variance_groups"] == 2 and metrics["updated"] == 0.0 and "loss" not in metrics
    assert all(torch.equal(v, tr.model.state_dict()[k]) for k, v in before.items())

    tr = trainer_for(tiny_bundle, records, tmp_path, "rl.filter_groups=true", cls=ScriptedTrainer)
    metrics, _ = tr.step()
    assert metrics["updated"] == 1.0 and metrics["zero_variance_groups"] == 0


def test_a_bad_image_drops_its_rollouts_and_skips_its_group(tiny_bundle, records, tmp_path):
    broken = make_record(9)
    broken.image_bytes = b"not an image"
    tr = trainer_for(tiny_bundle, [broken, *records[:1]], tmp_path, "rl.max_steps=1", cls=ScriptedTrainer)
    metrics, failures = tr.step()
    assert metrics["failed_rollouts"] == 3 and metrics["skipped_groups"] == 1
    assert len(failures) == 3 and all("record r9" in f and "ImageError" in f for f in failures)
    assert math.isfinite(metrics["loss"])  # the other group still trained


class FlakyEngine(Engine):
    """Wraps an engine: raises on any batch holding record r0, and on r0's first episode alone."""

    def __init__(self, inner):
        self.inner, self.r0_alone = inner, 0

    def generate(self, episodes, params):
        if any(ep.record.id == "r0" for ep in episodes):
            if len(episodes) > 1:
                raise RuntimeError("engine fault in a batch holding r0")
            if not episodes[0].turns:
                self.r0_alone += 1
                if self.r0_alone == 1:
                    raise RuntimeError("engine fault for r0")
        return self.inner.generate(episodes, params)

    def reset(self):
        self.inner.reset()


class FlakyEngineTrainer(ScriptedTrainer):
    def engine(self):
        return FlakyEngine(super().engine())


def test_an_engine_fault_drops_only_the_rollout_that_raises(tiny_bundle, records, tmp_path):
    tr = trainer_for(tiny_bundle, records[:2], tmp_path, cls=FlakyEngineTrainer)
    metrics, failures = tr.step()
    # the batch failed and was rerun in halves: only r0's first episode run alone raised again
    assert metrics["failed_rollouts"] == 1 and metrics["skipped_groups"] == 0
    dropped = [f for f in failures if "dropped" in f]
    assert len(dropped) == 1 and "record r0" in dropped[0] and "engine fault for r0" in dropped[0]
    # no rerun is silent: each failed batch is counted and named with its reason
    retried = [f for f in failures if "rerun" in f]
    assert metrics["retried_batches"] == len(retried) >= 1
    assert all("engine fault in a batch holding r0" in f for f in retried)
    assert math.isfinite(metrics["loss"])


@pytest.mark.slow  # two full trainer runs on the tiny model (about 1 min)
def test_resume_ends_where_the_uninterrupted_run_ends(tiny_bundle, records, tmp_path):
    full = trainer_for(tiny_bundle, records, tmp_path / "a")
    done = full.run()
    assert done.state.step == 2 and done.stop_reason == "max_steps"

    first = trainer_for(tiny_bundle, records, tmp_path / "b", "rl.max_steps=1")
    assert first.run().state.step == 1  # the "killed" run: its last checkpoint is step 1
    resumed = trainer_for(tiny_bundle, records, tmp_path / "b")
    out = resumed.run(resume=True)
    assert out.resumed_from == 1 and out.state.step == 2
    assert [h["step"] for h in out.state.history] == [1, 2]
    for k, v in done.model.state_dict().items():
        assert torch.allclose(v, out.model.state_dict()[k], atol=1e-6), k


def test_resume_refuses_another_runs_checkpoint(tiny_bundle, records, tmp_path):
    trainer_for(tiny_bundle, records, tmp_path, "rl.max_steps=1").run()
    other = trainer_for(tiny_bundle, records, tmp_path, "rl.mode=direct")
    with pytest.raises(Exception, match="mode was 'mgpo', now 'direct'"):
        other.run(resume=True)


def test_the_time_budget_stops_the_run(tiny_bundle, records, tmp_path):
    tr = trainer_for(tiny_bundle, records, tmp_path, "rl.time_budget_s=0.001", "rl.max_steps=5")
    out = tr.run()
    assert out.stop_reason == "time_budget" and out.state.step < 5
    assert out.state.val_history[0]["step"] == 0  # validation before RL always runs


def test_no_time_budget_by_default_however_slow_the_steps():
    from types import SimpleNamespace

    from components.rl.checkpoint import TrainerState

    p = small_params(*RL)
    assert p.rl.time_budget_s == 0  # the default: the step limit decides
    slow = TrainerState(history=[{"seconds_per_step": 1e6}], val_history=[{"val_seconds": 1e6}])
    fake = SimpleNamespace(cfg=p.rl, state=slow)
    assert not GRPOTrainer._would_overrun(fake, elapsed=1e9)
    fake.cfg = p.rl.model_copy(update={"time_budget_s": 100.0})
    assert GRPOTrainer._would_overrun(fake, elapsed=1.0)


def test_direct_mode_validates_both_protocols(tiny_bundle, records, tmp_path):
    tr = trainer_for(tiny_bundle, records, tmp_path, "rl.mode=direct")
    figures = tr.validate()
    assert "val_direct_accuracy" in figures and "val_mgpo_valid_box_ratio" in figures
    assert "val_direct_valid_box_ratio" not in figures
    assert "val_sampled_direct_accuracy" in figures and "val_sampled_mgpo_valid_box_ratio" in figures


def test_validation_is_greedy_and_sampled_and_a_rerun_is_identical(
    tiny_bundle, records, tmp_path, monkeypatch
):
    """Greedy (one episode a question) beside sampled at the rollout temperature
    (`val_sampled_rollouts` a question, the mean over all); seeded, so a rerun gives the same."""
    import components.rl.grpo as grpo
    from components.rl.curves import plot_emergence, validation_lines

    calls = []
    real = grpo.run_groups

    def spy(engine, recs, group_size, make_episode, params, batch_size):
        out = real(engine, recs, group_size, make_episode, params, batch_size)
        calls.append((group_size, params.temperature, params.seed, len(out[0])))
        return out

    monkeypatch.setattr(grpo, "run_groups", spy)
    tr = trainer_for(tiny_bundle, records, tmp_path, "rl.val_sampled_rollouts=3", "rl.temperature=0.9")
    figures = tr.validate()
    greedy, sampled = calls
    assert greedy[:2] == (1, 0.0) and greedy[3] == 2  # 2 val questions, one greedy episode each
    assert sampled[:2] == (3, 0.9) and sampled[3] == 6  # 3 sampled episodes each
    for metric in ("accuracy", "valid_box_ratio", "crop_hit_ratio", "reward_mean", "failed"):
        assert f"val_mgpo_{metric}" in figures and f"val_sampled_mgpo_{metric}" in figures, metric
    assert 0 <= figures["val_sampled_mgpo_valid_box_ratio"] <= 1

    again = tr.validate()  # same model, same seed: the same episodes
    assert calls[2:] == calls[:2]
    assert {k: v for k, v in again.items() if k != "val_seconds"} == {
        k: v for k, v in figures.items() if k != "val_seconds"
    }
    rerun = trainer_for(tiny_bundle, records, tmp_path, "rl.val_sampled_rollouts=3", "rl.temperature=0.9")
    assert {k: v for k, v in rerun.validate().items() if k != "val_seconds"} == {
        k: v for k, v in figures.items() if k != "val_seconds"
    }

    # The emergence plot keeps the passes apart: greedy solid and filled, sampled dashed and hollow.
    history = [{"step": 0, **figures}, {"step": 2, **again}]
    for key in ("valid_box_ratio", "crop_hit_ratio", "accuracy"):
        lines = {line["label"]: line for line in validation_lines(history, key)}
        assert set(lines) == {"validation, mgpo protocol (greedy)", "validation, mgpo protocol (sampled)"}
        assert lines["validation, mgpo protocol (greedy)"]["style"]["ls"] == "-"
        assert lines["validation, mgpo protocol (sampled)"]["style"]["ls"] == "--"
        assert lines["validation, mgpo protocol (sampled)"]["steps"] == [0, 2]
    assert plot_emergence([], history, "mgpo", tmp_path / "emergence.png").stat().st_size > 5000

    calls.clear()
    off = trainer_for(tiny_bundle, records, tmp_path, "rl.val_sampled_rollouts=0")
    figures = off.validate()
    assert len(calls) == 1 and not any(k.startswith("val_sampled_") for k in figures)


def test_step_records_cover_each_epoch_once_and_depend_only_on_the_step(records):
    seen = [r.id for s in range(3) for r in step_records(records, s, 2, seed=0)]
    assert sorted(seen) == sorted(r.id for r in records)
    assert step_records(records, 4, 2, 0) == step_records(records, 4, 2, 0)
    assert [r.id for r in step_records(records, 0, 6, 0)] != [r.id for r in step_records(records, 0, 6, 1)]
