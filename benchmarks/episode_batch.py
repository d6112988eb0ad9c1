"""Benchmark (b): 16 MGPO episodes generated as one batch vs one after another.

Greedy; the batch and the sequential runs produce the same ids (checked here).
Run: `.venv/bin/python benchmarks/episode_batch.py [--model models/base] [--n 16] [--threads 1]`.
"""

from __future__ import annotations

import argparse
import json
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
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    p = params()
    model = args.model or p.paths.base_model
    t = load_templates(p.episode.templates, p.episode.template)
    recs = records(args.n, size=(1600, 1200))
    view = (p.model.min_pixels, p.model.max_pixels)
    sp = SamplingParams(max_new_tokens=p.episode.max_new_tokens)
    eng = TransformersEngine.from_pretrained(model, device=args.device)
    run_episodes(eng, [Episode(recs[0], p.episode, t, "mgpo", view)], sp, batch_size=1)  # warm-up

    def go(batch_size):
        eps = [Episode(r, p.episode, t, "mgpo", view) for r in recs]
        start = time.perf_counter()
        res = run_episodes(eng, eps, sp, batch_size=batch_size)
        return time.perf_counter() - start, res

    seq_s, seq = go(1)
    bat_s, bat = go(args.n)
    assert [r.response_ids for r in seq] == [r.response_ids for r in bat], "batched and sequential ids differ"
    report = {
        "benchmark": "episode_batch",
        "model": model,
        "episodes": args.n,
        "generated_tokens": sum(sum(r.response_mask) for r in bat),
        "sequential_s": round(seq_s, 3),
        "batched_s": round(bat_s, 3),
        "ratio_sequential_over_batched": round(seq_s / bat_s, 3),
    }
    print(json.dumps(report))
    print(f"{args.n} episodes: sequential / batched = {report['ratio_sequential_over_batched']:.2f}x")


if __name__ == "__main__":
    main()
