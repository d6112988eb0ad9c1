"""The MGPO episode: one engine-agnostic state machine for the multi-turn protocol.

An `Episode` holds a conversation (`messages`, HF chat format) and its images (`images`, PIL, each
already at the size the model sees). A driver (the transformers engine, the verl agent loop, a
scripted test engine) renders `messages` + `images`, generates the model's next turn and hands it
back with `step(Generation)`; the episode parses and validates the box, maps it to the original
image, crops, and appends the environment's next user turn, or ends (`done`). `result()` returns
an `EpisodeResult` with every turn, the boxes in both frames, the crops, the reward and the
token-level data verl-style: `prompt_ids` (the initial prompt), `response_ids` (every id after it:
sampled ids exactly as sampled, never re-tokenized, and the environment's inserted ids),
`response_mask` (1 exactly on sampled ids) and `response_logprobs` (0.0 on inserted ids).

Modes:
- `mgpo` (the paper): turn 1 shows the first view and asks for the key area's coordinates (no
  choices). A valid box is mapped to the original, cut from it and resized into the crop budget
  (params `episode.crop_min_pixels`/`crop_max_pixels`); turn 2 shows that crop with the
  valid-box wording. An invalid or missing box gets the invalid wording and the first view again.
  Turn 1 always leads to turn 2, even when turn 1 already answers: the paper's code always runs
  both turns, and only the final turn is scored.
  With `max_turns` > 2, each later turn may write another box, read in the frame of the last
  image shown (the crop, or the first view after an invalid box); it is mapped through that
  image's frame to the ORIGINAL image and cut from the ORIGINAL at full resolution (never a crop
  of a resized crop). A later turn without any box ends the episode; the last turn always ends it.
- `direct`: one turn, the first view and the question with its choices (the GRPO baseline).
- `oracle`: turn 1 is written by the environment from the ground-truth boxes (their union, grown
  to the smallest valid box; mask 0, stored in the response like any inserted turn), followed by
  the crop turn; the model answers once. Records without target boxes are refused.
Forbidden ids (`forbidden_ids`, the vision tokens of `components.engines.tokens.VISION_TOKENS`
when a driver passes them): the local engine never samples them, but on verl/vLLM the sampler is
not ours. A turn holding one is an invalid turn (`reason` "sampled_vision_token"): the episode
ends there (a sampled `<|image_pad|>` would break the next turn's M-RoPE), the turn's ids get
mask 0, and the episode scores 0 (`invalid_turn` says why; drivers log it).
Tests: `.venv/bin/python -m pytest tests/components/test_episode.py -q`.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, Protocol

from PIL import Image

from components import grounding as g
from components import prompts
from components.config import EpisodeConfig
from components.reward import RewardBreakdown, score

Mode = Literal["mgpo", "direct", "oracle"]
MODES = ("mgpo", "direct", "oracle")
INITIAL_PROMPT_MESSAGES = 2  # system + first user turn: verl's prompt; the rest is the response
SAMPLED_VISION_TOKEN = "sampled_vision_token"


class RecordLike(Protocol):
    """What the episode reads from a record (components.data.record.Record satisfies it)."""

    id: str
    image_bytes: bytes
    width: int
    height: int
    question: str
    options: list[str]
    answer: str
    category: str
    target_boxes: list[list[float]]


@dataclass
class Generation:
    """One model turn from an engine."""

    text: str
    """Decoded generated text (special tokens skipped)."""
    token_ids: list[int]
    """Sampled ids exactly as sampled, the stop token included when it was produced."""
    logprobs: list[float]
    """Log-probability of each sampled id under the sampling distribution."""
    prompt_delta_ids: list[int]
    """Ids the engine placed after the previous turn's sampled ids and before this turn's (the
    whole context on the first call)."""
    finish_reason: Literal["stop", "length"] = "stop"
    prompt_split: int | None = None
    """First call only: how many of `prompt_delta_ids` are the initial prompt (system + first
    user turn + generation prompt); the rest (the oracle's inserted turns) is response, mask 0.
    None means all of them."""


@dataclass
class Turn:
    """One assistant turn and what the environment made of it."""

    index: int
    text: str
    by_env: bool = False
    """True for a turn written by the environment (the oracle's box)."""
    finish_reason: str = "stop"
    form: str | None = None
    """How the box was written (grounding.parse_box forms), None when there was none."""
    label: str | None = None
    box_seen: g.Box | None = None
    """The parsed box in the frame of the image it refers to (after clipping, if enabled)."""
    frame_image: int | None = None
    """Index in `images` of the image the box refers to."""
    box_orig: g.Box | None = None
    """The valid box in original pixels."""
    valid: bool = False
    reason: str | None = None
    """Why the box is invalid (grounding reasons), None when valid."""
    crop_region: tuple[int, int, int, int] | None = None
    """Integer region cut from the original for the next turn."""
    iou: float | None = None
    """Best IoU of box_orig with a target box (None when no targets or no valid box)."""
    coverage: float | None = None
    """Best share of a target box inside the crop region."""


@dataclass
class EpisodeResult:
    id: str
    mode: str
    turns: list[Turn]
    messages: list[dict]
    images: list[Image.Image]
    final_text: str
    reward: RewardBreakdown
    box_valid: bool | None
    """Turn-1 box validity (None in direct mode)."""
    iou: float | None
    crop_hit: bool | None
    """The turn-1 crop holds at least half of a target box (None without targets or crop)."""
    prompt_ids: list[int] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    response_mask: list[int] = field(default_factory=list)
    response_logprobs: list[float] = field(default_factory=list)
    invalid_turn: str | None = None
    """Why the episode ended on an invalid turn (scored 0, masked), None otherwise."""

    @property
    def truncated(self) -> bool:
        return any(t.finish_reason == "length" for t in self.turns if not t.by_env)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no images, token counts instead of ids)."""
        return {
            "id": self.id,
            "mode": self.mode,
            "turns": [
                {
                    "index": t.index,
                    "text": t.text,
                    "by_env": t.by_env,
                    "finish_reason": t.finish_reason,
                    "form": t.form,
                    "label": t.label,
                    "box_seen": t.box_seen,
                    "frame_image": t.frame_image,
                    "box_orig": t.box_orig,
                    "valid": t.valid,
                    "reason": t.reason,
                    "crop_region": t.crop_region,
                    "iou": t.iou,
                    "coverage": t.coverage,
                }
                for t in self.turns
            ],
            "image_sizes": [im.size for im in self.images],
            "final_text": self.final_text,
            "extracted": self.reward.extracted,
            "predicted": self.reward.letter,
            "correct": self.reward.accuracy == 1.0,
            "score": self.reward.score,
            "format_ok": self.reward.format_ok,
            "box_valid": self.box_valid,
            "iou": self.iou,
            "crop_hit": self.crop_hit,
            "truncated": self.truncated,
            "prompt_tokens": len(self.prompt_ids),
            "response_tokens": len(self.response_ids),
            "generated_tokens": sum(self.response_mask),
            "invalid_turn": self.invalid_turn,
        }


class _Originals:
    """Decoded originals, least recently used first out; sized by `episode.original_cache`.
    Thread-safe: verl's agent loop builds and steps episodes in worker threads."""

    def __init__(self, size: int = 16):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, data: bytes, max_image_pixels: int | None, name: str) -> Image.Image:
        key = (hashlib.sha1(data).digest(), max_image_pixels, name)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        image = g.load_original(data, max_image_pixels, name)  # outside the lock: slow
        with self._lock:
            self._items[key] = image
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return image

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def resize(self, size: int) -> None:
        with self._lock:
            self.size = size
            while len(self._items) > size:
                self._items.popitem(last=False)


