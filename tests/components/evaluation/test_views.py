"""Option shuffling, circular views, repeats, fixed chunks and fingerprints (pure, fast)."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from components.config import EvaluateConfig
from components.data.record import Record
from components.evaluation.runner import Group, plan_chunks
from components.evaluation.views import fingerprint, hash_path, permutation, views_of


def record(rid="q1", options=("red", "green", "blue", "gray"), answer="C", **meta) -> Record:
    return Record(
        id=rid,
        source="s",
        split="test",
        image_bytes=b"x",
        width=10,
        height=10,
        question="q?",
        options=list(options),
        answer=answer,
        category="c",
        meta=dict(meta),
    )


@given(st.integers(2, 8), st.integers(0, 7), st.integers(0, 1000), st.text(min_size=1, max_size=8))
def test_shuffled_answer_follows_its_option(n, answer, seed, rid):
    answer = answer % n
    rec = record(rid, [f"o{i}" for i in range(n)], "ABCDEFGH"[answer])
    (view,) = views_of(rec, seed, shuffle=True, circular=False, repeats=1)
    assert sorted(view.record.options) == sorted(rec.options)
    assert view.record.answer_text == rec.answer_text
    assert [rec.options[i] for i in view.order] == view.record.options


def test_shuffle_is_stable_and_seeded():
    assert permutation("q1", 4, 0, True) == permutation("q1", 4, 0, True)
    orders = {tuple(permutation(f"q{i}", 4, 0, True)) for i in range(40)}
    assert len(orders) > 10  # different questions get different orders
    assert {tuple(permutation("q1", 4, s, True)) for s in range(20)} != {tuple(range(4))}
    assert permutation("q1", 4, 0, False) == [0, 1, 2, 3]


def test_circular_views_are_every_rotation():
    rec = record()
    views = views_of(rec, 0, shuffle=False, circular=True, repeats=1)
    assert [v.record.options for v in views] == [
        ["red", "green", "blue", "gray"],
        ["green", "blue", "gray", "red"],
        ["blue", "gray", "red", "green"],
        ["gray", "red", "green", "blue"],
    ]
    assert [v.record.answer for v in views] == ["C", "B", "A", "D"]
    assert {v.group for v in views} == {"q1"} and [v.cycle for v in views] == [0, 1, 2, 3]


def test_shipped_cycles_are_grouped_not_cycled_again():
    rec = record(circular_group="hr-17")
    views = views_of(rec, 0, shuffle=True, circular=True, repeats=1)
    assert len(views) == 1 and views[0].group == "hr-17"
    assert views[0].record.options == rec.options  # published permutation kept
    assert views_of(rec, 0, shuffle=False, circular=False, repeats=1)[0].group == "q1"


def test_hrbench_rows_of_one_question_form_one_group():
    """HR-Bench ships each question as 4 rows (cycle1..cycle4, options rotated, own index)."""
    opts = ["red", "green", "blue", "gray"]
    rows = [
        dataclasses.replace(
            record(str(100 + c), opts[c:] + opts[:c], "ABCD"[(2 - c) % 4], cycle_category=f"cycle{c + 1}")
        )
        for c in range(4)
    ]
    other = record("7", opts, "A", cycle_category="cycle1")
    other = dataclasses.replace(other, question="another question?")
    views = [v for r in [*rows, other] for v in views_of(r, 0, shuffle=True, circular=True, repeats=1)]
    assert len(views) == 5
    assert len({v.group for v in views[:4]}) == 1 and views[4].group != views[0].group
    assert [v.cycle for v in views[:4]] == [0, 1, 2, 3]
    assert all(v.record.answer_text == "blue" for v in views[:4])
    assert [v.record.options for v in views[:4]] == [r.options for r in rows]  # not reshuffled
    # Without circular every row is its own question (HR-Bench's own mean over cycles).
    assert len({views_of(r, 0, True, False, 1)[0].group for r in rows}) == 4


def test_repeats():
    views = views_of(record(), 0, shuffle=True, circular=True, repeats=3)
    assert len(views) == 12 and {v.repeat for v in views} == {0, 1, 2}


def test_chunks_are_fixed_on_resume():
    cfg = EvaluateConfig(batch_size=3, shuffle_options=False)
    recs = [record(f"q{i}") for i in range(7)]
    full = list(plan_chunks(Group("m", "b", "direct", "fp"), recs, cfg, lambda k: False))
    assert [len(c.views) for c in full] == [3, 3, 1]
    done = {"m|b|direct|q1|c0|r0", "m|b|direct|q3|c0|r0", "m|b|direct|q4|c0|r0", "m|b|direct|q5|c0|r0"}
    group = Group("m", "b", "direct", "fp")
    resumed = list(plan_chunks(group, recs, cfg, done.__contains__))
    # q3-q5 were one chunk and are all done: no chunk; the others keep their chunk and seed.
    assert [[v.source_id for v in c.views] for c in resumed] == [["q0", "q2"], ["q6"]]
    assert [c.seed for c in resumed] == [full[0].seed, full[2].seed]
    assert group.views_done_before == 4 and group.views_total == 7 and len(group.keys) == 7


def test_oracle_leaves_out_records_without_boxes():
    cfg = EvaluateConfig(batch_size=4)
    recs = [record("a"), dataclasses.replace(record("b"), target_boxes=[[1.0, 1.0, 5.0, 5.0]])]
    group = Group("m", "b", "oracle", "fp")
    chunks = list(plan_chunks(group, recs, cfg, lambda k: False))
    assert [v.source_id for c in chunks for v in c.views] == ["b"] and group.skipped_no_target == 1


def test_fingerprint_and_hash_path(tmp_path):
    assert fingerprint(a=1, b=[1, 2]) == fingerprint(b=[1, 2], a=1) != fingerprint(a=2, b=[1, 2])
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "w.bin").write_bytes(b"abc")
    h = hash_path(tmp_path / "m")
    (tmp_path / "m" / "w.bin").write_bytes(b"abd")
    assert hash_path(tmp_path / "m") != h
