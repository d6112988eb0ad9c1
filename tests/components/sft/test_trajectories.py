"""SFT trajectories built by the shared Episode: boxes, crops, both paths, lengths, bad input."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sft_fixtures import ROOT

from components import grounding as g
from components import prompts
from components.config import EpisodeConfig, SFTConfig, SyntheticConfig
from components.data.synthetic import generate_split, split_specs
from components.evaluation.runner import first_view_budget
from components.models.loading import load_processor
from components.sft import trajectories as tr
from components.sft.trainer import encode_trajectory

EPISODE = EpisodeConfig()
TEMPLATES = prompts.load_templates(ROOT / "components" / "templates.yaml", "paper")


@pytest.fixture(scope="module")
def records():
    cfg = SyntheticConfig(width=1024, height=768, train=8)
    spec = next(s for s in split_specs(cfg) if s.name == "train")
    return list(generate_split(cfg, 0, spec))


@pytest.fixture(scope="module")
def processor(tiny_bundle):
    return load_processor(str(tiny_bundle))


def build(tmp_path, records, processor, name="t.parquet", **sft):
    path = tmp_path / name
    stats = tr.build_trajectories(
        records, path, SFTConfig(**sft), EPISODE, TEMPLATES, processor, first_view_budget(processor)
    )
    return path, stats, pq.read_table(path).to_pylist() if path.exists() else []


def image(row, k) -> Image.Image:
    return Image.open(io.BytesIO(row["images"][k]["bytes"])).convert("RGB")


def test_two_turn_trajectories_follow_the_episode(tmp_path, records, processor):
    _path, stats, rows = build(tmp_path, records, processor, missing_box_share=0.0)
    assert stats.written == len(records) == len(rows) and stats.kinds == {"mgpo": len(records)}
    budget = first_view_budget(processor)
    for row, record in zip(rows, records, strict=True):
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant", "user", "assistant"]
        assert row["messages"][0]["content"] == TEMPLATES.system
        assert row["messages"][1]["content"].startswith("<image>Question: ")
        assert row["messages"][3]["content"].startswith(TEMPLATES.valid_prefix + "<image>")
        assert (
            row["messages"][4]["content"] == f"The answer is {record.answer_text}. \\boxed{{{record.answer}}}"
        )
        # Turn 1: a valid box in the first view, near the target(s).
        first = image(row, 0)
        assert first.size == g.seen_size(record.width, record.height, *budget)
        parsed = g.parse_box(row["messages"][2]["content"])
        assert parsed.form == "fenced_json" and list(parsed.box) == row["box_seen"]
        box, reason = g.validate_box(parsed.box, *first.size, min_side=EPISODE.min_box_side)
        assert reason is None
        frame = g.Frame.first_view(first.size, (record.width, record.height))
        target = g.union([tuple(b) for b in record.target_boxes])
        assert g.coverage(target, frame.to_original(box)) > 0.7
        # Turn 2 shows the crop of the ORIGINAL at that box, resized into the crop budget.
        original = g.load_original(record.image_bytes)
        expected = g.crop(original, frame.to_original(box), EPISODE.crop_min_pixels, EPISODE.crop_max_pixels)
        assert image(row, 1).tobytes() == expected.tobytes()


def test_invalid_box_path_shows_the_first_view_again(tmp_path, records, processor):
    _, stats, rows = build(tmp_path, records, processor, missing_box_share=1.0)
    assert stats.kinds == {"mgpo_invalid": len(records)}
    for row in rows:
        assert g.parse_box(row["messages"][2]["content"]) is None and row["box_seen"] is None
        assert row["messages"][3]["content"].startswith(TEMPLATES.invalid_prefix + "<image>")
        assert image(row, 1).tobytes() == image(row, 0).tobytes()


def test_direct_trajectories(tmp_path, records, processor):
    no_boxes = [dataclasses.replace(records[0], target_boxes=[]), *records[1:3]]
    _, stats, rows = build(tmp_path, no_boxes, processor, direct_share=0.0)
    assert rows[0]["kind"] == "direct" and [r["kind"] for r in rows[1:]] != ["direct", "direct"]
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant"]
    assert len(rows[0]["images"]) == 1 and rows[0]["messages"][0]["content"] == TEMPLATES.direct_system
    _, stats, _ = build(tmp_path, records, processor, "d.parquet", direct_share=1.0)
    assert stats.kinds == {"direct": len(records)}


def test_token_counts_match_the_trainer_and_long_ones_are_skipped(tmp_path, records, processor):
    _, _stats, rows = build(tmp_path, records, processor, missing_box_share=0.5)
    for row in rows:
        images = [image(row, k) for k in range(len(row["images"]))]
        assert row["num_tokens"] == len(encode_trajectory(row["messages"], images, processor)["input_ids"])
    limit = sorted(r["num_tokens"] for r in rows)[len(rows) // 2]
    _, short, kept = build(
        tmp_path, records, processor, "s.parquet", missing_box_share=0.5, max_seq_len=limit
    )
    assert short.skipped_too_long == sum(r["num_tokens"] > limit for r in rows) > 0
    assert short.written == len(kept) == len(rows) - short.skipped_too_long
    assert all(r["num_tokens"] <= limit for r in kept)


def test_same_seed_same_bytes_and_bad_records_are_named(tmp_path, records, processor):
    a, _, _ = build(tmp_path, records[:3], processor, "a.parquet")
    b, _, _ = build(tmp_path, records[:3], processor, "b.parquet")
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    broken = dataclasses.replace(records[1], image_bytes=b"not an image")
    _, stats, rows = build(tmp_path, [records[0], broken], processor, "c.parquet")
    assert stats.written == 1 and stats.skipped_errors == 1 and len(rows) == 1
    assert stats.errors[0].startswith(f"record {broken.id}: ImageError")


@settings(max_examples=200, deadline=None)
@given(
    w=st.integers(1, 14),
    h=st.integers(1, 14),
    fx=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0.001, 1), st.floats(0.001, 1)),
    jitter=st.floats(0, 0.5),
    seed=st.integers(0, 10**6),
    grid=st.sampled_from([0, 28, 56]),
)
def test_turn1_box_is_always_valid_after_rendering(w, h, fx, jitter, seed, grid):
    """Whatever the target (even a sliver at an edge) and the jitter, the rendered turn-1 box
    parses back valid in a first view of at least 2x2 merged tokens."""
    from types import SimpleNamespace

    seen = (max(2, w) * 28, max(2, h) * 28)
    orig = (seen[0] * 8, seen[1] * 8)
    x1, y1 = fx[0] * (orig[0] - 1), fx[1] * (orig[1] - 1)
    target = [x1, y1, x1 + fx[2] * (orig[0] - x1), y1 + fx[3] * (orig[1] - y1)]
    episode = SimpleNamespace(frames=[g.Frame.first_view(seen, orig)])
    record = SimpleNamespace(target_boxes=[target])
    box = tr.target_box_seen(record, episode, random.Random(seed), jitter, EPISODE.min_box_side, grid)
    parsed = g.parse_box(prompts.render_box(TEMPLATES, box, "x"))
    _, reason = g.validate_box(parsed.box, *seen, min_side=EPISODE.min_box_side)
    assert reason is None, (target, box, parsed.box, seen)
    if grid:
        # On the grid (or on the frame's edge).
        assert all(v % grid == 0 or v in seen for v in box), box