# Episodes of one record (a GRPO group) share one decoded original; crops never mutate it.
_ORIGINALS = _Originals()


def clear_caches() -> None:
    """Forget decoded originals and first views (tests, memory pressure)."""
    _ORIGINALS.clear()
    _first_view.cache_clear()


@lru_cache(maxsize=16)
def _first_view(data: bytes, min_pixels: int, max_pixels: int, max_image_pixels: int | None, name: str):
    return g.first_view(data, min_pixels, max_pixels, max_image_pixels, name)


class Episode:
    """The multi-turn protocol for one record (see the module docstring)."""

    def __init__(
        self,
        record: RecordLike,
        cfg: EpisodeConfig,
        templates: prompts.Templates,
        mode: Mode = "mgpo",
        first_view: tuple[int, int] = (3136, 50176),
        max_image_pixels: int | None = None,
        forbidden_ids: Collection[int] = (),
    ):
        if mode not in MODES:
            raise ValueError(f"episode mode {mode!r} is not one of {MODES}")
        if mode == "mgpo" and cfg.max_turns < 2:
            raise ValueError(f"episode.max_turns={cfg.max_turns}: the mgpo mode needs at least 2 turns")
        self.record, self.cfg, self.t, self.mode = record, cfg, templates, mode
        if _ORIGINALS.size != cfg.original_cache:
            _ORIGINALS.resize(cfg.original_cache)
        self._name = f"record {record.id}"
        self._max_image_pixels = max_image_pixels
        view = _first_view(
            bytes(record.image_bytes), first_view[0], first_view[1], max_image_pixels, self._name
        )
        self.orig_size = (record.width, record.height)
        header = g.open_image(bytes(record.image_bytes), max_image_pixels, self._name).size
        if header != self.orig_size:
            raise ValueError(
                f"{self._name}: width/height {self.orig_size} disagree with the image's {header}"
            )
        self.images: list[Image.Image] = [view]
        self.frames: list[g.Frame] = [g.Frame.first_view(view.size, self.orig_size)]
        self.turns: list[Turn] = []
        self.done = False
        self.forbidden_ids = frozenset(int(i) for i in forbidden_ids)
        self.invalid_turn: str | None = None
        self.prompt_ids: list[int] | None = None
        self.response_ids: list[int] = []
        self.response_mask: list[int] = []
        self.response_logprobs: list[float] = []
        if mode == "direct":
            self.messages = prompts.direct_messages(templates, record.question, list(record.options))
        else:
            self.messages = prompts.turn1_messages(templates, record.question)
        if mode == "oracle":
            self._insert_oracle_turn()

    # ------------------------------------------------------------------------- helpers

    @property
    def model_turns(self) -> int:
        return sum(1 for t in self.turns if not t.by_env)

    @property
    def max_model_turns(self) -> int:
        return 1 if self.mode in ("direct", "oracle") else self.cfg.max_turns

    def _original(self) -> Image.Image:
        return _ORIGINALS.get(bytes(self.record.image_bytes), self._max_image_pixels, self._name)

    def _targets(self) -> list[g.Box]:
        return [tuple(float(v) for v in b) for b in (self.record.target_boxes or [])]

    def _read_box(self, turn: Turn, text: str) -> None:
        """Parse, validate (in the last image's frame) and map the box of `text` into `turn`."""
        parsed = g.parse_box(text)
        frame_idx = len(self.images) - 1
        frame = self.frames[frame_idx]
        turn.frame_image = frame_idx
        if parsed is not None:
            turn.form, turn.label, turn.box_seen = parsed.form, parsed.label, parsed.box
        box, reason = g.validate_box(
            parsed.box if parsed else None,
            *frame.size,
            min_side=self.cfg.min_box_side,
            max_aspect=self.cfg.max_aspect,
            mode=self.cfg.invalid_box,
        )
        turn.reason = reason
        if box is None:
            return
        turn.valid, turn.box_seen = True, box
        turn.box_orig = frame.to_original(box)
        turn.crop_region = g.crop_region(turn.box_orig, *self.orig_size)
        targets = self._targets()
        if targets:
            turn.iou = max(g.iou(turn.box_orig, t) for t in targets)
            turn.coverage = max(g.coverage(t, turn.crop_region) for t in targets)

    def _show_next(self, turn: Turn) -> None:
        """Append the environment's user turn after a box turn: the crop, or the first view."""
        if turn.valid:
            piece = g.crop(
                self._original(), turn.box_orig, self.cfg.crop_min_pixels, self.cfg.crop_max_pixels
            )
            self.images.append(piece)
            self.frames.append(g.Frame.of_crop(turn.crop_region, piece.size))
        else:
            self.images.append(self.images[0])
            self.frames.append(self.frames[0])
        self.messages.append(
            prompts.followup_message(self.t, self.record.question, list(self.record.options), turn.valid)
        )

    def _insert_oracle_turn(self) -> None:
        targets = self._targets()
        if not targets:
            raise ValueError(f"{self._name}: the oracle mode needs target_boxes, and this record has none")
        frame = self.frames[0]
        seen = grow_to_valid(frame.to_seen(g.union(targets)), frame.size, self.cfg.min_box_side)
        text = prompts.render_box(self.t, seen, label="key area")
        self.messages.append(prompts.assistant_message(text))
        turn = Turn(index=1, text=text, by_env=True)
        self._read_box(turn, text)
        if not turn.valid:  # grow_to_valid guarantees validity unless the frame is tiny
            raise ValueError(
                f"{self._name}: oracle box {seen} is invalid ({turn.reason}) in a {frame.size} view"
            )
        self.turns.append(turn)
        self._show_next(turn)

    # ------------------------------------------------------------------------------ API

    def step(self, gen: Generation) -> None:
        """Take the model's turn; append the next user turn or finish the episode."""
        if self.done:
            raise RuntimeError(f"{self._name}: step() on a finished episode")
        if len(gen.logprobs) != len(gen.token_ids):
            raise ValueError(
                f"{self._name}: {len(gen.token_ids)} token ids but {len(gen.logprobs)} log-probs"
            )
        delta = list(gen.prompt_delta_ids)
        if self.prompt_ids is None:
            split = len(delta) if gen.prompt_split is None else gen.prompt_split
            self.prompt_ids, delta = delta[:split], delta[split:]
        invalid = bool(self.forbidden_ids.intersection(gen.token_ids))
        self.response_ids += delta + list(gen.token_ids)
        self.response_mask += [0] * len(delta) + [0 if invalid else 1] * len(gen.token_ids)
        self.response_logprobs += [0.0] * len(delta) + [float(x) for x in gen.logprobs]

        turn = Turn(index=len(self.turns) + 1, text=gen.text, finish_reason=gen.finish_reason)
        self.turns.append(turn)
        self.messages.append(prompts.assistant_message(gen.text))
        if invalid:  # scored 0, masked, and the last turn: nothing may read its vision ids
            turn.reason = self.invalid_turn = SAMPLED_VISION_TOKEN
            self.done = True
            return
        if self.mode == "mgpo":
            self._read_box(turn, gen.text)
        if self.model_turns >= self.max_model_turns:
            self.done = True
        elif self.model_turns == 1 or turn.form is not None:
            self._show_next(turn)  # turn 1 always continues (paper); later turns only with a box
        else:
            self.done = True

    def result(self) -> EpisodeResult:
        if not self.done:
            raise RuntimeError(f"{self._name}: result() before the episode is done")
        final = self.turns[-1].text
        first = self.turns[0] if self.mode != "direct" else None
        box_valid = first.valid if first else None
        if self.invalid_turn:
            box_valid = False if first else None
        reward = score(
            "" if self.invalid_turn else final,
            self.record.answer,
            list(self.record.options),
            format_reward=self.cfg.format_reward,
            grounding_reward=self.cfg.grounding_reward,
            box_valid=box_valid,
        )
        crop_hit = None if first is None or first.coverage is None else first.coverage >= 0.5
        return EpisodeResult(
            id=self.record.id,
            mode=self.mode,
            turns=list(self.turns),
            messages=list(self.messages),
            images=list(self.images),
            final_text=final,
            reward=reward,
            box_valid=box_valid,
            iou=first.iou if first else None,
            crop_hit=crop_hit,
            prompt_ids=list(self.prompt_ids or []),
            response_ids=list(self.response_ids),
            response_mask=list(self.response_mask),
            response_logprobs=list(self.response_logprobs),
            invalid_turn=self.invalid_turn,
        )


def grow_to_valid(box: g.Box, size: tuple[int, int], min_side: float) -> g.Box:
    """Grow a seen-frame box about its centre so each side exceeds `min_side` by a pixel (and
    rounds to a valid integer box), kept inside the frame."""
    w, h = size
    out = list(box)
    for lo, hi, limit in ((0, 2, w), (1, 3, h)):
        need = min(float(limit), float(min_side) + 2.0)
        if out[hi] - out[lo] < need:
            c = (out[lo] + out[hi]) / 2
            out[lo], out[hi] = c - need / 2, c + need / 2
        shift = max(0.0, -out[lo]) - max(0.0, out[hi] - limit)
        out[lo], out[hi] = max(0.0, out[lo] + shift), min(float(limit), out[hi] + shift)
    return (out[0], out[1], out[2], out[3])
