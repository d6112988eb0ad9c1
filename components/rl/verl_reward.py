"""verl's `reward.custom_reward_function` for MGPO: the shared reward on the final assistant turn.

verl 0.9.1's reward manager decodes the whole response span (turn 1, the environment's turn-2
user text with its template `\\boxed{}` instruction, turn 2) into `solution_str` and calls
`compute_score(data_source, solution_str, ground_truth, extra_info, **reward_kwargs)`. Only the
final assistant turn may be scored: the agent loop hands its token-exact final text through
`extra_info["mgpo_final_text"]` (verl merges the loop's `extra_fields` into `extra_info`); when
that is absent (a reward computed outside the agent loop) the text is cut from `solution_str`
with `components.reward.final_turn_text`. Scoring is `components.reward.score`, as everywhere.
An episode that ended on an invalid turn (`extra_info["mgpo_invalid_turn"]`, a sampled vision
token) scores 0, as `Episode.result` scores it; `invalid_turn` records it per trajectory (verl
0.9.1 averages reward extras into its validation metrics and rollout dumps, not its step metrics).

Configured by `components.rl.verl_config` as
`reward.custom_reward_function.path=pkg://components.rl.verl_reward`, `.name=compute_score`.
"""

from __future__ import annotations

from typing import Any

from components.reward import final_turn_text, score

FINAL_TEXT_KEY = "mgpo_final_text"
BOX_VALID_KEY = "mgpo_box_valid"
INVALID_TURN_KEY = "mgpo_invalid_turn"


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    format_reward: float = 0.0,
    grounding_reward: float = 0.0,
    **_: Any,
) -> dict[str, float]:
    """Score one trajectory; always the same keys, since verl stacks them across the batch."""
    info = extra_info or {}
    options = info.get("options")
    if options is None or len(options) == 0:
        raise ValueError(
            f"sample {info.get('id', '?')} ({data_source}): extra_info has no options; "
            "the canonical parquet (components.data.parquet) carries them"
        )
    final = info.get(FINAL_TEXT_KEY)
    if not isinstance(final, str):
        final = final_turn_text(solution_str)
    box_valid = info.get(BOX_VALID_KEY)
    invalid = bool(info.get(INVALID_TURN_KEY))  # the episode's rule: an invalid turn scores 0
    if invalid:
        final, box_valid = "", None if box_valid is None else False
    result = score(
        final,
        ground_truth,
        [str(o) for o in options],
        format_reward=float(format_reward),
        grounding_reward=float(grounding_reward),
        box_valid=None if box_valid is None else bool(box_valid),
    )
    return {
        "score": float(result.score),
        "acc": float(result.accuracy),
        "format_ok": float(result.format_ok),
        "box_valid": float(bool(box_valid)),
        "invalid_turn": float(invalid),
    }
