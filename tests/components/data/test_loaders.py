"""Each benchmark loader on fixture files in each of its packagings, malformed rows included."""

from __future__ import annotations

import benchfiles as bf
import pytest

from components.data.loaders import Skipped, SourceError, load_benchmark, resolve_source
from components.data.loaders.common import parse_options_text, strip_option_prefix
from components.data.record import Record

LIMIT = 200_000_000


def split(items) -> tuple[dict[str, Record], dict[str, str]]:
    records, skipped = {}, {}
    for item in items:
        if isinstance(item, Skipped):
            skipped[item.id] = item.reason
        else:
            assert isinstance(item, Record)
            records[item.id] = item
    return records, skipped


def load(kind, path, tmp_path, limit=LIMIT, name="bench"):
    return split(load_benchmark(kind, str(path), name, "test", tmp_path, limit))


def test_vstar_folder(tmp_path):
    root = bf.vstar_folder(tmp_path / "vstar")
    records, skipped = load("vstar", root, tmp_path)
    assert sorted(records) == ["direct_attributes/sa_1", "direct_attributes/sa_2", "relative_position/sa_3"]
    r = records["direct_attributes/sa_1"]
    assert r.answer == "A" and r.options == [
        "red",
        "blue",
        "green",
        "white",
    ]  # published order, first correct
    assert r.target_boxes == [[10, 5, 30, 15]]  # [x, y, w, h] -> [x1, y1, x2, y2]
    assert (r.width, r.height, r.category, r.source) == (64, 48, "direct_attributes", "bench")
    assert r.image_bytes == (root / "direct_attributes/sa_1.jpg").read_bytes()  # never re-encoded
    clipped = records["direct_attributes/sa_2"]  # 40x30 png, bbox [30, 20, 30, 30] leaves it
    assert clipped.target_boxes == [[30.0, 20.0, 40.0, 30.0]] and clipped.meta["boxes_clipped"] is True
    assert len(records["relative_position/sa_3"].target_boxes) == 2
    assert "question" in skipped["direct_attributes/sa_4"]
    assert "truncated" in skipped["direct_attributes/sa_5"]
    assert "no area" in skipped["relative_position/sa_6"]


def test_vstar_jsonl(tmp_path):
    path = bf.vstar_jsonl(tmp_path / "vstar")
    records, skipped = load("vstar", path, tmp_path)
    assert sorted(records) == ["0", "1"]
    r0 = records["0"]
    assert r0.question == "What is the colour of the cup?"
    assert r0.options == ["red", "blue", "green", "white"] and r0.answer == "C"
    assert r0.target_boxes == []
    r1 = records["1"]  # no label: the sibling JSON's first option ("blue") is the answer
    assert r1.answer == "B" and r1.target_boxes == [[2.0, 3.0, 12.0, 13.0]]
    assert "not JSON" in skipped["line-3"]
    assert "not among" in skipped["3"]
    assert "not found" in skipped["4"]
    assert "options" in skipped["5"]


def test_vstar_parquet(tmp_path):
    path = bf.vstar_parquet(tmp_path / "vstar.parquet")
    records, skipped = load("vstar", path, tmp_path)
    assert records["q0"].options == ["left", "right"] and records["q0"].answer == "B"
    assert records["q0"].question == "Is the dog on the left or right of the cat?"
    assert records["q1"].width == 40 and records["q1"].answer == "A"
    assert "label" in skipped["q2"]


@pytest.mark.parametrize("writer", [bf.hrbench_tsv, bf.hrbench_parquet])
def test_hrbench(tmp_path, writer):
    path = writer(tmp_path / ("hr." + ("tsv" if writer is bf.hrbench_tsv else "parquet")))
    items = list(load_benchmark("hrbench", str(path), "hrbench_4k", "test", tmp_path, LIMIT))
    records = [i for i in items if isinstance(i, Record)]
    skipped = {i.id: i.reason for i in items if isinstance(i, Skipped)}
    # 4 cycles of one question keep their published option order; the answer text is invariant
    cycles = [r for r in records if r.meta["cycle_category"] == "0"]
    assert len(cycles) == 4
    assert {r.answer_text for r in cycles} == {"a cat"}
    assert [r.options[0] for r in cycles] == ["a cat", "a dog", "a bird", "a fish"]
    assert all(r.width == 96 and r.height == 54 and r.target_boxes == [] for r in records)
    assert "4" in skipped and ("base64" in skipped["4"] or "cannot be read" in skipped["4"])
    assert "not among the 4 options" in skipped["5"]
    # the duplicate index comes through the loader; the build step rejects it (test_build)
    assert sum(r.id == "2" for r in records) == 2


