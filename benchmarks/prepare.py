"""Benchmark of the prepare stage's data path: images per second and peak memory for N and 10N
synthetic samples, each run in its own subprocess (so peak RSS is that run's alone).

Each run builds a synthetic dataset with only a train split of the given size, through the
stage's own code (`build_synthetic`: generate -> validate -> oracle -> streamed parquet ->
manifest -> contact sheet), with params.yaml's generator settings. The figure is the ratio of
peak RSS at 10N over N (target <= 1.2: memory must not grow with the dataset). Also printed:
RSS after imports (torch comes in with transformers' smart_resize) and the growth above it.

Run: `.venv/bin/python benchmarks/prepare.py` (options: --n 16 --rows-per-group 16
--width 2048 --height 1536 --params params.yaml).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from components.config import load_params
    from components.data.build import build_synthetic
    from components.data.oracle import Views

    overrides = [
        f"prepare.synthetic.train={args.count}",
        "prepare.synthetic.val=0",
        "prepare.synthetic.test=0",
        "prepare.synthetic.scale_sweep.per_size=0",
        "prepare.synthetic.split_4k.count=0",
        f"prepare.synthetic.width={args.width}",
        f"prepare.synthetic.height={args.height}",
        f"prepare.rows_per_group={args.rows_per_group}",
    ]
    params = load_params(args.params, overrides)
    views = Views(
        params.model.min_pixels,
        params.model.max_pixels,
        params.episode.crop_min_pixels,
        params.episode.crop_max_pixels,
    )
    baseline = peak_rss_mib()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        result = build_synthetic(params.prepare, out, views, progress=False)
        seconds = time.perf_counter() - start
        size = result.manifest["splits"]["train"]["bytes"]
    report = {
        "count": args.count,
        "seconds": seconds,
        "images_per_s": args.count / seconds,
        "import_rss_mib": baseline,
        "peak_rss_mib": peak_rss_mib(),
        "parquet_mib": size / 2**20,
    }
    print("RESULT " + json.dumps(report))


def measure(args: argparse.Namespace, count: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--count", str(count), "--params", args.params]
    cmd += [
        "--rows-per-group",
        str(args.rows_per_group),
        "--width",
        str(args.width),
        "--height",
        str(args.height),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(
            f"benchmark run with {count} samples failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return json.loads(lines[-1].removeprefix("RESULT "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n", type=int, default=16, help="N: the small run's sample count (the large one is 10N)"
    )
    parser.add_argument(
        "--rows-per-group", type=int, default=16, help="parquet row-group size (prepare.rows_per_group)"
    )
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--height", type=int, default=1536)
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    small, large = measure(args, args.n), measure(args, 10 * args.n)
    print(f"synthetic {args.width}x{args.height}, rows_per_group {args.rows_per_group}, one process per run")
    print(f"{'samples':>8} {'images/s':>9} {'seconds':>8} {'import RSS':>11} {'peak RSS':>9} {'parquet':>8}")
    for r in (small, large):
        print(
            f"{r['count']:>8} {r['images_per_s']:>9.2f} {r['seconds']:>8.1f} {r['import_rss_mib']:>8.0f} MiB"
            f" {r['peak_rss_mib']:>5.0f} MiB {r['parquet_mib']:>5.1f} MiB"
        )
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    growth_small = small["peak_rss_mib"] - small["import_rss_mib"]
    growth_large = large["peak_rss_mib"] - large["import_rss_mib"]
    print(f"peak RSS ratio 10N/N: {ratio:.3f} (target <= 1.2) -> {'PASS' if ratio <= 1.2 else 'FAIL'}")
    print(f"growth above imports: {growth_small:.0f} MiB at N, {growth_large:.0f} MiB at 10N")
    return 0 if ratio <= 1.2 else 1


if __name__ == "__main__":
    sys.exit(main())
