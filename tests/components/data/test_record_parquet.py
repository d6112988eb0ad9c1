"""The canonical record's validation and its parquet round trip (schema, streaming, bytes kept)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.data.parquet import (
    AGENT_NAME,
    SCHEMA,
    ParquetFormatError,
    RecordWriter,
    read_records,
    record_to_row,
    sha256_file,
    write_records,
)
from components.data.record import Record, RecordError, index_of, letter


def make(i: int = 0, **kw) -> Record:
    base = dict(
        id=f"r{i}",
        source="unit",
        split="test",
        image_bytes=b"\xff\xd8" + bytes([i % 256]) * 100,
        width=100,
        height=80,
        question="What colour?",
        options=["red", "blue", "green"],
        answer="B",
        category="attribute",
        target_boxes=[[1.0, 2.0, 30.0, 40.0]],
        meta={"z": 1, "a": {"nested": [1, 2]}},
    )
    base.update(kw)
    return Record(**base)


def test_letters():
    assert letter(0) == "A" and index_of("E") == 4
    with pytest.raises(ValueError):
        index_of("a")
    with pytest.raises(ValueError):
        letter(26)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": ""}, "id must be"),
        ({"answer": "D"}, "not among the 3 options"),
        ({"answer": "b"}, "capital letter"),
        ({"options": ["only"]}, "options must be"),
        ({"options": ["a", "a"]}, "repeat"),
        ({"question": "  "}, "question is empty"),
        ({"image_bytes": b""}, "image_bytes is empty"),
        ({"width": 0}, "not positive"),
        ({"target_boxes": [[5, 5, 2, 9]]}, "not ordered"),
        ({"target_boxes": [[0, 0, 101, 10]]}, "leaves the 100x80 image"),
        ({"target_boxes": [[0, 0, 1]]}, "four finite numbers"),
    ],
)
def test_validation_names_record_and_field(change, message):
    with pytest.raises(RecordError, match=message) as info:
        make(**change).validate()
    assert "record" in str(info.value)


@settings(max_examples=60, deadline=None)
@given(
    x1=st.floats(0, 99, allow_nan=False),
    y1=st.floats(0, 79, allow_nan=False),
    w=st.floats(0.01, 100, allow_nan=False),
    h=st.floats(0.01, 80, allow_nan=False),
)
def test_box_validation_matches_geometry(x1, y1, w, h):
    box = [x1, y1, x1 + w, y1 + h]
    inside = box[2] <= 100 and box[3] <= 80 and box[0] < box[2] and box[1] < box[3]
    if inside:
        make(target_boxes=[box]).validate()
    else:
        with pytest.raises(RecordError):
            make(target_boxes=[box]).validate()


def test_row_is_verl_shaped():
    row = record_to_row(make(), 7)
    assert row["prompt"] == [{"role": "user", "content": "<image>What colour?"}]
    assert row["images"][0]["bytes"].startswith(b"\xff\xd8") and row["images"][0]["path"] is None
    assert row["reward_model"] == {"style": "rule", "ground_truth": "B"}
    assert row["agent_name"] == AGENT_NAME and row["data_source"] == "unit" and row["id"] == "r0"
    info = row["extra_info"]
    assert info["index"] == 7 and info["options"] == ["red", "blue", "green"]
    assert json.loads(info["meta"]) == {"a": {"nested": [1, 2]}, "z": 1}
    assert info["meta"].index('"a"') < info["meta"].index('"z"')  # sorted keys: order-free bytes


def test_round_trip_streams_by_row_group(tmp_path):
    records = [make(i) for i in range(10)]
    path = tmp_path / "x.parquet"
    assert write_records(path, records, rows_per_group=4) == 10
    pf = pq.ParquetFile(path)
    assert pf.num_row_groups == 3 and pf.schema_arrow == SCHEMA
    back = list(read_records(path))
    assert back == records  # image bytes, boxes, meta: all identical
    assert [r.id for r in read_records(path, limit=5)] == [f"r{i}" for i in range(5)]


def test_writer_counts_and_empty_file(tmp_path):
    with RecordWriter(tmp_path / "e.parquet", 8) as w:
        pass
    assert w.rows == 0 and list(read_records(tmp_path / "e.parquet")) == []
    with RecordWriter(tmp_path / "c.parquet", 8) as w:
        for i in range(5):
            w.write(make(i, answer="ABC"[i % 3], category="spatial" if i % 2 else "attribute"))
    assert dict(w.answers) == {"A": 2, "B": 2, "C": 1} and dict(w.categories) == {
        "attribute": 3,
        "spatial": 2,
    }


def test_same_records_same_bytes(tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_records(a, [make(i) for i in range(6)], 4)
    write_records(b, [make(i) for i in range(6)], 4)
    assert sha256_file(a) == sha256_file(b)


def test_reading_a_foreign_parquet_names_the_file(tmp_path):
    import pyarrow as pa

    path = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"a": [1]}), path)
    with pytest.raises(ParquetFormatError, match=r"foreign\.parquet"):
        list(read_records(path))
    with pytest.raises(FileNotFoundError, match="mgpo prepare"):
        list(read_records(tmp_path / "missing.parquet"))
