"""Stage `build_model`: the embedded tiny Qwen2.5-VL bundle, or a check of an external model.

With `model.source: tiny` (default) it builds tokenizer, processor and random-weight model
offline, deterministically from `model.seed`, into `paths.base_model`. With a Hugging Face id, a
local folder or a `models:/<name>@<alias>` URI it copies the model's files into `paths.base_model`
(so DVC versions the exact weights every later stage starts from) and checks that its config and
processor load.
Departure from the paper: the paper starts from Qwen2.5-VL-7B-Instruct (set `model.source`).

Run: `mgpo build-model` (DVC: `dvc repro build_model`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow

from flows._stage import ParamsPath, params_for


@flow(name="build-model")
def build_model_flow(params_path: ParamsPath = "params.yaml", overrides: list[str] | None = None) -> dict:
    import mlflow

    from components.models.loading import materialize_external
    from components.models.tiny import build_tiny_bundle
    from components.tracking import stage_run

    params = params_for(params_path, overrides)
    cfg, paths = params.model, params.paths
    with stage_run("build_model", params.tracking, {"model": cfg}):
        start = time.perf_counter()
        if cfg.source == "tiny":
            info = build_tiny_bundle(cfg, paths.base_model, params.episode.templates)
        else:
            info = materialize_external(cfg.source, paths.base_model, cfg.trust_remote_code)
        info["seconds"] = round(time.perf_counter() - start, 2)
        mlflow.log_dict(info["config"], "model_config.json")
        metrics = {k: info[k] for k in ("parameters", "bundle_bytes", "vocab_size") if k in info}
        mlflow.log_metrics({**metrics, "build_seconds": info["seconds"]})
        summary = {k: v for k, v in info.items() if k != "config"}
        out = Path(paths.model_info)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"build-model: {json.dumps(summary)}")
    return summary


def run(params_path: ParamsPath, overrides: list[str], **_: object) -> int:
    params_for(params_path, overrides)  # invalid params fail here, before Prefect starts
    build_model_flow(params_path, overrides)
    return 0
