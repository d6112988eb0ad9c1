"""SFT trajectories: the paper's two-turn conversation, written by the shared episode code.

For each record with target boxes, an `Episode` (components/episode.py, the same state machine
RL and evaluation drive) is run with two scripted turns instead of a model:
1. turn 1 is the template's JSON box (`prompts.render_box`) of the target in the frame the
   model sees: the target boxes (their union for two-object questions) mapped into the first
   view, each edge jittered by up to `sft.box_jitter` of the box side, then grown about its
   centre to the smallest valid box (`episode.grow_to_valid`, the oracle mode's rule) and kept
   in the frame; with `sft.box_grid` (default 28) it is instead snapped outward to whole
   merged tokens. With probability `sft.missing_box_share` turn 1 writes no box instead, so
   the model also sees the invalid-box path (the episode then shows the first view again);
2. the episode parses and validates that box, maps it to the original image, cuts and resizes
   the crop and writes the environment's turn-2 user message; turn 2 answers with one short
   reasoning line and `\\boxed{letter}`, which the shared reward must score correct.
Records without target boxes (and a `sft.direct_share` of the others) give a one-turn
`direct` episode instead (the single-turn baseline's prompt and the same answer line).
The episode's messages and images are written as verl's multi-turn SFT parquet
(components/sft/io.py), so the local trainer and verl's SFT trainer read the same file.

Bad input: a trajectory whose rendered length (text plus image tokens) exceeds
`sft.max_seq_len` is skipped and counted, never truncated (cutting could split an image's
tokens); a record whose episode cannot be built (unreadable image, ...) is skipped and counted
with its id and reason.

Departures from the paper (which has no SFT code): the answer line is a template of ours
(`ANSWER_LINE`), not a model's reasoning; `missing_box_share` and the jitter are ours.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from components import grounding as g
from components import prompts
from components.config import EpisodeConfig, SFTConfig
from components.data.record import Record
from components.episode import Episode, Generation, grow_to_valid
from components.sft.io import TrajectoryWriter, make_row

IMAGE_PLACEHOLDER = "<image>"
# Turn 2: one short reasoning line stating the option's text, then its letter. Stating the text
# first splits the task in two (see, then match the text to its letter), easier for a tiny model.
ANSWER_LINE = "The answer is {text}. \\boxed{{{letter}}}"
# `sft.answer: text`: the option's text inside \boxed{} (the shared reward scores it like the
# letter). Why: a tiny model that reads the colours from the crop still picked the letter at
# chance (measured, docs/learnability.md); matching the text to its letter is a second skill.
TEXT_ANSWER_LINE = "The answer is \\boxed{{{text}}}."
# Turn 1 of an invalid-box trajectory: plain text that `grounding.parse_box` finds no box in.
NO_BOX_LINE = "The key area is not clear in this view."


@dataclass
class BuildStats:
    records: int = 0
    written: int = 0
    kinds: Counter = field(default_factory=Counter)
    skipped_too_long: int = 0
    skipped_errors: int = 0
    errors: list[str] = field(default_factory=list)
    """First few `record id: reason` of records that could not be used."""
    max_tokens: int = 0
    total_tokens: int = 0

    def to_dict(self) -> dict:
        return {
            "records": self.records,
            "written": self.written,
            **{f"kind_{k}": v for k, v in sorted(self.kinds.items())},
            "skipped_too_long": self.skipped_too_long,
            "skipped_errors": self.skipped_errors,
            "max_tokens": self.max_tokens,
            "mean_tokens": round(self.total_tokens / self.written, 1) if self.written else 0.0,
            "errors": self.errors,
        }


def record_rng(seed: int, record_id: str) -> random.Random:
    """One generator per record, so a record's trajectory does not depend on the others."""
    return random.Random(f"sft:{seed}:{record_id}")


def jitter_box(box: g.Box, rng: random.Random, share: float) -> g.Box:
    """Move each edge by up to `share` of the box's side (uniform), keeping it ordered."""
    w, h = box[2] - box[0], box[3] - box[1]
    x1, y1, x2, y2 = (v + rng.uniform(-share, share) * s for v, s in zip(box, (w, h, w, h), strict=True))
    if x2 <= x1:
        x1, x2 = box[0], box[2]
    if y2 <= y1:
        y1, y2 = box[1], box[3]
    return (x1, y1, x2, y2)


def snap_box(box: g.Box, size: tuple[int, int], grid: int, min_side: float) -> g.Box:
    """Snap a seen-frame box outward to a `grid`-pixel lattice (kept in the frame), then widen a
    side that is not above `min_side` by whole cells on the side with room.

    Why: on the 28-px grid a box covers whole merged tokens (what the model sees as units) and
    its coordinates take a few values per axis, which a tiny model learns to write; with free
    pixel coordinates it wrote runs of digits in greedy decoding (measured, see flows/sft.py).
    """
    out = list(box)
    for lo, hi, limit in ((0, 2, size[0]), (1, 3, size[1])):
        out[lo] = max(0.0, math.floor(out[lo] / grid) * grid)
        out[hi] = min(float(limit), math.ceil(out[hi] / grid) * grid)
        while out[hi] - out[lo] <= min_side and (out[lo] > 0 or out[hi] < limit):
            if out[hi] < limit:
                out[hi] = min(float(limit), out[hi] + grid)
            else:
                out[lo] = max(0.0, out[lo] - grid)
    return (out[0], out[1], out[2], out[3])


