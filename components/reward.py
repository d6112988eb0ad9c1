"""The MGPO reward: rule-based answer correctness from the last `\\boxed{}` of the final turn.

`score(final_text, answer, options)` is 1 when the last `\\boxed{...}` names the right option,
by its letter (`A`, `(A)`, `A.`, `(A) red`) or by the option's text, case and whitespace
normalized; else 0. Optional extra terms (params `episode.format_reward`,
`episode.grounding_reward`) default to 0, as in the paper, which used correctness only.
`final_turn_text(solution_str)` cuts a decoded multi-turn response (verl's `solution_str`: both
turns and the injected user text) down to the last assistant turn, so that the template's own
`\\boxed{}` and a turn-1 answer are never scored.
Tests: `.venv/bin/python -m pytest tests/components/test_reward.py -q`.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class RewardBreakdown:
    score: float
    """accuracy + format_reward * format_ok + grounding_reward * box_valid."""
    accuracy: float
    """1.0 when the extracted answer is the right option, else 0.0."""
    format_ok: bool
    """A \\boxed{} exists and names one of the options."""
    extracted: str | None
    """Content of the last \\boxed{} (None when there is none)."""
    letter: str | None = None
    """The option letter it names (None when it names none)."""


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (braces balanced, so `\\boxed{\\text{A}}` works)."""
    if not isinstance(text, str):
        return None
    found = None
    for m in re.finditer(r"\\boxed\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found = text[m.end() : i - 1]
    return found


def _norm(s: str) -> str:
    s = re.sub(r"\\text\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\s+", " ", s).strip().lower()
    return s.strip(" .:;,'\"$")


def to_letter(extracted: str | None, options: list[str]) -> str | None:
    """The option letter named by an extracted answer, or None.

    Accepted: the letter alone (`A`, `a`, `(A)`, `A.`, `A)`), the letter followed by its option
    text (`(A) red`, `A. red`), or exactly an option's text (normalized).
    """
    if extracted is None:
        return None
    n = len(options)
    s = _norm(extracted)
    m = re.fullmatch(r"\(?([a-z])\)?(?:[.:)]?\s+(.*))?", s)
    if m:
        idx = ord(m.group(1)) - ord("a")
        rest = m.group(2)
        if idx < n and (rest is None or _norm(rest) == _norm(str(options[idx]))):
            return LETTERS[idx]
    texts = [_norm(str(o)) for o in options]
    if s in texts and texts.count(s) == 1:
        return LETTERS[texts.index(s)]
    return None


def _answer_letter(answer: str, options: list[str]) -> str:
    a = str(answer).strip()
    if len(a) == 1 and a.upper() in LETTERS[: max(len(options), 1)]:
        return a.upper()
    letter = to_letter(a, options)
    if letter is None:
        raise ValueError(
            f"ground-truth answer {answer!r} is neither a letter nor one of the options {options}"
        )
    return letter


def score(
    final_text: str,
    answer: str,
    options: list[str],
    *,
    format_reward: float = 0.0,
    grounding_reward: float = 0.0,
    box_valid: bool | None = None,
) -> RewardBreakdown:
    """Score the final turn's text against the ground-truth letter (see the module docstring)."""
    truth = _answer_letter(answer, options)
    extracted = last_boxed(final_text)
    letter = to_letter(extracted, options)
    accuracy = 1.0 if letter == truth else 0.0
    format_ok = letter is not None
    total = accuracy + format_reward * float(format_ok) + grounding_reward * float(box_valid is True)
    return RewardBreakdown(
        score=total, accuracy=accuracy, format_ok=format_ok, extracted=extracted, letter=letter
    )


_IM_END = "<|im_end|>"
_IM_START = "<|im_start|>"


def final_turn_text(solution_str: str) -> str:
    """The last assistant turn of a decoded (multi-turn) response.

    Works with special tokens kept (`<|im_start|>assistant\\n ... <|im_end|>`) and with them
    skipped (the markers decode to `\\nuser\\n` / `\\nassistant\\n` lines); a single-turn
    response without markers is returned whole (less a trailing end token).
    """
    s = solution_str or ""
    if _IM_START in s:
        last = s.rsplit(_IM_START, 1)[1]
        # The last turn opened is the model's, or the response stopped inside a user turn.
        s = last.removeprefix("assistant\n") if last.startswith("assistant\n") else ""
    else:
        user = max(s.rfind("\nuser\n"), -1 if not s.startswith("user\n") else 0)
        if user >= 0:
            tail = s[user:]
            k = tail.rfind("\nassistant\n")
            s = tail[k + len("\nassistant\n") :] if k >= 0 else ""
    s = s.split(_IM_END, 1)[0]
    return s.replace("<|endoftext|>", "").strip()
