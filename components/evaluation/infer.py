"""One MGPO episode on one image: what `mgpo infer IMAGE "QUESTION" --options ... --model PATH` runs.

`run_infer(image, question, options, params, model=..., mode=..., out=...)` loads the model
(a bundle folder, a hub id or `models:/<name>@<alias>`), runs one episode through the shared
`Episode` and the transformers engine (greedy unless a temperature is given), and returns a
JSON-ready dict: every model turn's text, its box in the seen frame and in original pixels, the
box's validity (or why not), the crop's region and size, and the final answer. It also writes a
PNG: the original (scaled for display) with the box drawn on it, and each crop beside it at the
size the model saw it. `format_infer(result)` gives the human-readable text the CLI prints.
The first view uses the model processor's own pixel budget, so boxes are read in the frame the
model saw. Only `mgpo` and `direct` apply (the oracle mode needs a ground-truth box).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image, ImageDraw

from components import grounding
from components.config import Params

DISPLAY_HEIGHT = 512  # px of each panel in the PNG


def run_infer(
    image: str,
    question: str,
    options: list[str],
    params: Params,
    *,
    model: str | None = None,
    mode: str = "mgpo",
    out: str | None = "infer.png",
    answer: str | None = None,
    device: str = "auto",
    temperature: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Run one episode; see the module docstring. `answer` (a letter) adds correctness."""
    import torch

    from components.engines.base import SamplingParams, run_episodes
    from components.engines.transformers_engine import TransformersEngine
    from components.episode import Episode
    from components.evaluation.runner import first_view_budget
    from components.models.loading import resolve_model
    from components.prompts import load_templates

    if mode not in ("mgpo", "direct"):
        raise ValueError(f"mode {mode!r}: infer runs 'mgpo' or 'direct' (oracle needs a ground-truth box)")
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"image {image} not found")
    data = path.read_bytes()
    limit = params.prepare.max_image_pixels
    width, height = grounding.open_image(data, limit, str(path)).size
    ref = resolve_model(model or params.paths.base_model)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    engine = TransformersEngine.from_pretrained(
        ref,
        device=device,
        dtype="bfloat16" if device == "cuda" else "float32",
        trust_remote_code=params.model.trust_remote_code,
    )
    view = first_view_budget(engine.processor)
    opts = [str(o) for o in options]
    if answer is not None and (len(answer) != 1 or not "A" <= answer.upper() < chr(ord("A") + len(opts))):
        raise ValueError(f"answer {answer!r} is not one of the option letters")
    record = SimpleNamespace(
        id=path.name,
        image_bytes=data,
        width=width,
        height=height,
        question=question,
        options=opts,
        answer=(answer or "A").upper(),
        category="infer",
        target_boxes=[],
    )
    templates = load_templates(params.episode.templates, params.episode.template)
    ep = Episode(record, params.episode, templates, mode, view, limit)
    sampling = SamplingParams(params.episode.max_new_tokens, temperature, seed)
    (res,) = run_episodes(engine, [ep], sampling, batch_size=1)

    turns = []
    for t in res.turns:
        crop_size = None
        if t.valid and t.index < len(res.images):
            crop_size = list(res.images[t.index].size)
        turns.append(
            {
                "turn": t.index,
                "text": t.text,
                "finish_reason": t.finish_reason,
                "box_form": t.form,
                "box_seen": _r(t.box_seen),
                "seen_frame_image": t.frame_image,
                "box_original": _r(t.box_orig),
                "valid": t.valid if mode == "mgpo" else None,
                "reason": t.reason if mode == "mgpo" else None,
                "crop_region": list(t.crop_region) if t.crop_region else None,
                "crop_size": crop_size,
            }
        )
    result: dict[str, Any] = {
        "image": str(path),
        "size": [width, height],
        "model": ref,
        "mode": mode,
        "first_view": list(res.images[0].size),
        "question": question,
        "options": opts,
        "turns": turns,
        "final_text": res.final_text,
        "answer": res.reward.letter,
        "answer_text": opts["ABCDEFGHIJKLMNOPQRSTUVWXYZ".index(res.reward.letter)]
        if res.reward.letter
        else None,
        "extracted": res.reward.extracted,
        "generated_tokens": sum(res.response_mask),
        "png": None,
    }
    if answer is not None:
        result["correct"] = res.reward.accuracy == 1.0
    if out:
        original = grounding.load_original(data, limit, str(path))
        result["png"] = str(write_png(original, res, out))
    return result


def _r(box):
    return None if box is None else [round(v, 2) for v in box]


def write_png(original: Image.Image, res, out: str | Path) -> Path:
    """The original with every valid box drawn (scaled for display), and each crop beside it."""
    scale = DISPLAY_HEIGHT / original.height
    left = original.resize((max(1, round(original.width * scale)), DISPLAY_HEIGHT), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(left)
    colours = ["red", "lime", "cyan", "yellow", "magenta"]
    panels = [left]
    for t in res.turns:
        if not t.valid or t.box_orig is None:
            continue
        c = colours[(t.index - 1) % len(colours)]
        x1, y1, x2, y2 = (v * scale for v in t.box_orig)
        draw.rectangle((x1, y1, x2, y2), outline=c, width=3)
        draw.text((x1 + 4, max(0.0, y1 - 12)), f"turn {t.index}", fill=c)
        if t.index < len(res.images):
            crop = res.images[t.index]
            k = DISPLAY_HEIGHT / crop.height
            panel = crop.resize((max(1, round(crop.width * k)), DISPLAY_HEIGHT), Image.Resampling.NEAREST)
            ImageDraw.Draw(panel).rectangle((0, 0, panel.width - 1, panel.height - 1), outline=c, width=3)
            panels.append(panel)
    if len(panels) == 1:
        draw.text((8, 8), "no valid box", fill="red")
    gap = 8
    canvas = Image.new(
        "RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), DISPLAY_HEIGHT), "white"
    )
    x = 0
    for p in panels:
        canvas.paste(p, (x, 0))
        x += p.width + gap
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, "PNG")
    return out


def format_infer(result: dict[str, Any]) -> str:
    """Human-readable lines: each turn, its box in both frames and validity, the final answer."""
    lines = [
        f"image {result['image']} ({result['size'][0]}x{result['size'][1]}), first view "
        f"{result['first_view'][0]}x{result['first_view'][1]}, model {result['model']}, mode {result['mode']}"
    ]
    for t in result["turns"]:
        lines.append(f"--- turn {t['turn']} ({t['finish_reason']})")
        lines.append(t["text"])
        if result["mode"] == "mgpo" and (t["turn"] == 1 or t["box_form"]):
            if t["valid"]:
                lines.append(
                    f"box: seen {t['box_seen']} (image {t['seen_frame_image']}) -> original {t['box_original']}; "
                    f"valid; crop {t['crop_region']} shown at {t['crop_size']}"
                )
            else:
                lines.append(f"box: {t['box_seen']} invalid ({t['reason']})")
    ans = result["answer"]
    lines.append(
        f"answer: {ans} ({result['answer_text']})"
        if ans
        else f"answer: none (extracted {result['extracted']!r})"
    )
    if "correct" in result:
        lines.append(f"correct: {result['correct']}")
    if result.get("png"):
        lines.append(f"picture: {result['png']}")
    return "\n".join(lines)