def test_mme_realworld_json(tmp_path):
    path = bf.mme_json(tmp_path / "mme")
    records, skipped = load("mme_realworld", path, tmp_path, name="mme_lite")
    r = records["perception/remote_sensing/color/0001"]
    assert r.options[:4] == ["red", "green", "blue", "white"] and len(r.options) == 5
    assert r.answer == "C" and r.category == "Remote Sensing"
    assert r.meta["task"] == "Perception" and r.meta["category"] == "color"
    assert records["perception/remote_sensing/count/0002"].answer == "E"  # "(E)" normalised
    assert "not found" in skipped["perception/remote_sensing/count/0003"]
    assert "Ground truth" in skipped["perception/remote_sensing/count/0004"]


def test_mme_realworld_tsv(tmp_path):
    path = bf.mme_tsv(tmp_path / "mme.tsv")
    records, skipped = load("mme_realworld", path, tmp_path)
    assert records["10"].options == ["STOP", "GO", "EXIT", "OPEN", "None"]
    assert records["10"].answer == "A" and records["10"].category == "Perception"
    assert "truncated" in skipped["11"]


def test_mme_realworld_parquet(tmp_path):
    path = bf.mme_parquet(tmp_path / "mme.parquet")
    records, skipped = load("mme_realworld", path, tmp_path)
    assert records["m0"].options == ["left", "middle", "right"] and records["m0"].answer == "C"
    assert "at least 2" in skipped["m1"]


def test_image_over_the_pixel_limit_is_refused_by_name(tmp_path):
    root = bf.vstar_folder(tmp_path / "vstar")
    records, skipped = load("vstar", root, tmp_path, limit=64 * 48 - 1)
    assert "direct_attributes/sa_1" in skipped
    assert "prepare.max_image_pixels" in skipped["direct_attributes/sa_1"]
    assert "bench direct_attributes/sa_1" in skipped["direct_attributes/sa_1"]
    assert "direct_attributes/sa_2" in records  # 40x30 fits


def test_bomb_header_refused_without_decoding(tmp_path):
    """A 12000x12000 PNG header with no pixel data: refused from its header (decoding it would
    fail differently, as truncated), so the size check runs before any decode."""
    root = tmp_path / "vstar/direct_attributes"
    root.mkdir(parents=True)
    (root / "big.png").write_bytes(bf.png_header_only(12_000, 12_000))
    (root / "big.json").write_text('{"question": "Q?", "options": ["a", "b"]}')
    _, skipped = load("vstar", tmp_path / "vstar", tmp_path, limit=100_000_000)
    assert "12000x12000" in skipped["direct_attributes/big"]
    assert "exceeds the limit of 100000000" in skipped["direct_attributes/big"]


def test_resolve_source(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw/hr.tsv").write_text("x")
    assert resolve_source("hr.tsv", tmp_path / "raw") == tmp_path / "raw/hr.tsv"
    assert resolve_source("DreamMr/HR-Bench", tmp_path / "raw") == "DreamMr/HR-Bench"
    with pytest.raises(SourceError, match="not found"):
        resolve_source("missing/dir/file.tsv", tmp_path / "raw")


def test_unknown_kind_and_unsupported_file(tmp_path):
    with pytest.raises(SourceError, match="unknown benchmark kind"):
        list(load_benchmark("nope", "x", "n", "test", tmp_path, LIMIT))
    bad = tmp_path / "x.csv"
    bad.write_text("a,b")
    with pytest.raises(SourceError, match="unsupported file type"):
        list(load_benchmark("hrbench", str(bad), "n", "test", tmp_path, LIMIT))


def test_option_text_parsing():
    q, opts = parse_options_text("Where?\n(A) up\n(B) down\nAnswer with the letter.")
    assert (q, opts) == ("Where?", ["up", "down"])
    q, opts = parse_options_text("Where? (A) up (B) down")
    assert (q, opts) == ("Where?", ["up", "down"])
    assert strip_option_prefix("(B) 12 (approx.)", "B") == "12 (approx.)"
    assert strip_option_prefix("A. red") == "red"
    assert strip_option_prefix("no prefix") == "no prefix"
