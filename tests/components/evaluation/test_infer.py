"""`mgpo infer`'s implementation (components/evaluation/infer.py) on a real tiny model."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from components.config import load_params
from components.episode import Episode, Generation
from components.evaluation.infer import DISPLAY_HEIGHT, format_infer, run_infer, write_png
from components.prompts import load_templates, render_box

ROOT_PARAMS = "params.yaml"


def photo(path, size=(1200, 900)):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size[1] // 30, size[0] // 30, 3), dtype=np.uint8)
    Image.fromarray(arr).resize(size).save(path, "JPEG")
    return path


def test_run_infer_end_to_end(eval_bundle, tmp_path):
    params = load_params(ROOT_PARAMS, ["episode.max_new_tokens=6"])
    img = photo(tmp_path / "street.jpg")
    out = run_infer(
        str(img),
        "What colour is the car?",
        ["red", "blue"],
        params,
        model=str(eval_bundle),
        out=str(tmp_path / "o.png"),
        answer="B",
        device="cpu",
    )
    json.dumps(out)  # JSON-ready
    assert out["size"] == [1200, 900] and len(out["turns"]) == 2 and out["mode"] == "mgpo"
    t1 = out["turns"][0]
    assert set(t1) >= {"text", "box_seen", "box_original", "valid", "reason", "crop_region"}
    assert isinstance(out["correct"], bool)
    png = Image.open(out["png"])
    assert png.height == DISPLAY_HEIGHT
    text = format_infer(out)
    assert "--- turn 1" in text and "--- turn 2" in text and "answer:" in text
    direct = run_infer(
        str(img), "Q?", ["a", "b"], params, model=str(eval_bundle), mode="direct", out=None, device="cpu"
    )
    assert len(direct["turns"]) == 1 and direct["png"] is None
    with pytest.raises(ValueError, match="oracle"):
        run_infer(str(img), "Q?", ["a"], params, model=str(eval_bundle), mode="oracle")
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg"):
        run_infer(str(tmp_path / "nope.jpg"), "Q?", ["a"], params)


def test_png_shows_the_box_and_the_crop(tmp_path):
    params = load_params(ROOT_PARAMS)
    buf = io.BytesIO()
    Image.new("RGB", (1600, 1200), (90, 90, 90)).save(buf, "JPEG")
    from types import SimpleNamespace

    rec = SimpleNamespace(
        id="x",
        image_bytes=buf.getvalue(),
        width=1600,
        height=1200,
        question="Q?",
        options=["a", "b"],
        answer="A",
        category="c",
        target_boxes=[],
    )
    t = load_templates(params.episode.templates, params.episode.template)
    ep = Episode(rec, params.episode, t, "mgpo", (params.model.min_pixels, params.model.max_pixels))
    ep.step(Generation(render_box(t, (20, 20, 100, 90)), [1], [0.0], [2]))
    ep.step(Generation("\\boxed{A}", [1], [0.0], [3]))
    res = ep.result()
    path = write_png(ep._original(), res, tmp_path / "p.png")
    png = np.asarray(Image.open(path))
    left_w = round(1600 * DISPLAY_HEIGHT / 1200)
    assert png.shape[1] > left_w + 8  # the crop panel is beside the original
    assert (png[:, :left_w] == [255, 0, 0]).all(-1).any()  # the box is drawn in red
