"""Whole-trajectory log-probs: crop tokens at 2-D positions, the loss mask excludes the environment."""

from __future__ import annotations

import pytest
import torch
from rl_testkit import make_record, run_scripted, small_params

from components.engines.transformers_engine import TransformersEngine
from components.models.loading import load_bundle
from components.rl.logprobs import collate, response_logprobs

BOX = '```json\n[{"bbox_2d": [20, 10, 80, 70], "label": "square"}]\n```'


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    model, processor = load_bundle(str(tiny_bundle))
    return model.eval(), processor


@pytest.fixture(scope="module")
def trajectories(bundle):
    _, processor = bundle
    cfg = small_params()
    valid = run_scripted(processor, make_record(0), [BOX, "\\boxed{A}"], cfg)
    invalid = run_scripted(processor, make_record(1, "blue"), ["no box here", "it is \\boxed{B}"], cfg)
    direct = run_scripted(processor, make_record(2), ["\\boxed{A}"], cfg, mode="direct")
    assert valid.box_valid and not invalid.box_valid and len(valid.images) == 2
    return [valid, invalid, direct]


def test_loss_mask_is_one_exactly_on_model_tokens(bundle, trajectories):
    model, processor = bundle
    tok = processor.tokenizer
    batch = collate(trajectories, processor, model)
    image_id = model.config.image_token_id
    for row, t in enumerate(trajectories):
        n = len(t.response_ids)
        mask = batch.response_mask[row, :n]
        ids = batch.response_ids[row, :n]
        # every model turn is the scripted reply plus <|im_end|>; nothing else is marked
        replies = [turn.text for turn in t.turns]
        expected = sum(len(tok(r, add_special_tokens=False)["input_ids"]) + 1 for r in replies)
        assert int(mask.sum()) == expected
        assert torch.all(mask[ids == image_id] == 0)  # the crop's (or original's) image tokens
        assert torch.all(batch.response_mask[row, n:] == 0)  # padding
        if t.mode == "mgpo":
            env_text = tok.decode(ids[mask == 0].tolist())
            assert "Question:" in env_text and "<|image_pad|>" in env_text
            assert "Question:" not in tok.decode(ids[mask == 1].tolist())


def test_batched_logprobs_match_one_full_forward_per_trajectory(bundle, trajectories):
    """The engine's single-sequence reference (full forward, M-RoPE over the whole sequence)
    equals the trainer's right-padded batch: crop image tokens are at their 2-D positions."""
    model, processor = bundle
    engine = TransformersEngine(model, processor)
    batch = collate(trajectories, processor, model)
    with torch.no_grad():
        logp, entropy = response_logprobs(model, batch, with_entropy=True)
    for row, t in enumerate(trajectories):
        ref = engine.sequence_logprobs(t.prompt_ids, t.response_ids, t.images)
        assert logp[row, : len(ref)].tolist() == pytest.approx(ref, abs=2e-5)
    assert torch.all(entropy >= 0)


def test_crop_tokens_get_two_dimensional_positions(bundle, trajectories):
    model, processor = bundle
    batch = collate(trajectories[:1], processor, model)
    ids = batch.input_ids[0]
    image_pos = (ids == model.config.image_token_id).nonzero().squeeze(-1)
    crop_pos = image_pos[image_pos > len(trajectories[0].prompt_ids)]
    h_w = batch.position_ids[1:, 0, crop_pos]
    # 2-D: the height and width rows differ inside the crop (1-D positions would make them equal)
    assert not torch.equal(h_w[0], h_w[1])
    assert len(set(batch.position_ids[0, 0, crop_pos].tolist())) == 1  # one time index per image


def test_gradients_reach_the_policy(bundle, trajectories):
    model, processor = bundle
    batch = collate(trajectories, processor, model)
    logp, _ = response_logprobs(model, batch)
    (logp * batch.response_mask).sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_mismatched_images_are_named(bundle, trajectories):
    model, processor = bundle
    t = trajectories[0]
    t2 = type(t)(**{**t.__dict__, "images": t.images[:1]})
    with pytest.raises(ValueError, match=r"trajectory 0: .* image pad tokens"):
        collate([t2], processor, model)


def test_learner_forbids_the_vision_tokens_the_sampler_forbids(bundle, trajectories):
    """Log-probs and entropy are of the sampler's distribution: the 4 vision ids have no mass,
    the rest renormalize, and the entropy stays finite (tokens.forbid_vision_tokens)."""
    from components.engines import tokens

    model, processor = bundle
    batch = collate(trajectories, processor, model)
    assert len(batch.vision_ids) == 4
    with torch.no_grad():
        logp, entropy = response_logprobs(model, batch, temperature=30.0, with_entropy=True)
        full = tokens.forbid_vision_tokens(torch.randn(2, 3, 50), [1, 7])
        assert torch.all(torch.softmax(full, -1)[..., [1, 7]] == 0)
    assert torch.isfinite(entropy).all() and torch.isfinite(logp).all()
    # at temperature 30 the random model is near uniform over the ids it may sample
    vocab = model.lm_head.out_features
    mask = batch.response_mask.bool()
    allowed = torch.log(torch.tensor(float(vocab - 4)))
    assert entropy[mask].max() <= allowed + 1e-4 and entropy[mask].min() > allowed - 0.05
