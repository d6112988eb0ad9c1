"""report.html and the plots, from hand-made predictions; the report checked in headless Chromium."""

from __future__ import annotations

import io
import re
import subprocess

import pytest
from PIL import Image, ImageDraw

from components.evaluation import metrics as M
from components.evaluation.plots import PLOT_FILES, make_plots, sweep_points
from components.evaluation.report import build_report, select_cards

from .chromium import find_chromium, inspect_report


def jpeg(w=800, h=600, colour=(90, 120, 200)) -> bytes:
    img = Image.new("RGB", (w, h), colour)
    ImageDraw.Draw(img).rectangle([300, 200, 400, 300], fill=(255, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


IMAGES = {"s0": jpeg(), "s1": jpeg(colour=(20, 200, 20)), "s2": b"not an image at all"}


def make_rows() -> list[dict]:
    rows = []
    for mode in ("direct", "mgpo", "oracle"):
        for i, sid in enumerate(IMAGES):
            multi = mode != "direct"
            valid = multi and i != 1
            rows.append(
                {
                    "key": f"m|bench|{mode}|{sid}|c0|r0",
                    "model": "m",
                    "benchmark": "bench",
                    "mode": mode,
                    "id": sid,
                    "group": sid,
                    "cycle": 0,
                    "repeat": 0,
                    "category": "attribute" if i < 2 else "spatial",
                    "question": f"What colour is <b>the square</b> {sid}?",
                    "options": ["red", "blue", "green", "gray"],
                    "answer": "A",
                    "prediction": "A" if i == 0 else None,
                    "correct": i == 0,
                    "answered": i == 0,
                    "error": "sample s2: cannot be read as an image" if sid == "s2" else None,
                    "n_options": 4,
                    "num_turns": 2 if multi else 1,
                    "tokens": 12,
                    "seconds": 0.1,
                    "width": 800,
                    "height": 600,
                    "target_boxes": [[300.0, 200.0, 400.0, 300.0]],
                    "target_size": [0.04, 0.08, 0.12][i],
                    "boxes": [
                        {
                            "orig": [280.0, 180.0, 430.0, 320.0] if valid else None,
                            "valid": valid,
                            "reason": None if valid else "no_box",
                        }
                    ]
                    if multi
                    else [],
                    "box_valid": valid if multi else None,
                    "iou": (0.48 if valid else 0.0) if multi else None,
                    "crop_hit": valid if multi else None,
                    "turns": [
                        {
                            "prompt": "Question: <script>alert(1)</script>",
                            "response": "```json\n[...]\n``` \\boxed{A}",
                        }
                    ],
                }
            )
    return rows


def render(tmp_path, max_cards=48):
    rows = make_rows()
    metrics = M.compute_metrics(rows)
    plots = make_plots(rows, tmp_path / "plots")
    out = build_report(
        rows,
        metrics,
        tmp_path / "report.html",
        lambda b, i: IMAGES.get(i),
        (12544, 50176),
        max_cards,
        plots,
        "test",
    )
    return rows, out


def test_report_is_self_contained_and_escaped(tmp_path):
    rows, out = render(tmp_path)
    text = out.read_text()
    assert text.count('class="card ') == len(rows) == 9
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)" in text
    assert "&lt;b&gt;the square&lt;/b&gt;" in text
    # No external resource of any kind: every src/href is a data URI or set from the JSON block.
    assert not re.search(r"""(src|href)=["'](?!data:)""", text)
    assert "http://" not in text and "https://" not in text
    assert text.count("data:image/png;base64,") == 2  # the two plots
    assert "cannot be read as an image" in text


def test_card_limit_per_group(tmp_path):
    rows = make_rows()
    assert len(select_cards(rows, 2)) == 6
    assert [r["id"] for r in select_cards(rows, 1)] == ["s0"] * 3


def test_plots_are_pngs_and_sweep_is_detected(tmp_path):
    rows = make_rows()
    paths = make_plots(rows, tmp_path)
    assert [p.name for p in paths] == list(PLOT_FILES)
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert sorted(sweep_points([r for r in rows if r["mode"] == "mgpo"])) == [0.04, 0.08, 0.12]
    assert sweep_points([{**r, "target_size": None} for r in rows]) is None


def ensure_chromium() -> str:
    binary = find_chromium()
    if binary is None:
        # CI installs it (.ci/run); on a dev machine try Debian's package once.
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, timeout=900)
        binary = find_chromium()
    if binary is None:
        pytest.fail("headless Chromium is needed for the report test: `apt-get install -y chromium`")
    return binary


CHECK = """(() => {
  const cards = document.querySelectorAll('.card');
  const imgs = Array.from(document.querySelectorAll('img'));
  const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
  const sel = document.getElementById('f-correct');
  sel.value = 'incorrect'; sel.dispatchEvent(new Event('change'));
  const wrong = Array.from(cards).filter(c => c.style.display !== 'none').length;
  const mode = document.getElementById('f-mode');
  mode.value = 'mgpo'; mode.dispatchEvent(new Event('change'));
  const wrongMgpo = Number(document.getElementById('shown-count').textContent);
  sel.value = ''; mode.value = ''; sel.dispatchEvent(new Event('change'));
  return {cards: cards.length, images: imgs.length, broken, wrong, wrongMgpo,
          boxes: document.querySelectorAll('.box.pred').length,
          tables: document.querySelectorAll('table.metrics tr').length};
})()"""


def test_report_in_headless_chromium(tmp_path):
    binary = ensure_chromium()
    rows, out = render(tmp_path)
    shot = tmp_path / "report.png"
    value, errors = inspect_report(binary, out, shot, CHECK)
    assert errors == []
    assert value["cards"] == 9
    # 2 plots + thumbnails of the 2 decodable records on 6 cards + 4 crops (valid boxes of s0 in 2 modes... )
    assert value["broken"] == 0 and value["images"] == 2 + 6 + 2
    assert value["wrong"] == sum(not r["correct"] for r in rows) == 6
    assert value["wrongMgpo"] == 2
    assert value["boxes"] == 2
    assert value["tables"] == 1 + 3
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
