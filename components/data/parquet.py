"""Canonical records on disk: a parquet file that verl 0.9.1's `RLHFDataset` reads as is.

One row per question, with a fixed schema (so files are byte-identical for identical records):
- `data_source` (the record's source), `ability` ("visual_search"), `agent_name` ("mgpo_agent");
- `prompt`: `[{"role": "user", "content": "<image>" + question}]`. Deliberately minimal: it is
  what verl's length filter and the single-turn path see; the MGPO agent loop rebuilds the real
  turn-1/turn-2 prompts from `extra_info` with `components/prompts.py` (the templates live once);
- `images`: `[{"bytes": original encoded bytes, "path": None}]` (never re-encoded);
- `reward_model`: `{"style": "rule", "ground_truth": answer letter}`;
- `extra_info`: index, id, split, question, options, answer, category, target_boxes, width,
  height, and `meta` as a JSON string (its keys differ between sources);
- `id` at the top level as well.

Writing streams: rows are buffered up to `rows_per_group` and written as one row group, so
memory holds one row group whatever the dataset size. `read_records` streams row group by row
group and is what SFT, RL and evaluation use.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from components.data.record import Record

AGENT_NAME = "mgpo_agent"
ABILITY = "visual_search"
IMAGE_PLACEHOLDER = "<image>"

EXTRA_INFO = pa.struct(
    [
        ("index", pa.int64()),
        ("id", pa.string()),
        ("split", pa.string()),
        ("question", pa.string()),
        ("options", pa.list_(pa.string())),
        ("answer", pa.string()),
        ("category", pa.string()),
        ("target_boxes", pa.list_(pa.list_(pa.float64()))),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("meta", pa.string()),
    ]
)

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", EXTRA_INFO),
        ("agent_name", pa.string()),
    ]
)


IMAGE_BYTES_COLUMN = "images.list.element.bytes"


def _leaf_paths(schema: pa.Schema) -> list[str]:
    """Parquet leaf column paths (pyarrow's per-column compression is keyed by them)."""

    def walk(name: str, typ: pa.DataType) -> list[str]:
        if pa.types.is_struct(typ):
            return [
                p
                for i in range(typ.num_fields)
                for p in walk(f"{name}.{typ.field(i).name}", typ.field(i).type)
            ]
        if pa.types.is_list(typ):
            return walk(f"{name}.list.element", typ.value_type)
        return [name]

    return [p for f in schema for p in walk(f.name, f.type)]


class ParquetFormatError(ValueError):
    """A parquet file is not in the canonical schema; the message names the file and row."""


def record_to_row(record: Record, index: int) -> dict:
    """The parquet row of one record (`index` is its position in the file)."""
    return {
        "id": record.id,
        "data_source": record.source,
        "prompt": [{"role": "user", "content": IMAGE_PLACEHOLDER + record.question}],
        "images": [{"bytes": bytes(record.image_bytes), "path": None}],
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": record.answer},
        "extra_info": {
            "index": index,
            "id": record.id,
            "split": record.split,
            "question": record.question,
            "options": list(record.options),
            "answer": record.answer,
            "category": record.category,
            "target_boxes": [[float(v) for v in box] for box in record.target_boxes],
            "width": record.width,
            "height": record.height,
            # sort_keys: dict order must not change the file's bytes.
            "meta": json.dumps(record.meta, sort_keys=True, separators=(",", ":")),
        },
        "agent_name": AGENT_NAME,
    }


def row_to_record(row: dict, where: str = "row") -> Record:
    """Rebuild a record from a parquet row (inverse of `record_to_row`)."""
    try:
        info = row["extra_info"]
        images = row["images"]
        if not images or not images[0].get("bytes"):
            raise ParquetFormatError(f"{where}: images[0].bytes is empty")
        return Record(
            id=row["id"],
            source=row["data_source"],
            split=info["split"],
            image_bytes=images[0]["bytes"],
            width=int(info["width"]),
            height=int(info["height"]),
            question=info["question"],
            options=list(info["options"]),
            answer=info["answer"],
            category=info["category"],
            target_boxes=[list(b) for b in info["target_boxes"] or []],
            meta=json.loads(info["meta"]) if info.get("meta") else {},
        )
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ParquetFormatError(f"{where}: not a canonical row ({type(exc).__name__}: {exc})") from None


class RecordWriter:
    """Stream records into one parquet file, one row group per `rows_per_group` records.

    Use as a context manager. Counts rows, categories and answer letters as it goes.
    """

    def __init__(self, path: str | Path, rows_per_group: int = 64, compression: str = "zstd"):
        if rows_per_group <= 0:
            raise ValueError(f"rows_per_group must be positive, got {rows_per_group}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows_per_group = rows_per_group
        # Images are already compressed (JPEG/PNG): compress every column but their bytes.
        codecs = {leaf: compression for leaf in _leaf_paths(SCHEMA)}
        codecs[IMAGE_BYTES_COLUMN] = "none"
        self._writer = pq.ParquetWriter(self.path, SCHEMA, compression=codecs)
        self._buffer: list[dict] = []
        self.rows = 0
        self.categories: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()

    def write(self, record: Record) -> None:
        self._buffer.append(record_to_row(record, self.rows))
        self.rows += 1
        self.categories[record.category] += 1
        self.answers[record.answer] += 1
        if len(self._buffer) >= self.rows_per_group:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=SCHEMA))
            self._buffer = []

    def close(self) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_records(path: str | Path, records, rows_per_group: int = 64) -> int:
    """Write an iterable of records; return the row count."""
    with RecordWriter(path, rows_per_group) as writer:
        for record in records:
            writer.write(record)
    return writer.rows


def read_records(path: str | Path, limit: int | None = None) -> Iterator[Record]:
    """Stream the records of a canonical parquet file, one row group in memory at a time."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} not found (run `mgpo prepare`?)")
    pf = pq.ParquetFile(path)
    missing = [n for n in ("id", "data_source", "images", "extra_info") if n not in pf.schema_arrow.names]
    if missing:
        raise ParquetFormatError(f"{path}: missing columns {missing}; not a canonical dataset file")
    count = 0
    for group in range(pf.num_row_groups):
        for offset, row in enumerate(pf.read_row_group(group).to_pylist()):
            if limit is not None and count >= limit:
                return
            yield row_to_record(row, f"{path} row group {group} row {offset}")
            count += 1


def count_rows(path: str | Path) -> int:
    return pq.ParquetFile(path).metadata.num_rows


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
