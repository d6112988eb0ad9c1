"""Helpers for the SFT tests: a very small Qwen2.5-VL config and hand-made trajectory files."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from components.config import load_params
from components.sft.io import TrajectoryWriter, make_row

ROOT = Path(__file__).resolve().parents[3]
COLOURS = {"red": (220, 20, 20), "green": (20, 170, 40), "blue": (20, 50, 230), "yellow": (245, 215, 0)}


def tiny_model_cfg():
    # Same architecture as the embedded default, smaller so each test step takes milliseconds.
    return load_params(
        ROOT / "params.yaml",
        [
            "model.text.hidden_size=64",
            "model.text.num_layers=1",
            "model.text.intermediate_size=128",
            "model.text.mrope_section=[2, 3, 3]",
            "model.vision.hidden_size=32",
            "model.vision.depth=1",
            "model.vision.intermediate_size=64",
            "model.vocab_size=400",
            "model.max_pixels=12544",
        ],
    ).model


def two_turn(colour: str, letter: str, box: tuple[int, int, int, int] = (10, 20, 80, 90)) -> list[dict]:
    """A hand-made MGPO conversation in verl's format (string content, <image> placeholders)."""
    x1, y1, x2, y2 = box
    return [
        {"role": "system", "content": "You are a helpful assistant. Find the key area, then answer."},
        {"role": "user", "content": "<image>Question: What colour is the square? Out the coordinates."},
        {
            "role": "assistant",
            "content": f'```json\n[{{"bbox_2d": [{x1}, {y1}, {x2}, {y2}], "label": "square"}}]\n```',
        },
        {
            "role": "user",
            "content": "Based on the provided coordinates, return the sub-image:<image>Question: What colour "
            "is the square? The choices are listed below:\n(A) red\n(B) blue\n(C) green\n(D) yellow\n",
        },
        {"role": "assistant", "content": f"The square is {colour}. \\boxed{{{letter}}}"},
    ]


def write_handmade(path: Path, n: int = 8) -> Path:
    names = list(COLOURS)
    with TrajectoryWriter(path, rows_per_group=4) as writer:
        for i in range(n):
            colour = names[i % len(names)]
            letter = "ABCD"[["red", "blue", "green", "yellow"].index(colour)]
            first = Image.new("RGB", (112, 84), (128, 128, 128))
            crop = Image.new("RGB", (56, 56), COLOURS[colour])
            writer.write(make_row(f"t{i}", f"r{i}", "mgpo", two_turn(colour, letter), [first, crop], 0))
    return path
