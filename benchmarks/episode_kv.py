"""Benchmark (a): a two-turn MGPO episode with KV-cache reuse vs full re-encoding per turn.

Both engines produce the same ids (greedy; checked here); the re-encoding one feeds the whole
context (both images included) again at turn 2, as the reference code did. Runs alternate
between the two engines so machine load hits both alike; medians are reported. The gain grows
with the context: try `--max-pixels 1003520` (the paper's first-view budget) and few new tokens.
Run: `.venv/bin/python benchmarks/episode_kv.py [--model models/base] [--repeats 5]
[--max-pixels N] [--max-new-tokens N] [--threads 1]`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _episode_common import params, records

from components.engines.base import SamplingParams, run_episodes
from components.engines.transformers_engine import TransformersEngine
from components.episode import Episode
from components.prompts import load_templates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="bundle folder (default: params paths.base_model)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    ap.add_argument(
        "--max-pixels", type=int, default=None, help="first-view budget (default: model.max_pixels)"
    )
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: episode.max_new_tokens")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = params()
    model = args.model or p.paths.base_model
    t = load_templates(p.episode.templates, p.episode.template)
    (rec,) = records(1)
    view = (p.model.min_pixels, args.max_pixels or p.model.max_pixels)
    sp = SamplingParams(max_new_tokens=args.max_new_tokens or p.episode.max_new_tokens)
    engines = {
        "kv": TransformersEngine.from_pretrained(model, device=args.device),
        "reencode": TransformersEngine.from_pretrained(model, device=args.device, reuse_kv=False),
    }
    runs: dict[str, list[float]] = {k: [] for k in engines}
    ids = {}
    for rep in range(args.repeats + 1):  # the first round warms up
        for name, eng in engines.items():
            start = time.perf_counter()
            (res,) = run_episodes(eng, [Episode(rec, p.episode, t, "mgpo", view)], sp, batch_size=1)
            if rep:
                runs[name].append(time.perf_counter() - start)
            ids[name] = (res.prompt_ids, res.response_ids, len(res.turns))
    assert ids["kv"] == ids["reencode"], "KV reuse and re-encoding disagree"
    prompt, response, turns = ids["kv"]
    med = {k: statistics.median(v) for k, v in runs.items()}
    report = {
        "benchmark": "episode_kv",
        "model": model,
        "first_view_max_pixels": view[1],
        "max_new_tokens": sp.max_new_tokens,
        "turns": turns,
        "prompt_tokens": len(prompt),
        "context_tokens": len(prompt) + len(response),
        "kv_s": round(med["kv"], 4),
        "reencode_s": round(med["reencode"], 4),
        "ratio_reencode_over_kv": round(med["reencode"] / med["kv"], 3),
        "runs_s": {k: [round(x, 4) for x in v] for k, v in runs.items()},
    }
    print(json.dumps(report))
    print(f"two-turn episode: re-encode / KV reuse = {report['ratio_reencode_over_kv']:.2f}x")


if __name__ == "__main__":
    main()
