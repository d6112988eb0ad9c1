"""Benchmark (c): first view of an 8K JPEG, reduced-scale (draft) decoding vs full decode + resize.

Both give the same size (the model's seen frame); the pixel difference of the two results is
reported (mean and max absolute difference on 0-255, and PSNR).
Run: `.venv/bin/python benchmarks/episode_first_view.py [--width 7680 --height 4320] [--repeats 5]`.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
from _episode_common import jpeg, params, photo_like, timed

from components import grounding


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=7680)
    ap.add_argument("--height", type=int, default=4320)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--max-pixels", type=int, default=None, help="first-view budget (default: params model.max_pixels)"
    )
    args = ap.parse_args()
    p = params()
    budget = (p.model.min_pixels, args.max_pixels or p.model.max_pixels)
    data = jpeg(photo_like(args.width, args.height, 0))
    fast, fast_t = timed(lambda: grounding.first_view(data, *budget), args.repeats)
    full, full_t = timed(lambda: grounding.first_view(data, *budget, draft=False), args.repeats)
    a = np.asarray(grounding.first_view(data, *budget), dtype=np.float64)
    b = np.asarray(grounding.first_view(data, *budget, draft=False), dtype=np.float64)
    mse = float(((a - b) ** 2).mean())
    report = {
        "benchmark": "episode_first_view",
        "image": f"{args.width}x{args.height} JPEG ({len(data) / 1e6:.1f} MB)",
        "seen": list(a.shape[1::-1]),
        "draft_s": round(fast, 4),
        "full_s": round(full, 4),
        "ratio_full_over_draft": round(full / fast, 3),
        "draft_runs_s": [round(x, 4) for x in fast_t],
        "full_runs_s": [round(x, 4) for x in full_t],
        "mean_abs_diff": round(float(np.abs(a - b).mean()), 3),
        "max_abs_diff": int(np.abs(a - b).max()),
        "psnr_db": round(10 * math.log10(255**2 / mse), 2) if mse > 0 else None,
    }
    print(json.dumps(report))
    print(
        f"8K first view: full decode / draft = {report['ratio_full_over_draft']:.2f}x, "
        f"mean |diff| {report['mean_abs_diff']} / 255, PSNR {report['psnr_db']} dB"
    )


if __name__ == "__main__":
    main()
