"""verl's custom reward function scores only the final assistant turn, with the shared reward.

These strings have the shapes verl's reward manager produces (the whole response span decoded,
special tokens skipped or kept); a GPU run is needed only to see them come out of vLLM.
"""

from __future__ import annotations

import pytest

from components.rl.verl_reward import compute_score

TEMPLATE = "Present your reasoning clearly, and provide the final answer (A, B, C, D, or E) enclosed within \\boxed{}."
OPTIONS = ["red", "blue", "green"]


def skipped(turn1: str, turn2: str) -> str:
    """What verl's naive reward manager decodes (skip_special_tokens=True)."""
    return f"{turn1}\nuser\nBased on the provided coordinates, return the sub-image:Question: ? {TEMPLATE}\nassistant\n{turn2}"


def kept(turn1: str, turn2: str) -> str:
    return (
        f"{turn1}<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{TEMPLATE}<|im_end|>\n"
        f"<|im_start|>assistant\n{turn2}<|im_end|>"
    )


@pytest.mark.parametrize("decode", [skipped, kept])
def test_only_the_last_turn_counts(decode):
    right_in_turn1 = decode('[{"bbox_2d": [1, 2, 3, 4]}] \\boxed{B}', "so it is \\boxed{A}")
    assert compute_score("s", right_in_turn1, "B", {"options": OPTIONS})["score"] == 0.0
    assert compute_score("s", right_in_turn1, "A", {"options": OPTIONS})["score"] == 1.0
    no_answer_in_last = decode("\\boxed{B}", "I cannot tell")
    out = compute_score("s", no_answer_in_last, "B", {"options": OPTIONS})
    assert out == {"score": 0.0, "acc": 0.0, "format_ok": 0.0, "box_valid": 0.0, "invalid_turn": 0.0}


def test_a_response_cut_inside_the_user_turn_has_no_final_answer():
    cut = "\\boxed{B}\nuser\nBased on the provided coordinates ... within \\boxed{B"
    assert compute_score("s", cut, "B", {"options": OPTIONS})["score"] == 0.0


def test_the_agent_loops_final_text_wins_over_parsing():
    info = {"options": OPTIONS, "mgpo_final_text": "\\boxed{C}", "mgpo_box_valid": True}
    out = compute_score("s", skipped("x", "\\boxed{A}"), "C", info)
    assert out == {"score": 1.0, "acc": 1.0, "format_ok": 1.0, "box_valid": 1.0, "invalid_turn": 0.0}


def test_option_text_and_optional_terms():
    info = {"options": OPTIONS, "mgpo_final_text": "\\boxed{green}", "mgpo_box_valid": True}
    out = compute_score("s", "", "C", info, format_reward=0.1, grounding_reward=0.2)
    assert out["score"] == pytest.approx(1.3)
    info["mgpo_box_valid"] = False
    assert compute_score("s", "", "A", info, format_reward=0.1, grounding_reward=0.2)[
        "score"
    ] == pytest.approx(0.1)


def test_missing_options_name_the_sample():
    with pytest.raises(ValueError, match="sample q7"):
        compute_score("s", "\\boxed{A}", "A", {"id": "q7"})
