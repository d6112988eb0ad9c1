"""report.html: one self-contained page per evaluation (opens offline, no external resource).

Contents: a metrics table per benchmark (every model and mode, with 95% intervals, grounding
and cost figures) and per-category accuracies; the PNG plots; then a card per sample (at most
`max_cards` per model, benchmark and mode) with the original image and the model's box (red)
and the target (dashed green) drawn over it, each crop the model was shown (re-cut from the
original with `components.grounding.crop`, exactly as the episode cut it), each turn's prompt
and response, the answer and whether it was right. Selects filter the cards by correctness,
category, mode, model and benchmark.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from components import grounding

THUMB_SIDE = 512  # the card shows the original at most this large; the file stays small


def _data_uri(image: Image.Image, fmt: str = "JPEG") -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format=fmt, quality=82)
    mime = "jpeg" if fmt == "JPEG" else fmt.lower()
    return f"data:image/{mime};base64," + base64.b64encode(buf.getvalue()).decode()


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


class _Images:
    """Deduplicated image store: id -> data URI (a thumbnail shared by many cards is stored once)."""

    def __init__(self) -> None:
        self.uris: dict[str, str] = {}
        self._by_key: dict[str, str] = {}

    def add(self, key: str, make: Callable[[], str]) -> str:
        if key not in self._by_key:
            ident = f"i{len(self._by_key)}"
            self.uris[ident] = make()
            self._by_key[key] = ident
        return self._by_key[key]

    def to_json(self) -> str:
        # "</" would end the <script> block early; JSON allows the escaped form.
        return json.dumps(self.uris).replace("</", "<\\/")


def _percent_box(box: list[float], width: int, height: int, kind: str) -> dict:
    x1, y1, x2, y2 = box
    return {
        "kind": kind,
        "left": round(100 * x1 / width, 3),
        "top": round(100 * y1 / height, 3),
        "width": round(100 * (x2 - x1) / width, 3),
        "height": round(100 * (y2 - y1) / height, 3),
    }


def _card(row: dict, image_bytes: bytes | None, images: _Images, crop_pixels: tuple[int, int]) -> dict:
    card = {
        k: row.get(k)
        for k in (
            "id",
            "model",
            "benchmark",
            "mode",
            "category",
            "question",
            "options",
            "answer",
            "prediction",
            "error",
            "iou",
            "crop_hit",
            "cycle",
            "repeat",
            "target_size",
        )
    }
    card["correct"] = bool(row.get("correct"))
    card["turns"] = row.get("turns") or []
    card["answer_index"] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ".find(row.get("answer") or "?")
    pred = row.get("prediction")
    card["pred_index"] = (
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ".find(pred) if isinstance(pred, str) and len(pred) == 1 else -1
    )
    card["thumb"], card["image_error"], card["overlays"], card["crops"] = None, None, [], []
    original = None
    if image_bytes is None:
        card["image_error"] = "record not found in the benchmark file"
    else:
        try:
            original = grounding.load_original(image_bytes, name=f"sample {row['id']}")
        except grounding.ImageError as exc:
            card["image_error"] = str(exc)
    if original is not None:
        digest = hashlib.sha1(image_bytes).hexdigest()

        def thumb() -> str:
            small = original.copy()
            small.thumbnail((THUMB_SIDE, THUMB_SIDE))
            return _data_uri(small)

        card["thumb"] = images.add(f"thumb:{digest}", thumb)
        w, h = original.size
        for target in row.get("target_boxes") or []:
            card["overlays"].append(_percent_box(target, w, h, "target"))
        for box in row.get("boxes") or []:
            if box.get("valid") and box.get("orig"):
                card["overlays"].append(_percent_box(box["orig"], w, h, "pred"))
                key = f"crop:{digest}:{crop_pixels}:{box['orig']}"

                def cut(b=box["orig"]) -> str:
                    return _data_uri(grounding.crop(original, tuple(b), *crop_pixels))

                try:
                    ident = images.add(key, cut)
                    caption = f"{[round(v) for v in box['orig']]} (original pixels)"
                    card["crops"].append({"img": ident, "caption": caption})
                except ValueError as exc:
                    card["crops"].append({"img": None, "caption": f"cannot cut: {exc}"})
            else:
                card["crops"].append({"img": None, "caption": f"invalid box ({box.get('reason')})"})
    return card


def select_cards(rows: list[dict], max_cards: int) -> list[dict]:
    """The first `max_cards` rows (by id, cycle, repeat) of each (model, benchmark, mode)."""
    picked: dict[tuple, list[dict]] = {}
    for row in sorted(
        rows, key=lambda r: (r["model"], r["benchmark"], r["mode"], r["id"], r["cycle"], r["repeat"])
    ):
        group = picked.setdefault((row["model"], row["benchmark"], row["mode"]), [])
        if len(group) < max_cards:
            group.append(row)
    return [r for group in picked.values() for r in group]


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def build_report(
    rows: list[dict],
    metrics: dict,
    out: Path,
    image_lookup: Callable[[str, str], bytes | None],
    crop_pixels: tuple[int, int],
    max_cards: int = 48,
    plots: list[Path] | None = None,
    subtitle: str = "",
) -> Path:
    """Write report.html; `image_lookup(benchmark, sample_id)` gives a record's image bytes."""
    from jinja2 import Environment

    images = _Images()
    cards = [
        _card(r, image_lookup(r["benchmark"], r["id"]), images, crop_pixels)
        for r in select_cards(rows, max_cards)
    ]
    metric_tables: dict[str, list[dict]] = {}
    categories: dict[str, list[str]] = {}
    for model, benches in metrics.items():
        for bench, modes in benches.items():
            for mode, m in modes.items():
                metric_tables.setdefault(bench, []).append({"model": model, "mode": mode, "m": m})
                categories.setdefault(bench, [])
                categories[bench] = sorted(set(categories[bench]) | set(m.get("categories", {})))
    filters = [
        {"key": "correct", "label": "result", "choices": ["correct", "incorrect"]},
        {"key": "category", "label": "category", "choices": sorted({c["category"] for c in cards})},
        {"key": "mode", "label": "mode", "choices": sorted({c["mode"] for c in cards})},
        {"key": "model", "label": "model", "choices": sorted({c["model"] for c in cards})},
        {"key": "benchmark", "label": "benchmark", "choices": sorted({c["benchmark"] for c in cards})},
    ]
    env = Environment(autoescape=True)
    env.globals.update(
        pct=_pct,
        opt_pct=lambda x: "–" if x is None else _pct(x),
        opt_num=lambda x: "–" if x is None else f"{x:.2f}",
    )
    from components.evaluation.report_template import TEMPLATE

    text = env.from_string(TEMPLATE).render(
        subtitle=subtitle,
        metric_tables=metric_tables,
        categories=categories,
        plots=[(Path(p).name, png_data_uri(p)) for p in plots or []],
        cards=cards,
        max_cards=max_cards,
        filters=filters,
        images_json=images.to_json(),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
