"""Small benchmark files in every packaging the loaders read, written by the tests themselves
(the real benchmarks are not on this machine). Each writer returns what it wrote, including
malformed rows, so tests can check both the records and the skips."""

from __future__ import annotations

import base64
import csv
import io
import json
import struct
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def jpeg(w: int = 64, h: int = 48, colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png(w: int = 40, h: int = 30, colour=(10, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, "PNG")
    return buf.getvalue()


def truncated_jpeg() -> bytes:
    """A JPEG whose header is intact but whose scan data stops at 70% (decode fails)."""
    import numpy as np

    noise = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    return data[: int(len(data) * 0.7)]


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels but carries no pixel data (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------------------------ V*


def vstar_folder(root: Path) -> Path:
    """2 categories: 3 good questions (sa_2's box leaves its 40x30 image: clipped), plus a JSON
    without `question`, a truncated image and a box with no area."""
    da, rp = root / "direct_attributes", root / "relative_position"
    da.mkdir(parents=True)
    rp.mkdir(parents=True)

    def item(folder: Path, stem: str, data: dict, image: bytes, suffix: str = ".jpg"):
        (folder / f"{stem}{suffix}").write_bytes(image)
        (folder / f"{stem}.json").write_text(json.dumps(data))

    item(
        da,
        "sa_1",
        {
            "question": "What is the colour of the cup?",
            "options": ["red", "blue", "green", "white"],
            "bbox": [[10, 5, 20, 10]],
            "target_object": ["cup"],
        },
        jpeg(),
    )
    item(
        da,
        "sa_2",
        {
            "question": "What is the material of the glove?",
            "options": ["rubber", "cotton"],
            "bbox": [[30, 20, 30, 30]],
            "target_object": ["glove"],
        },
        png(),
        ".png",
    )
    item(
        rp,
        "sa_3",
        {
            "question": "Is the dog on the left or right of the cat?",
            "options": ["left", "right"],
            "bbox": [[1, 1, 5, 5], [30, 20, 10, 10]],
            "target_object": ["dog", "cat"],
        },
        jpeg(),
    )
    item(da, "sa_4", {"options": ["a", "b"], "bbox": [[1, 1, 2, 2]]}, jpeg())  # no question
    item(da, "sa_5", {"question": "Q?", "options": ["a", "b"], "bbox": [[1, 1, 2, 2]]}, truncated_jpeg())
    item(rp, "sa_6", {"question": "Q?", "options": ["a", "b"], "bbox": [[1, 1, 0, 2]]}, jpeg())  # no area
    return root


def vstar_jsonl(root: Path) -> Path:
    """A jsonl beside image files; one image has a sibling JSON with boxes (and no label)."""
    (root / "direct_attributes").mkdir(parents=True)
    (root / "direct_attributes/a.jpg").write_bytes(jpeg())
    (root / "direct_attributes/b.jpg").write_bytes(jpeg(80, 60))
    (root / "direct_attributes/b.json").write_text(
        json.dumps({"question": "What colour?", "options": ["blue", "red"], "bbox": [[2, 3, 10, 10]]})
    )
    text = "What is the colour of the cup?\n(A) red\n(B) blue\n(C) green\n(D) white\nAnswer with the option's letter from the given choices directly."
    lines = [
        json.dumps(
            {
                "question_id": 0,
                "image": "direct_attributes/a.jpg",
                "text": text,
                "category": "direct_attributes",
                "label": "C",
            }
        ),
        json.dumps(
            {
                "question_id": 1,
                "image": "direct_attributes/b.jpg",
                "text": "What colour?\n(A) red\n(B) blue",
                "category": "direct_attributes",
            }
        ),
        "{not json",
        json.dumps(
            {
                "question_id": 3,
                "image": "direct_attributes/a.jpg",
                "text": text,
                "category": "direct_attributes",
                "label": "E",
            }
        ),
        json.dumps(
            {
                "question_id": 4,
                "image": "direct_attributes/missing.jpg",
                "text": text,
                "category": "x",
                "label": "A",
            }
        ),
        json.dumps(
            {"question_id": 5, "image": "direct_attributes/a.jpg", "text": "No options here", "label": "A"}
        ),
    ]
    path = root / "test_questions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def vstar_parquet(path: Path) -> Path:
    text = "Is the dog on the left or right of the cat? (A) left (B) right"
    rows = [
        {
            "question_id": "q0",
            "text": text,
            "label": "B",
            "category": "relative_position",
            "image": {"bytes": jpeg(), "path": "x.jpg"},
        },
        {
            "question_id": "q1",
            "text": "What colour?\n(A) red\n(B) blue\n(C) green\n(D) white",
            "label": "A",
            "category": "direct_attributes",
            "image": {"bytes": png(), "path": None},
        },
        {
            "question_id": "q2",
            "text": text,
            "label": None,
            "category": "relative_position",
            "image": {"bytes": jpeg(), "path": None},
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ------------------------------------------------------------------------------ HR-Bench


def hrbench_rows() -> list[dict]:
    img = b64(jpeg(96, 54))
    rows = []
    opts = ["a cat", "a dog", "a bird", "a fish"]
    for cycle in range(4):
        rot = opts[cycle:] + opts[:cycle]
        rows.append(
            {
                "index": cycle,
                "question": "What animal is on the sign?",
                "answer": "ABCD"[(4 - cycle) % 4],
                "category": "single",
                "A": rot[0],
                "B": rot[1],
                "C": rot[2],
                "D": rot[3],
                "cycle_category": "0",
                "image": img,
            }
        )
    rows.append(
        {
            "index": 4,
            "question": "Q?",
            "answer": "A",
            "category": "cross",
            "A": "x",
            "B": "y",
            "C": "z",
            "D": "w",
            "cycle_category": "1",
            "image": "@@not-base64@@",
        }
    )
    rows.append(
        {
            "index": 5,
            "question": "Q?",
            "answer": "F",
            "category": "cross",
            "A": "x",
            "B": "y",
            "C": "z",
            "D": "w",
            "cycle_category": "1",
            "image": img,
        }
    )
    rows.append(
        {
            "index": 2,
            "question": "dup",
            "answer": "A",
            "category": "cross",
            "A": "x",
            "B": "y",
            "C": "z",
            "D": "w",
            "cycle_category": "2",
            "image": img,
        }
    )
    return rows


def hrbench_tsv(path: Path) -> Path:
    rows = hrbench_rows()
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


def hrbench_parquet(path: Path) -> Path:
    """The same rows with raw image bytes (as some parquet exports store them)."""
    rows = hrbench_rows()
    for r in rows:
        r["image"] = b"\x00\x01 not an image" if r["index"] == 4 else base64.b64decode(r["image"])
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ------------------------------------------------------------------------- MME-RealWorld


def mme_json(root: Path) -> Path:
    """The original JSON + image folder; one missing image, one missing Ground truth."""
    (root / "remote_sensing").mkdir(parents=True)
    (root / "remote_sensing/0001.png").write_bytes(png(120, 90))
    (root / "remote_sensing/0002.jpg").write_bytes(jpeg(100, 80))
    choices = ["(A) red", "(B) green", "(C) blue", "(D) white", "(E) The image does not feature the color."]
    items = [
        {
            "Question_id": "perception/remote_sensing/color/0001",
            "Image": "remote_sensing/0001.png",
            "Text": "What colour is the roof?",
            "Question Type": "Multiple Choice",
            "Answer choices": choices,
            "Ground truth": "C",
            "Task": "Perception",
            "Subtask": "Remote Sensing",
            "Category": "color",
        },
        {
            "Question_id": "perception/remote_sensing/count/0002",
            "Image": "remote_sensing/0002.jpg",
            "Text": "How many cars?",
            "Answer choices": ["(A) 1", "(B) 2", "(C) 3", "(D) 4", "(E) 5"],
            "Ground truth": "(E)",
            "Task": "Perception",
            "Subtask": "Remote Sensing",
            "Category": "count",
        },
        {
            "Question_id": "perception/remote_sensing/count/0003",
            "Image": "remote_sensing/0003.jpg",
            "Text": "Q?",
            "Answer choices": choices,
            "Ground truth": "A",
            "Task": "Perception",
            "Subtask": "Remote Sensing",
            "Category": "count",
        },
        {
            "Question_id": "perception/remote_sensing/count/0004",
            "Image": "remote_sensing/0001.png",
            "Text": "Q?",
            "Answer choices": choices,
            "Task": "Perception",
            "Subtask": "Remote Sensing",
            "Category": "count",
        },
    ]
    path = root / "MME-RealWorld-Lite.json"
    path.write_text(json.dumps(items))
    return path


def mme_base64_rows() -> list[dict]:
    return [
        {
            "index": 10,
            "image": b64(jpeg()),
            "question": "What is written on the sign?",
            "multi-choice options": "The choices are listed below:\n(A) STOP\n(B) GO\n(C) EXIT\n(D) OPEN\n(E) None",
            "answer": "A",
            "category": "OCR with Complex Context",
            "l2-category": "Perception",
        },
        {
            "index": 11,
            "image": b64(truncated_jpeg()),
            "question": "Q?",
            "multi-choice options": "The choices are listed below:\n(A) a\n(B) b",
            "answer": "B",
            "category": "Monitoring",
            "l2-category": "Perception",
        },
    ]


def mme_tsv(path: Path) -> Path:
    rows = mme_base64_rows()
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


def mme_parquet(path: Path) -> Path:
    """lmms-eval style: `question_id`, `bytes` (base64), options as a list."""
    rows = [
        {
            "question_id": "m0",
            "bytes": b64(png()),
            "question": "Which lane is the car in?",
            "multi-choice options": ["(A) left", "(B) middle", "(C) right"],
            "answer": "C",
            "category": "Autonomous_Driving",
        },
        {
            "question_id": "m1",
            "bytes": b64(png()),
            "question": "Q?",
            "multi-choice options": ["(A) x"],
            "answer": "A",
            "category": "Autonomous_Driving",
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
