"""The transformers engine on a real (small, random-weight) tiny Qwen2.5-VL.

Checks: KV-continued generation gives the log-probs of one full re-encode forward (M-RoPE
positions over all images, the crop included); the loss mask is 1 exactly on sampled ids; image
token runs equal the processor's count per image; batching, KV reuse and seeds do not change
results; length cuts and oracle turns are laid out as inserted (mask 0) ids.
"""

from __future__ import annotations

import pytest
import torch

from components.engines import tokens
from components.engines.base import Engine, SamplingParams, run_episodes
from components.engines.transformers_engine import TransformersEngine, rope_positions
from components.episode import Episode
from components.prompts import load_templates, render_box

T = load_templates("components/templates.yaml", "paper")
GREEDY = SamplingParams(max_new_tokens=8)
SAMPLED = SamplingParams(max_new_tokens=8, temperature=1.0, seed=7)


class Recording(Engine):
    """Wraps an engine, keeps every Generation, and (optionally) replaces the text of turn 1
    with a valid box, so a random model still produces a crop turn. Token ids stay as sampled:
    the episode reads the text, the engine's context holds the ids."""

    def __init__(self, inner, force_box=None):
        self.inner, self.force_box, self.gens = inner, force_box, {}

    def generate(self, episodes, params):
        gens = self.inner.generate(episodes, params)
        for ep, g in zip(episodes, gens, strict=True):
            if self.force_box is not None and ep.model_turns == 0 and ep.mode == "mgpo":
                g.text = render_box(T, self.force_box, "ring")
            self.gens.setdefault(ep.record.id, []).append(g)
        return gens

    def reset(self):
        self.inner.reset()


def episodes(records, params, mode="mgpo", **cfg):
    ep_cfg = params.episode.model_copy(update=cfg)
    view = (params.model.min_pixels, params.model.max_pixels)
    return [Episode(r, ep_cfg, T, mode, view) for r in records]


@pytest.fixture(scope="module")
def crop_run(engine, records, params):
    engine.reset()
    rec = Recording(engine, force_box=(2, 2, 40, 40))
    results = run_episodes(rec, episodes(records, params), SAMPLED, batch_size=3)
    return rec, results


def test_kv_continued_logprobs_match_full_reencode(engine, crop_run):
    _, results = crop_run
    for res in results:
        assert res.turns[0].valid and len(res.images) == 2 and res.images[1] is not res.images[0]
        full = engine.sequence_logprobs(res.prompt_ids, res.response_ids, res.images)
        sampled = [i for i, m in enumerate(res.response_mask) if m]
        got = torch.tensor([res.response_logprobs[i] for i in sampled])
        ref = torch.tensor([full[i] for i in sampled])
        assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()


def test_text_positions_for_the_crop_would_differ(engine, crop_run):
    """The reference code's bug (the crop's tokens at 1-D text positions) changes turn-2
    log-probs, so the match above really checks the M-RoPE positions of the crop chunk."""
    _, results = crop_run
    res = results[0]
    ids = res.prompt_ids + res.response_ids
    enc = [tokens.encode(engine.processor, "<|image_pad|>", [im], engine.image_token_id) for im in res.images]
    grids = [e.grids[0] for e in enc]
    right = rope_positions(engine.model, ids, grids)
    start = len(res.prompt_ids)
    wrong = right.clone()
    wrong[:, start:] = int(right[:, :start].max()) + 1 + torch.arange(len(ids) - start)
    assert not torch.equal(right, wrong)
    outs = []
    with torch.no_grad():
        for pos in (right, wrong):
            out = engine.model(
                input_ids=torch.tensor([ids]),
                position_ids=pos.unsqueeze(1),
                pixel_values=torch.cat([p for e in enc for p in e.pixel_values]),
                image_grid_thw=torch.tensor(grids),
            )
            # the sampler's distribution (vision tokens forbidden, as in generation)
            logits = out.logits[0, start - 1 : -1].float().clone()
            outs.append(tokens.target_logprobs(logits, torch.tensor(ids[start:]), engine.vision_ids)[:, None])
    last = torch.tensor(res.response_mask, dtype=torch.bool)
    second = last.clone()
    second[: res.response_mask.index(0)] = False  # turn-2 sampled ids only
    gap = (outs[0][second] - outs[1][second]).abs().max()
    assert gap > 1e-4, gap
    assert torch.allclose(outs[0][second].squeeze(), torch.tensor(res.response_logprobs)[second], atol=1e-4)


def test_loss_mask_is_one_exactly_on_sampled_ids(crop_run):
    rec, results = crop_run
    for res in results:
        gens = rec.gens[res.id]
        assert len(gens) == 2
        expect_ids = gens[0].token_ids + gens[1].prompt_delta_ids + gens[1].token_ids
        expect_mask = (
            [1] * len(gens[0].token_ids) + [0] * len(gens[1].prompt_delta_ids) + [1] * len(gens[1].token_ids)
        )
        assert res.prompt_ids == gens[0].prompt_delta_ids
        assert res.response_ids == expect_ids and res.response_mask == expect_mask
        assert all(lp == 0.0 for lp, m in zip(res.response_logprobs, res.response_mask, strict=True) if not m)
        assert all(lp <= 0.0 for lp in res.response_logprobs)


