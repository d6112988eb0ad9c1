"""Tests of components/reward.py: scoring tables and final-turn extraction."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from components.reward import final_turn_text, last_boxed, score, to_letter

OPTIONS = ["red", "blue", "green", "Dark Purple"]

SCORE_TABLE = [
    # (final text, answer, accuracy, format_ok, extracted)
    ("The answer is \\boxed{B}.", "B", 1.0, True, "B"),
    ("\\boxed{b}", "B", 1.0, True, "b"),
    ("\\boxed{ (B) }", "B", 1.0, True, " (B) "),
    ("\\boxed{B.}", "B", 1.0, True, "B."),
    ("\\boxed{(B) blue}", "B", 1.0, True, "(B) blue"),
    ("\\boxed{B. Blue}", "B", 1.0, True, "B. Blue"),
    ("\\boxed{(B) red}", "B", 0.0, False, "(B) red"),  # letter and text disagree: not an option
    ("\\boxed{blue}", "B", 1.0, True, "blue"),
    ("\\boxed{  dark   PURPLE }", "D", 1.0, True, "  dark   PURPLE "),
    ("\\boxed{\\text{C}}", "C", 1.0, True, "\\text{C}"),
    ("\\boxed{A}", "B", 0.0, True, "A"),  # wrong letter
    ("\\boxed{E}", "B", 0.0, False, "E"),  # no option E
    ("first \\boxed{A} then \\boxed{B}", "B", 1.0, True, "B"),  # the last one wins
    ("first \\boxed{B} then \\boxed{A}", "B", 0.0, True, "A"),
    ("The answer is B.", "B", 0.0, False, None),  # no \boxed{}
    ("\\boxed{}", "B", 0.0, False, ""),
    ("\\boxed{B", "B", 0.0, False, None),  # unbalanced
    ("garbage \x00 {}{}}}\\boxed", "B", 0.0, False, None),
    ("", "A", 0.0, False, None),
    ("\\boxed{B} \\boxed{yellow}", "B", 0.0, False, "yellow"),  # the last is not an option
    ("\\boxed {C}", "C", 1.0, True, "C"),
]


@pytest.mark.parametrize(("text", "answer", "accuracy", "format_ok", "extracted"), SCORE_TABLE)
def test_score_table(text, answer, accuracy, format_ok, extracted):
    r = score(text, answer, OPTIONS)
    assert (r.accuracy, r.format_ok, r.extracted) == (accuracy, format_ok, extracted)
    assert r.score == accuracy  # paper default: correctness only


def test_answer_may_be_lowercase_or_option_text():
    assert score("\\boxed{C}", "c", OPTIONS).accuracy == 1.0
    assert score("\\boxed{C}", "green", OPTIONS).accuracy == 1.0
    with pytest.raises(ValueError, match="neither a letter nor one of the options"):
        score("\\boxed{C}", "purple", OPTIONS)


def test_optional_terms():
    r = score("\\boxed{A}", "B", OPTIONS, format_reward=0.1, grounding_reward=0.5, box_valid=True)
    assert r.score == pytest.approx(0.6) and r.accuracy == 0.0
    r = score("\\boxed{B}", "B", OPTIONS, format_reward=0.1, grounding_reward=0.5, box_valid=False)
    assert r.score == pytest.approx(1.1)
    assert score("no", "B", OPTIONS, format_reward=0.1, grounding_reward=0.5).score == 0.0


def test_letter_options_prefer_letters():
    # Options that are themselves letters: "A" names option A (the letter reading wins).
    assert to_letter("A", ["B", "A"]) == "A"
    assert to_letter("x", ["x", "y"]) == "A"  # not a letter in range: read as option text


def test_last_boxed_nested():
    assert last_boxed("\\boxed{\\frac{1}{2}} and \\boxed{x{y}z}") == "x{y}z"


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_score_never_raises_on_model_text(text):
    r = score(text, "A", OPTIONS)
    assert r.accuracy in (0.0, 1.0)


TURN1 = 'I look at the ring.\n```json\n[{"bbox_2d": [1, 2, 40, 50], "label": "ring"}]\n```'
USER2 = "Based on the provided coordinates, return the sub-image:Question: Q? Carefully ... enclosed within \\boxed{}."


def test_final_turn_text_with_special_tokens():
    s = f"{TURN1}<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{USER2}<|im_end|>\n<|im_start|>assistant\nIt is \\boxed{{B}}<|im_end|>"
    assert final_turn_text(s) == "It is \\boxed{B}"
    assert score(final_turn_text(s), "B", OPTIONS).accuracy == 1.0


def test_final_turn_text_without_special_tokens():
    s = f"{TURN1}\nuser\n{USER2}\nassistant\nIt is \\boxed{{B}}"
    assert final_turn_text(s) == "It is \\boxed{B}"
    # Truncated before the answer turn: nothing to score (not the template's empty \boxed{}).
    assert final_turn_text(f"{TURN1}\nuser\n{USER2}") == ""
    assert final_turn_text(f"\\boxed{{A}}<|im_end|>\n<|im_start|>user\n{USER2}<|im_end|>\n") == ""


def test_final_turn_text_single_turn():
    assert final_turn_text("Direct \\boxed{C}<|im_end|>") == "Direct \\boxed{C}"
    assert final_turn_text("") == ""
