"""The SFT trajectory parquet: verl 0.9.1's multi-turn SFT format plus a few columns of ours.

verl's `MultiTurnSFTDataset` reads `messages` (a list of `{role, content}` whose string content
holds one `<image>` placeholder per image, in order) and `images` (a list of `{bytes}`, one per
placeholder); it ignores other columns. Ours: `id` (trajectory id), `record_id`, `kind` (`mgpo`,
`mgpo_invalid` for the invalid-box path, `direct`), `num_tokens` (the rendered length with image
tokens, which the length limit was checked against) and `box_seen` (the turn-1 box in the seen
frame, null when there is none).

Images are stored as PNG of exactly the frame the model sees (the first view after
`smart_resize`, the crop after the crop budget): lossless, and already sized so that neither
qwen-vl-utils' `fetch_image` (verl) nor the processor resizes them again, so the turn-1 box
coordinates stay correct in both paths.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("record_id", pa.string()),
        ("kind", pa.string()),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary())]))),
        ("num_tokens", pa.int64()),
        ("box_seen", pa.list_(pa.float64())),
    ]
)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    # Level 1: about 8x faster than the default 6 on these small frames, files ~25% larger.
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class TrajectoryWriter:
    """Stream trajectory rows into one parquet file, `rows_per_group` rows per row group."""

    def __init__(self, path: str | Path, rows_per_group: int = 64):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows_per_group = rows_per_group
        self._writer = pq.ParquetWriter(self.path, SCHEMA, compression="zstd")
        self._buffer: list[dict] = []
        self.rows = 0

    def write(self, row: dict) -> None:
        self._buffer.append(row)
        self.rows += 1
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

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_row(
    traj_id: str,
    record_id: str,
    kind: str,
    messages: list[dict],
    images: list[Image.Image],
    num_tokens: int,
    box_seen: list[float] | None = None,
) -> dict:
    return {
        "id": traj_id,
        "record_id": record_id,
        "kind": kind,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "images": [{"bytes": png_bytes(img)} for img in images],
        "num_tokens": int(num_tokens),
        "box_seen": None if box_seen is None else [float(v) for v in box_seen],
    }
