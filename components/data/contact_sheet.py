"""A contact sheet: a grid of sample thumbnails with their target boxes drawn, an inset of the
first box's centre at full resolution (what a crop shows that the thumbnail loses), and captions
(id, question, options with the answer marked), saved as PNG for MLflow and the dataset folder.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from components.data.record import LETTERS, Record

BOX_COLOURS = ((255, 0, 255), (0, 255, 255), (255, 255, 0))


def tile(record: Record, width: int = 360, caption_lines: int = 7) -> Image.Image:
    with Image.open(io.BytesIO(record.image_bytes)) as src:
        img = src.convert("RGB")
    scale = width / record.width
    thumb = img.resize((width, max(1, round(record.height * scale))), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(thumb)
    for i, box in enumerate(record.target_boxes):
        draw.rectangle([v * scale for v in box], outline=BOX_COLOURS[i % len(BOX_COLOURS)], width=2)
    if record.target_boxes:
        # The box's centre at 1:1 (no resampling, which would blur fine detail away again).
        x1, y1, x2, y2 = record.target_boxes[0]
        half = max(1, round(min(width // 3, x2 - x1, y2 - y1) / 2))
        cx, cy = round((x1 + x2) / 2), round((y1 + y2) / 2)
        inset = img.crop((cx - half, cy - half, cx + half, cy + half))
        x = width - inset.width - 3
        draw.rectangle((x - 2, 1, width - 1, inset.height + 4), fill=BOX_COLOURS[0])
        thumb.paste(inset, (x, 3))
    font = ImageFont.load_default()
    lines = [record.id]
    lines += textwrap.wrap(record.question, 58)[:3]
    lines += [
        ("* " if LETTERS[i] == record.answer else "  ") + f"({LETTERS[i]}) {o}"[:56]
        for i, o in enumerate(record.options)
    ]
    lines = lines[:caption_lines]
    out = Image.new("RGB", (width, thumb.height + 14 * caption_lines + 6), (255, 255, 255))
    out.paste(thumb, (0, 0))
    text = ImageDraw.Draw(out)
    for n, line in enumerate(lines):
        text.text((4, thumb.height + 3 + 14 * n), line, fill=(0, 0, 0), font=font)
    return out


def contact_sheet(records: list[Record], path: str | Path, columns: int = 3, width: int = 360) -> Path:
    """Write a grid of `records` to `path` (PNG) and return the path."""
    if not records:
        raise ValueError("contact sheet needs at least one record")
    tiles = [tile(r, width) for r in records]
    rows = (len(tiles) + columns - 1) // columns
    cell_h = max(t.height for t in tiles)
    sheet = Image.new("RGB", (columns * (width + 8) + 8, rows * (cell_h + 8) + 8), (200, 200, 200))
    for i, t in enumerate(tiles):
        sheet.paste(t, (8 + (i % columns) * (width + 8), 8 + (i // columns) * (cell_h + 8)))
    path = Path(path)
    sheet.save(path, "PNG")
    return path
