"""Helpers of the RL tests: small params, small records, a scripted engine (imported by conftest and tests)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from components.config import load_params
from components.data.record import Record
from components.engines import tokens
from components.engines.base import Engine, SamplingParams
from components.episode import INITIAL_PROMPT_MESSAGES, Episode, Generation

ROOT = Path(__file__).resolve().parents[3]
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220)}


def small_params(*overrides: str):
    """Repo params with a smaller model and short turns (same architecture; fast tests)."""
    return load_params(
        ROOT / "params.yaml",
        [
            "model.text.hidden_size=64",
            "model.text.num_layers=2",
            "model.text.mrope_section=[2, 3, 3]",
            "model.vision.hidden_size=32",
            "model.vision.depth=1",
            "model.min_pixels=3136",
            "model.max_pixels=12544",
            "episode.crop_min_pixels=3136",
            "episode.crop_max_pixels=12544",
            "episode.max_new_tokens=6",
            "episode.templates=" + str(ROOT / "components/templates.yaml"),
            *overrides,
        ],
    )


def make_record(i: int, colour: str = "red", answer_first: bool = True, size=(896, 672)) -> Record:
    """A square of `colour` on grey; options (red, blue) or (blue, red)."""
    w, h = size
    img = Image.new("RGB", size, (128, 128, 128))
    box = [w * 0.25, h * 0.25, w * 0.25 + 200, h * 0.25 + 200]
    ImageDraw.Draw(img).rectangle(box, fill=COLOURS[colour])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    options = ["red", "blue"] if answer_first else ["blue", "red"]
    return Record(
        id=f"r{i}",
        source="test",
        split="train",
        image_bytes=buf.getvalue(),
        width=w,
        height=h,
        question="What colour is the square?",
        options=options,
        answer="AB"[options.index(colour)],
        category="colour",
        target_boxes=[box],
    ).validate()


class ScriptedEngine(Engine):
    """Replies with fixed texts per turn, tokenized with the shared token helpers.

    The context ids are built exactly as the transformers engine builds them (tokens.prompt_text,
    tokens.delta_text, tokens.encode), so trajectories have the real layout: initial prompt,
    model ids, the environment's turn with its image tokens, model ids.
    """

    def __init__(self, processor, replies: Sequence[str] | Callable[[Episode, int], str]):
        self.processor = processor
        self.replies = replies if callable(replies) else list(replies)
        tok = processor.tokenizer
        self.im_end = tok.convert_tokens_to_ids("<|im_end|>")
        self.image_token_id = tok.convert_tokens_to_ids("<|image_pad|>")
        self.seen: dict[int, int] = {}

    def generate(self, episodes, params: SamplingParams) -> list[Generation]:
        out = []
        for ep in episodes:
            turn = len(ep.turns)
            if turn == 0:
                _, full = tokens.prompt_text(self.processor, ep.messages, INITIAL_PROMPT_MESSAGES)
                delta = tokens.encode(self.processor, full, ep.images, self.image_token_id).ids
            else:
                text = tokens.delta_text(self.processor, ep.messages, len(ep.messages) - 2, True)
                delta = tokens.encode(self.processor, text, ep.images[-1:], self.image_token_id).ids
            if callable(self.replies):
                reply = self.replies(ep, turn)
            else:
                reply = self.replies[min(turn, len(self.replies) - 1)]
            ids = self.processor.tokenizer(reply, add_special_tokens=False)["input_ids"] + [self.im_end]
            out.append(Generation(reply, ids, [-1.0] * len(ids), delta))
        return out


def run_scripted(processor, record, replies, cfg, mode="mgpo"):
    from components.engines.base import run_episodes
    from components.prompts import load_templates

    t = load_templates(cfg.episode.templates, cfg.episode.template)
    ep = Episode(record, cfg.episode, t, mode, (cfg.model.min_pixels, cfg.model.max_pixels))
    (result,) = run_episodes(ScriptedEngine(processor, replies), [ep], SamplingParams(max_new_tokens=6))
    return result