def test_env_tokens_are_the_templates_turn(engine, crop_run):
    rec, results = crop_run
    tok = engine.processor.tokenizer
    for res in results:
        delta = rec.gens[res.id][1].prompt_delta_ids
        text = tok.decode(delta, skip_special_tokens=False)
        stopped = rec.gens[res.id][0].token_ids[-1] == engine.im_end_id
        assert text.startswith("\n<|im_start|>user\n" if stopped else "<|im_end|>\n<|im_start|>user\n")
        assert T.valid_prefix in text and text.endswith("<|im_start|>assistant\n")
        assert tok.decode(res.prompt_ids, skip_special_tokens=False).endswith("<|im_start|>assistant\n")


def test_image_token_counts_equal_the_processors(engine, crop_run):
    _, results = crop_run
    ip = engine.processor.image_processor
    for res in results:
        runs = tokens.image_runs(res.prompt_ids + res.response_ids, engine.image_token_id)
        expected = []
        for im in res.images:
            out = ip(
                images=[im],
                return_tensors="pt",
                min_pixels=im.width * im.height,
                max_pixels=im.width * im.height,
            )
            grid = out["image_grid_thw"][0]
            assert (int(grid[2]) * 14, int(grid[1]) * 14) == im.size  # the processor kept its size
            expected.append(int(grid.prod()) // ip.merge_size**2)
        assert runs == expected
        assert runs[0] == (res.images[0].width // 28) * (res.images[0].height // 28)


def test_batched_equals_sequential_and_kv_equals_reencode(bundle, engine, records, params):
    engine.reset()
    batched = run_episodes(engine, episodes(records, params), GREEDY, batch_size=3)
    engine.reset()
    single = run_episodes(engine, episodes(records, params), GREEDY, batch_size=1)
    reenc = run_episodes(
        TransformersEngine.from_pretrained(str(bundle), reuse_kv=False),
        episodes(records, params),
        GREEDY,
        batch_size=3,
    )
    for a, b, c in zip(batched, single, reenc, strict=True):
        assert a.response_ids == b.response_ids == c.response_ids
        assert a.prompt_ids == b.prompt_ids == c.prompt_ids
        for x, y, z in zip(a.response_logprobs, b.response_logprobs, c.response_logprobs, strict=True):
            assert abs(x - y) < 1e-4 and abs(x - z) < 1e-4


def test_seeded_sampling_is_reproducible(bundle, records, params):
    runs = []
    for seed in (7, 7, 8):
        eng = TransformersEngine.from_pretrained(str(bundle))
        runs.append(
            run_episodes(eng, episodes(records, params, "direct"), SamplingParams(8, 1.0, seed), batch_size=3)
        )
    ids = [[r.response_ids for r in run] for run in runs]
    assert ids[0] == ids[1] and ids[0] != ids[2]


def test_length_cut_inserts_im_end_and_oracle_turn_is_masked(engine, records, params):
    engine.reset()
    im_end = engine.im_end_id
    (res,) = run_episodes(
        engine, episodes(records[:1], params), SamplingParams(max_new_tokens=1), batch_size=1
    )
    # Turn 1 is one sampled id; unless that was <|im_end|>, the environment inserts it (mask 0).
    if res.turns[0].finish_reason == "length":
        assert res.response_ids[1] == im_end and res.response_mask[:2] == [1, 0]
    (orc,) = run_episodes(engine, episodes(records[:1], params, "oracle"), GREEDY, batch_size=1)
    tok = engine.processor.tokenizer
    n_env = orc.response_mask.index(1)
    env_text = tok.decode(orc.response_ids[:n_env], skip_special_tokens=False)
    assert "bbox_2d" in env_text and T.valid_prefix in env_text
    assert (
        tok.decode(orc.prompt_ids, skip_special_tokens=False).count("<|im_start|>") == 3
    )  # system, user, assistant
    assert orc.response_mask == [0] * n_env + [1] * (len(orc.response_ids) - n_env)
    full = engine.sequence_logprobs(orc.prompt_ids, orc.response_ids, orc.images)
    for i, m in enumerate(orc.response_mask):
        if m:
            assert abs(full[i] - orc.response_logprobs[i]) < 1e-4


def test_encode_refuses_images_the_processor_would_resize(engine):
    from PIL import Image

    with pytest.raises(tokens.TokenizationError, match="resized"):
        tokens.encode(
            engine.processor,
            "<|vision_start|><|image_pad|><|vision_end|>",
            [Image.new("RGB", (100, 90))],
            engine.image_token_id,
        )
    with pytest.raises(tokens.TokenizationError, match="no images"):
        tokens.encode(engine.processor, "<|image_pad|>", [], engine.image_token_id)


def test_vision_tokens_are_never_sampled(bundle, records, params):
    """At a high temperature the random model samples almost uniformly over its ids, so over
    hundreds of tokens the 4 vision ids would show up; the engine must never emit them (the
    rule is `tokens.forbid_vision_tokens`, shared with the learner's log-probs)."""
    eng = TransformersEngine.from_pretrained(str(bundle))
    hot = SamplingParams(max_new_tokens=64, temperature=50.0, seed=3)
    results = run_episodes(eng, episodes(records * 4, params, "direct", max_new_tokens=64), hot, batch_size=8)
    sampled = [t for r in results for t, m in zip(r.response_ids, r.response_mask, strict=True) if m]
    assert len(sampled) > 500
    assert len(eng.vision_ids) == 4
    assert not set(sampled) & set(eng.vision_ids)
