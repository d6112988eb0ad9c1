"""Prompt templates and chat messages of the MGPO episode.

Templates live in `components/templates.yaml` (params `episode.templates` / `episode.template`);
the `paper` set holds the paper's prompts verbatim (MGPO.md), including the authors' "Out the
coordinates" typo. This module only loads, checks and renders them, and builds Hugging Face chat
messages (`{"role": ..., "content": [{"type": "image"}, {"type": "text", "text": ...}]}`) that
every driver (transformers engine, verl agent loop, SFT trajectories) renders with the
processor's chat template. Images are placeholders here; the episode keeps the PIL images.

Departure from the paper: none in the wording. The paper writes turn 1 as
`Question: {question}` ending in a period; `{question_stop}` adds the period only when the
question has no final punctuation (no "?." pairs).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

import yaml

LETTERS = string.ascii_uppercase
_PLACEHOLDER = re.compile(r"\{(question_stop|question|choices|letter|text|x1|y1|x2|y2|label)\}")


class TemplateError(ValueError):
    """A template file or set is unusable; the message names the file and key."""


@dataclass(frozen=True)
class Templates:
    """One template set (see templates.yaml for what each field is)."""

    name: str
    system: str
    turn1: str
    valid_prefix: str
    valid: str
    invalid_prefix: str
    invalid: str
    choices_header: str
    choice: str
    box_reply: str
    direct_system: str
    direct: str


def render(template: str, **values: str) -> str:
    """Replace `{name}` placeholders literally; other braces (\\boxed{}) stay as written.

    Written by hand because str.format would need every LaTeX brace doubled in the YAML.
    """

    def sub(m: re.Match) -> str:
        key = m.group(1)
        if key not in values:
            raise TemplateError(f"template placeholder {{{key}}} has no value")
        return str(values[key])

    return _PLACEHOLDER.sub(sub, template)


@lru_cache(maxsize=16)
def _load_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise TemplateError(f"templates file {path} not found (params episode.templates)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise TemplateError(f"templates file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise TemplateError(f"templates file {path}: top level must map set names to templates")
    return data


def load_templates(path: str | Path = "components/templates.yaml", name: str = "paper") -> Templates:
    """Load and check one template set; errors name the file, the set and the key."""
    data = _load_file(str(path))
    if name not in data:
        raise TemplateError(
            f"templates file {path}: no set {name!r} (params episode.template); has {sorted(data)}"
        )
    raw = data[name]
    if not isinstance(raw, dict):
        raise TemplateError(f"templates file {path}: set {name!r} must be a mapping")
    needed = [f.name for f in fields(Templates) if f.name != "name"]
    missing = [k for k in needed if k not in raw]
    extra = [k for k in raw if k not in needed]
    if missing or extra:
        raise TemplateError(
            f"templates file {path}, set {name!r}: missing keys {missing}, unknown keys {extra}"
        )
    bad = [k for k in needed if not isinstance(raw[k], str)]
    if bad:
        raise TemplateError(f"templates file {path}, set {name!r}: keys {bad} must be strings")
    return Templates(name=name, **{k: raw[k] for k in needed})


# ----------------------------------------------------------------------------- rendering


def question_stop(question: str) -> str:
    """The question ending in sentence punctuation (a period added only when it has none)."""
    q = question.strip()
    return q if q.endswith((".", "?", "!", "。", "？")) else q + "."


def render_choices(t: Templates, options: list[str]) -> str:
    """`The choices are listed below:\\n(A) ...\\n(B) ...\\n` (empty when there are no options)."""
    if not options:
        return ""
    if len(options) > len(LETTERS):
        raise TemplateError(f"{len(options)} options: at most {len(LETTERS)} are supported")
    body = "".join(render(t.choice, letter=LETTERS[i], text=str(o).strip()) for i, o in enumerate(options))
    return t.choices_header + body


def render_box(t: Templates, box: tuple[float, float, float, float], label: str = "key area") -> str:
    """An assistant box reply in the template's format, coordinates as integers (Qwen2.5-VL's)."""
    x1, y1, x2, y2 = (round(v) for v in box)
    return render(t.box_reply, x1=x1, y1=y1, x2=x2, y2=y2, label=label)


# ------------------------------------------------------------------------------ messages


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


IMAGE = {"type": "image"}


def system_message(text: str) -> dict:
    return {"role": "system", "content": [_text(text)]}


def assistant_message(text: str) -> dict:
    return {"role": "assistant", "content": [_text(text)]}


def turn1_messages(t: Templates, question: str) -> list[dict]:
    """System + turn-1 user (the first view, then the box request; no choices)."""
    user = render(t.turn1, question=question.strip(), question_stop=question_stop(question))
    return [system_message(t.system), {"role": "user", "content": [dict(IMAGE), _text(user)]}]


def followup_message(t: Templates, question: str, options: list[str], valid: bool) -> dict:
    """The environment's user turn after a box: the crop (valid) or the first view again
    (invalid or missing box), then the question with its choices."""
    prefix, body = (t.valid_prefix, t.valid) if valid else (t.invalid_prefix, t.invalid)
    text = render(
        body,
        question=question.strip(),
        question_stop=question_stop(question),
        choices=render_choices(t, options),
    )
    return {"role": "user", "content": [_text(prefix), dict(IMAGE), _text(text)]}


def direct_messages(t: Templates, question: str, options: list[str]) -> list[dict]:
    """The single-turn baseline: system, then the image and the question with its choices."""
    text = render(
        t.direct,
        question=question.strip(),
        question_stop=question_stop(question),
        choices=render_choices(t, options),
    )
    return [system_message(t.direct_system), {"role": "user", "content": [dict(IMAGE), _text(text)]}]


def count_images(messages: list[dict]) -> int:
    """Image placeholders in a conversation (must equal the episode's image list)."""
    return sum(
        1
        for m in messages
        if isinstance(m["content"], list)
        for c in m["content"]
        if c.get("type") == "image"
    )
