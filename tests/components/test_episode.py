"""Tests of components/episode.py with a scripted engine (fixed replies, no model).

The scripted engine stands in for a model only to fix the replies; token ids are synthetic
(tokenization is the engines' job and is tested with the real tiny model in tests/components/engines).
"""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest
from PIL import Image

from components import grounding as g
from components.config import EpisodeConfig
from components.data.record import Record
from components.engines.base import Engine, SamplingParams, run_episodes
from components.episode import Episode, Generation, grow_to_valid
from components.prompts import load_templates

T = load_templates("components/templates.yaml", "paper")
VIEW = (3136, 50176)
CFG = EpisodeConfig(crop_min_pixels=12544, crop_max_pixels=50176)
W, H = 2000, 1500


@functools.cache
def image_bytes() -> bytes:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (H // 50, W // 50, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).resize((W, H)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def record(boxes=((400.0, 300.0, 700.0, 600.0),), rid="r1") -> Record:
    return Record(
        id=rid,
        source="test",
        split="test",
        image_bytes=image_bytes(),
        width=W,
        height=H,
        question="What colour is the ring?",
        options=["red", "blue", "green"],
        answer="B",
        category="attribute",
        target_boxes=[list(b) for b in boxes],
    ).validate()


SEEN = g.seen_size(W, H, *VIEW)


class Scripted(Engine):
    """Replies with fixed texts; ids are synthetic: env ids 1000 + k, model ids 1..len(text)."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []

    def generate(self, episodes, params):
        self.calls.append(len(episodes))
        out = []
        for ep in episodes:
            k = ep.model_turns
            text = self.replies[min(k, len(self.replies) - 1)]
            n = 3 + k  # env ids per call
            ids = list(range(1, len(text) + 1))
            out.append(Generation(text, ids, [-0.5] * len(ids), [1000 + k] * n))
        return out


def box_text(box):
    return "Looking.\n" + T.box_reply.replace("{x1}", str(box[0])).replace("{y1}", str(box[1])).replace(
        "{x2}", str(box[2])
    ).replace("{y2}", str(box[3])).replace("{label}", "ring")


def run(replies, mode="mgpo", cfg=CFG, rec=None):
    ep = Episode(rec or record(), cfg, T, mode, VIEW)
    eng = Scripted(replies)
    (res,) = run_episodes(eng, [ep], SamplingParams())
    return ep, res, eng


def test_valid_box_crops_the_original_and_uses_valid_wording():
    seen_box = (50, 40, 88, 76)
    _, res, _ = run([box_text(seen_box), "It is \\boxed{B}"])
    assert [t.valid for t in res.turns] == [True, False]
    t1 = res.turns[0]
    assert t1.form == "fenced_json" and t1.label == "ring" and t1.reason is None
    assert t1.box_orig == pytest.approx(g.to_original(seen_box, SEEN, (W, H)))
    assert t1.crop_region == g.crop_region(t1.box_orig, W, H)
    # Messages: system, user(image, turn-1), assistant, user(valid prefix, image, question+choices), assistant.
    roles = [m["role"] for m in res.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    follow = res.messages[3]["content"]
    assert follow[0]["text"] == T.valid_prefix and follow[1] == {"type": "image"}
    assert "(A) red\n(B) blue\n(C) green\n" in follow[2]["text"]
    assert "choices" not in res.messages[1]["content"][1]["text"]
    # Images: the first view, then the crop at its own budgeted size, cut from the original.
    assert res.images[0].size == SEEN
    region = t1.crop_region
    assert res.images[1].size == g.seen_size(region[2] - region[0], region[3] - region[1], 12544, 50176)
    expect = g.crop(g.load_original(record().image_bytes), t1.box_orig, 12544, 50176)
    assert np.array_equal(np.asarray(res.images[1]), np.asarray(expect))
    assert res.reward.accuracy == 1.0 and res.box_valid is True
    assert res.iou == pytest.approx(g.iou(t1.box_orig, (400, 300, 700, 600)))


def test_token_layout_masks_env_tokens():
    text1, text2 = box_text((50, 40, 88, 76)), "\\boxed{B}"
    _, res, _ = run([text1, text2])
    n1, n2 = len(text1), len(text2)
    assert res.prompt_ids == [1000] * 3
    assert res.response_ids == list(range(1, n1 + 1)) + [1001] * 4 + list(range(1, n2 + 1))
    assert res.response_mask == [1] * n1 + [0] * 4 + [1] * n2
    assert res.response_logprobs == [-0.5] * n1 + [0.0] * 4 + [-0.5] * n2


@pytest.mark.parametrize(
    ("reply", "reason", "form"),
    [
        (box_text((50, 40, 60, 76)), g.TOO_SMALL, "fenced_json"),
        (box_text((50, 40, SEEN[0] + 5, 76)), g.OUTSIDE, "fenced_json"),
        ("[90, 40, 50, 76]", g.UNORDERED, "list"),
        ("I cannot tell.", g.NO_BOX, None),
        ("The answer is \\boxed{A}", g.NO_BOX, None),  # an answer in turn 1 still gets turn 2
    ],
)
def test_invalid_or_missing_box_shows_the_first_view_again(reply, reason, form):
    _, res, eng = run([reply, "\\boxed{C}"])
    assert eng.calls == [1, 1] and len(res.turns) == 2
    t1 = res.turns[0]
    assert (t1.valid, t1.reason, t1.form) == (False, reason, form)
    assert t1.box_orig is None and t1.crop_region is None and t1.iou is None
    follow = res.messages[3]["content"]
    assert follow[0]["text"] == T.invalid_prefix
    assert T.invalid.split("{question}")[0] in follow[2]["text"]
    assert res.images[1] is res.images[0]
    # Only the final turn is scored (a turn-1 \boxed{A} does not count).
    assert res.reward.extracted == "C" and res.reward.accuracy == 0.0 and res.box_valid is False


def test_clip_mode_clips_instead_of_rejecting():
    cfg = EpisodeConfig(invalid_box="clip")
    _, res, _ = run([box_text((50, 40, SEEN[0] + 40, 90)), "\\boxed{B}"], cfg=cfg)
    t1 = res.turns[0]
    assert t1.valid and t1.box_seen == (50.0, 40.0, float(SEEN[0]), 90.0)


def test_third_turn_crops_from_the_original_in_the_crop_frame():
    cfg = EpisodeConfig(max_turns=3, crop_min_pixels=12544, crop_max_pixels=50176)
    first = (50, 40, 150, 120)
    _, res, _ = run([box_text(first), box_text((10, 10, 60, 50)), "\\boxed{B}"], cfg=cfg)
    assert len(res.turns) == 3 and len(res.images) == 3
    t1, t2 = res.turns[0], res.turns[1]
    crop_frame = g.Frame.of_crop(t1.crop_region, res.images[1].size)
    assert t2.frame_image == 1 and t2.valid
    assert t2.box_orig == pytest.approx(crop_frame.to_original((10, 10, 60, 50)))
    assert g.contains(t1.crop_region, t2.box_orig, tol=1e-6)  # inside the first crop
    expect = g.crop(g.load_original(record().image_bytes), t2.box_orig, 12544, 50176)
    assert np.array_equal(np.asarray(res.images[2]), np.asarray(expect))
    # A later turn without a box ends the episode.
    _, res, _ = run([box_text(first), "\\boxed{B}", "unused"], cfg=cfg)
    assert len(res.turns) == 2 and res.reward.accuracy == 1.0


def test_direct_mode_is_one_turn_with_choices():
    _, res, eng = run(["\\boxed{blue}"], mode="direct")
    assert eng.calls == [1] and len(res.turns) == 1 and len(res.images) == 1
    assert "(B) blue" in res.messages[1]["content"][1]["text"]
    assert res.box_valid is None and res.reward.accuracy == 1.0


def test_oracle_mode_inserts_the_true_box_turn():
    rec = record(boxes=((400.0, 300.0, 700.0, 600.0), (900.0, 800.0, 1000.0, 900.0)))
    ep = Episode(rec, CFG, T, "oracle", VIEW)
    assert [m["role"] for m in ep.messages] == ["system", "user", "assistant", "user"]
    assert len(ep.images) == 2 and ep.turns[0].by_env and ep.turns[0].valid
    union = g.union([(400, 300, 700, 600), (900, 800, 1000, 900)])
    assert g.contains(ep.turns[0].box_orig, union, tol=W / SEEN[0])  # integer seen box, one seen px
    (res,) = run_episodes(Scripted(["\\boxed{B}"]), [ep], SamplingParams())
    assert [t.by_env for t in res.turns] == [True, False] and res.reward.accuracy == 1.0
    with pytest.raises(ValueError, match="record r1: the oracle mode needs target_boxes"):
        Episode(record(boxes=()), CFG, T, "oracle", VIEW)


def test_prompt_split_moves_inserted_ids_into_the_masked_response():
    ep = Episode(record(), CFG, T, "oracle", VIEW)
    ep.step(Generation("\\boxed{B}", [7, 8], [-1.0, -2.0], [1, 2, 3, 4, 5], prompt_split=2))
    res = ep.result()
    assert res.prompt_ids == [1, 2]
    assert res.response_ids == [3, 4, 5, 7, 8] and res.response_mask == [0, 0, 0, 1, 1]


def test_tiny_target_oracle_box_is_grown_to_valid():
    rec = record(boxes=((1000.0, 700.0, 1010.0, 705.0),))
    ep = Episode(rec, CFG, T, "oracle", VIEW)
    t1 = ep.turns[0]
    assert t1.valid and t1.box_seen[2] - t1.box_seen[0] > 28 and t1.box_seen[3] - t1.box_seen[1] > 28
    grown = grow_to_valid((0, 0, 1, 1), (100, 80), 28)
    assert grown[0] == 0 and grown[1] == 0 and grown[2] == 30 and grown[3] == 30


def test_batches_drop_finished_episodes():
    eps = [Episode(record(rid=f"r{i}"), CFG, T, "direct" if i % 2 else "mgpo", VIEW) for i in range(5)]
    eng = Scripted(["no box", "\\boxed{B}"])
    res = run_episodes(eng, eps, SamplingParams(), batch_size=4)
    assert [r.id for r in res] == [f"r{i}" for i in range(5)]
    assert eng.calls == [4, 2, 1, 1]  # 4 together; the two direct ones drop out; then the fifth


def test_errors_name_the_record_and_key():
    with pytest.raises(ValueError, match=r"episode\.max_turns=1"):
        Episode(record(), EpisodeConfig(max_turns=1), T, "mgpo", VIEW)
    with pytest.raises(ValueError, match="mode 'x'"):
        Episode(record(), CFG, T, "x", VIEW)  # type: ignore[arg-type]
    ep = Episode(record(), CFG, T, "direct", VIEW)
    with pytest.raises(RuntimeError, match="record r1: result"):
        ep.result()
    with pytest.raises(ValueError, match="2 token ids but 1 log-probs"):
        ep.step(Generation("x", [1, 2], [0.0], [5]))
    ep.step(Generation("x", [1], [0.0], [5]))
    with pytest.raises(RuntimeError, match="finished episode"):
        ep.step(Generation("x", [1], [0.0], [5]))
    bad = record()
    bad.width = 1999
    with pytest.raises(ValueError, match="record r1: width/height"):
        Episode(bad, CFG, T, "mgpo", VIEW)
    with pytest.raises(g.ImageError, match="record r1: 2000x1500"):
        Episode(record(), CFG, T, "mgpo", VIEW, max_image_pixels=1000)


def test_to_dict_is_json_ready():
    import json

    _, res, _ = run([box_text((50, 40, 88, 76)), "\\boxed{B}"])
    d = json.loads(json.dumps(res.to_dict()))
    assert d["correct"] and d["box_valid"] and d["turns"][0]["valid"] and d["generated_tokens"] > 0


def test_a_sampled_vision_token_is_an_invalid_turn_scored_masked_and_final():
    """On verl/vLLM the sampler is not ours: a turn holding a forbidden (vision) id ends the
    episode there (no next turn to break), is masked out of the loss and scores 0, even when its
    text would otherwise be a right answer or a valid box."""
    ep = Episode(record(), CFG, T, "mgpo", VIEW, forbidden_ids=(77,))
    box = "```json\n" + '[{"bbox_2d": [100, 100, 300, 300], "label": "ring"}]' + "\n```"
    ep.step(
        Generation(
            text=box + " \\boxed{B}", token_ids=[5, 77, 6], logprobs=[-1.0] * 3, prompt_delta_ids=[1, 2]
        )
    )
    assert ep.done and len(ep.images) == 1  # no crop turn
    turn = ep.turns[-1]
    assert not turn.valid and turn.reason == "sampled_vision_token"
    assert ep.invalid_turn == "sampled_vision_token"
    res = ep.result()
    assert res.response_mask == [0, 0, 0] and res.reward.score == 0.0 and res.box_valid is False
    assert res.to_dict()["invalid_turn"] == "sampled_vision_token"

    clean = Episode(record(), CFG, T, "direct", VIEW, forbidden_ids=(77,))
    clean.step(Generation(text="\\boxed{B}", token_ids=[5, 6], logprobs=[-1.0] * 2, prompt_delta_ids=[1]))
    assert clean.invalid_turn is None and clean.result().reward.score == 1.0


def test_the_decoded_original_cache_is_sized_by_params(monkeypatch):
    """episode.original_cache originals stay decoded (a verl worker serves dozens of records at
    once; 4 made every crop decode its original again)."""
    import components.episode as episode_module

    decoded = []
    real = g.load_original
    monkeypatch.setattr(g, "load_original", lambda *a, **k: decoded.append(1) or real(*a, **k))
    cfg = CFG.model_copy(update={"original_cache": 12})
    box = "```json\n" + '[{"bbox_2d": [20, 20, 120, 120], "label": "ring"}]' + "\n```"

    def crop_all():
        for i in range(10):
            ep = Episode(record(rid=f"c{i}"), cfg, T, "mgpo", VIEW)
            ep.step(Generation(text=box, token_ids=[5], logprobs=[-1.0], prompt_delta_ids=[1]))
            assert len(ep.images) == 2

    episode_module.clear_caches()
    crop_all()
    first = len(decoded)
    crop_all()
    assert first == 10 and len(decoded) == first  # all 10 originals still decoded