def target_box_seen(
    record: Record, episode: Episode, rng: random.Random, jitter: float, min_side: float, grid: int = 0
) -> g.Box:
    """The turn-1 box: target boxes' union in the first view, jittered, kept in the frame, then
    snapped to the grid (`grid` > 0) or grown about its centre to the smallest valid box."""
    frame = episode.frames[0]
    union = g.union([tuple(float(v) for v in b) for b in record.target_boxes])
    seen = jitter_box(frame.to_seen(union), rng, jitter)
    w, h = frame.size
    seen = (max(0.0, seen[0]), max(0.0, seen[1]), min(float(w), seen[2]), min(float(h), seen[3]))
    if grid > 0:
        return snap_box(seen, frame.size, grid, min_side)
    # +1: render_box rounds to integers, which may shave up to a pixel off a side.
    return grow_to_valid(seen, frame.size, min_side + 1)


def box_label(record: Record) -> str:
    """The box's label: the named target(s) when the record's meta has them."""
    targets = record.meta.get("targets") if isinstance(record.meta, dict) else None
    if isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
        return " and ".join(targets)
    return "key area"


def answer_line(record: Record, style: str = "letter") -> str:
    line = TEXT_ANSWER_LINE if style == "text" else ANSWER_LINE
    return line.format(text=record.answer_text, letter=record.answer)


def _scripted(text: str) -> Generation:
    # No engine ran: there are no sampled ids; the trajectory is re-tokenized by the trainer.
    return Generation(text=text, token_ids=[], logprobs=[], prompt_delta_ids=[])


def run_scripted_episode(
    record: Record,
    ep_cfg: EpisodeConfig,
    templates: prompts.Templates,
    first_view: tuple[int, int],
    sft: SFTConfig,
    max_image_pixels: int | None = None,
) -> tuple[str, Episode, g.Box | None]:
    """Run one record's episode with scripted turns; return (kind, finished episode, turn-1 box)."""
    rng = record_rng(sft.seed, record.id)
    direct = not record.target_boxes or rng.random() < sft.direct_share
    missing = rng.random() < sft.missing_box_share
    if direct:
        episode = Episode(record, ep_cfg, templates, "direct", first_view, max_image_pixels)
        episode.step(_scripted(answer_line(record, sft.answer)))
        kind, box = "direct", None
    else:
        episode = Episode(record, ep_cfg, templates, "mgpo", first_view, max_image_pixels)
        if missing:
            kind, box, text = "mgpo_invalid", None, NO_BOX_LINE
        else:
            kind = "mgpo"
            box = target_box_seen(record, episode, rng, sft.box_jitter, ep_cfg.min_box_side, sft.box_grid)
            text = prompts.render_box(templates, box, label=box_label(record))
        episode.step(_scripted(text))
        first = episode.turns[0]
        if first.valid != (kind == "mgpo"):
            raise ValueError(f"scripted turn-1 box {box} came out {'valid' if first.valid else first.reason}")
        while not episode.done:  # the answer ends the episode; later turns are never reached
            episode.step(_scripted(answer_line(record, sft.answer)))
    result = episode.result()
    if result.reward.accuracy != 1.0:
        raise ValueError(f"the scripted answer {result.final_text!r} does not score as correct")
    return kind, episode, (None if box is None else tuple(float(round(v)) for v in box))


def to_verl_messages(messages: list[dict]) -> list[dict]:
    """HF chat messages (content lists with image entries) -> verl's string content with
    `<image>` placeholders, in order."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            text = "".join(
                IMAGE_PLACEHOLDER if c.get("type") == "image" else c.get("text", "") for c in content
            )
        else:
            text = content
        out.append({"role": m["role"], "content": text})
    return out


def count_tokens(processor, messages: list[dict], images: list) -> int:
    """Length of the rendered conversation with each image's tokens expanded.

    Counted without running the image processor: every image is already at a `smart_resize`
    fixed point, so it has (w / patch) * (h / patch) / merge^2 tokens.
    """
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ip = processor.image_processor
    unit = (ip.patch_size * ip.merge_size) ** 2
    pad = "<|image_pad|>"
    if text.count(pad) != len(images):
        raise ValueError(f"{text.count(pad)} image placeholders but {len(images)} images")
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    return len(ids) + sum(im.width * im.height // unit - 1 for im in images)


def build_trajectories(
    records: Iterable[Record],
    out_path: str | Path,
    sft: SFTConfig,
    ep_cfg: EpisodeConfig,
    templates: prompts.Templates,
    processor,
    first_view: tuple[int, int],
    max_image_pixels: int | None = None,
    progress: bool = False,
) -> BuildStats:
    """Write one trajectory per record to `out_path`; return what was written and skipped."""
    from components.progress import progress_bar

    stats = BuildStats()
    with TrajectoryWriter(out_path) as writer:
        for record in progress_bar(records, desc="sft trajectories", disable=not progress):
            stats.records += 1
            try:
                kind, episode, box = run_scripted_episode(
                    record, ep_cfg, templates, first_view, sft, max_image_pixels
                )
                n_tokens = count_tokens(processor, episode.messages, episode.images)
            except Exception as exc:
                stats.skipped_errors += 1
                if len(stats.errors) < 10:
                    stats.errors.append(f"record {record.id}: {type(exc).__name__}: {exc}")
                continue
            if n_tokens > sft.max_seq_len:
                stats.skipped_too_long += 1
                continue
            writer.write(
                make_row(
                    f"{record.id}:{kind}",
                    record.id,
                    kind,
                    to_verl_messages(episode.messages),
                    episode.images,
                    n_tokens,
                    list(box) if box is not None else None,
                )
            )
            stats.written += 1
            stats.kinds[kind] += 1
            stats.max_tokens = max(stats.max_tokens, n_tokens)
            stats.total_tokens += n_tokens
    return stats
