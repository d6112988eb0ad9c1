"""`mgpo infer IMAGE "QUESTION" --options ... --model PATH`: one MGPO episode on one image.

Prints each turn, the box in the seen frame and in original pixels, its validity, and the final
answer (`--json` prints one JSON object instead), and writes a PNG with the box drawn on the
original and the crop beside it. Not a pipeline stage, so it runs without Prefect or MLflow.
The episode is the shared one (components/episode.py); this only wires the command line to it.
"""

from __future__ import annotations

import json
import sys

from components.config import ParamsPath, load_params


def run(
    params_path: ParamsPath,
    overrides: list[str],
    *,
    image: str,
    question: str,
    options: list[str],
    model: str | None,
    mode: str,
    out: str,
    as_json: bool = False,
    **_: object,
) -> int:
    from components.evaluation.infer import format_infer, run_infer

    params = load_params(params_path, overrides)  # not a flow: no Prefect API to check
    try:
        result = run_infer(image, question, options, params, model=model, mode=mode, out=out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"mgpo infer: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if as_json else format_infer(result))
    return 0
