"""Tests of components/prompts.py: the paper's wording verbatim, choices, messages, errors."""

from __future__ import annotations

import pytest

from components import prompts as p


@pytest.fixture(scope="module")
def t() -> p.Templates:
    return p.load_templates("components/templates.yaml", "paper")


def test_paper_wording_is_verbatim(t):
    assert t.system == (
        "You are a helpful assistant. Given an image and one question. First, identify the coordinates "
        "of the key image area relevant to solving the problem. Append the coordinates in JSON format at "
        "the end of your response and stop. This will trigger cropping of the corresponding area in the "
        "original image and enlarge it for improved clarity. Once the enlarged image is available, provide "
        "the final answer (A, B, C, D, or E) enclosed within \\boxed{}."
    )
    msgs = p.turn1_messages(t, "What colour is the ring")
    assert msgs[0] == {"role": "system", "content": [{"type": "text", "text": t.system}]}
    assert msgs[1]["content"][0] == {"type": "image"}
    assert msgs[1]["content"][1]["text"] == (
        "Question: What colour is the ring. Out the coordinates of the key image area relevant to the problem in JSON format."
    )
    # A question that already ends in punctuation gets no extra period.
    assert p.turn1_messages(t, " Is it red? ")[1]["content"][1]["text"].startswith(
        "Question: Is it red? Out the"
    )


def test_followup_valid_and_invalid(t):
    valid = p.followup_message(t, "What colour is the ring?", ["red", "blue"], valid=True)
    assert valid["role"] == "user"
    assert valid["content"][0]["text"] == "Based on the provided coordinates, return the sub-image:"
    assert valid["content"][1] == {"type": "image"}
    assert valid["content"][2]["text"] == (
        "Question: What colour is the ring? The choices are listed below:\n(A) red\n(B) blue\n"
        "Carefully analyze both the original image and the enlarged sub-image to solve the question step by "
        "step. If the sub-image does not provide sufficient information, refer to the original image to find "
        "the solution. Present your reasoning clearly, and provide the final answer (A, B, C, D, or E) "
        "enclosed within \\boxed{}."
    )
    invalid = p.followup_message(t, "Q?", ["x", "y", "z"], valid=False)
    assert invalid["content"][0]["text"] == (
        "Not providing correct coordinates or invalid coordinate values, return the original image:"
    )
    assert invalid["content"][2]["text"] == (
        "Question: Q? The choices are listed below:\n(A) x\n(B) y\n(C) z\nCarefully analyze the original "
        "image to solve the question step by step. Present your reasoning clearly, and provide the final "
        "answer (A, B, C, D, or E) enclosed within \\boxed{}."
    )


def test_direct_and_box_reply(t):
    msgs = p.direct_messages(t, "Where is it?", ["left", "right"])
    assert msgs[0]["content"][0]["text"] == "You are a helpful assistant."
    text = msgs[1]["content"][1]["text"]
    assert text.startswith("Question: Where is it? The choices are listed below:\n(A) left\n(B) right\n")
    assert text.endswith("\\boxed{}.")
    assert p.render_box(t, (10.4, 20.6, 110, 220.5), "ring") == (
        '```json\n[\n\t{"bbox_2d": [10, 21, 110, 220], "label": "ring"}\n]\n```'
    )
    assert p.count_images(msgs) == 1


def test_render_leaves_latex_braces_and_checks_values():
    assert p.render("\\boxed{} {question} {x}", question="q") == "\\boxed{} q {x}"
    with pytest.raises(p.TemplateError, match="question"):
        p.render("{question}")
    assert p.render_choices(p.load_templates(), []) == ""


def test_template_errors_name_file_and_key(tmp_path):
    with pytest.raises(p.TemplateError, match="not found"):
        p.load_templates(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("paper:\n  system: hi\n  surprise: 1\n")
    with pytest.raises(
        p.TemplateError, match=r"bad.yaml, set 'paper': missing keys \['turn1'.*unknown keys \['surprise'\]"
    ):
        p.load_templates(bad, "paper")
    with pytest.raises(p.TemplateError, match="no set 'other'"):
        p.load_templates("components/templates.yaml", "other")
