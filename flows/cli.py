"""The `mgpo` command: one subcommand per pipeline stage, plus `pipeline` and `infer`.

Every stage runs as a Prefect flow and opens one MLflow run. Common options: `--params PATH`
(default params.yaml; repeatable: the first file is the base, each later one a partial overlay
deep-merged on it, mappings merging and lists and scalars replacing) and repeated
`-S key.path=value` overrides applied after the overlays, all validated together.
Before any flow module is imported, the params are validated and the MLflow tracking server
and the Prefect API (when they are servers) are asked whether they answer (flows/preflight.py):
a bad key or a server that is down is one line, within a few seconds. `mgpo pipeline` with
every DVC stage up to date says so and exits there (flows/uptodate.py).
DVC's stages call these commands (see dvc.yaml).

    mgpo build-model                 # the tiny Qwen2.5-VL bundle in models/base
    mgpo prepare -S prepare.synthetic.train=64
    mgpo rl --params params.yaml --params my-overlay.yaml -S rl.max_steps=5
    mgpo infer IMAGE "QUESTION" --options red blue --model models/base
    mgpo science --params params.yaml --params params/science.yaml   # seeds x (MGPO, direct) sweep
"""

from __future__ import annotations

import argparse
import importlib
import sys

STAGES = {
    # subcommand: (flow module, one-line help, the issue that builds it)
    "build-model": ("flows.build_model", "build the embedded tiny Qwen2.5-VL (or check an external model)"),
    "prepare": ("flows.prepare", "build the synthetic benchmark and convert real benchmarks to parquet"),
    "sft": ("flows.sft", "SFT warmup on two-turn grounding trajectories"),
    "rl": ("flows.rl", "MGPO (or single-turn GRPO) reinforcement learning"),
    "evaluate": ("flows.evaluate", "evaluate models x benchmarks x modes; metrics, report, plots"),
    "promote": ("flows.promote", "move the registry's champion alias when the candidate is better"),
    "pipeline": ("flows.pipeline", "run every stage through DVC under one Prefect flow and MLflow run"),
    "science": (
        "flows.science",
        "sweep: SFT -> MGPO RL vs SFT -> single-turn GRPO over seeds, with a summary (not through DVC)",
    ),
    "infer": ("flows.infer", "run one MGPO episode on one image and show each turn"),
}


DESCRIPTIONS = {
    "science": (
        "An experiment sweep outside DVC. For each seed of science.seeds: SFT once (sft.seed and "
        "rl.seed set to the seed), then RL once per arm of science.modes (rl.mode: mgpo, or direct "
        "= single-turn GRPO) from that SFT model at the same budget, then each RL model evaluated on "
        "every evaluate.benchmarks entry in science.eval_modes. Writes science.out_dir/seed_<s>/... and "
        "summary.json + summary.md: per seed and arm the accuracy with its 95% Wilson interval, "
        "pooled over seeds (all questions pooled, plus the across-seed mean and std), and MGPO minus "
        "direct with whether the pooled intervals overlap. One MLflow parent run `science` holds every "
        "run as a child. A rerun skips runs whose outputs exist with the same params fingerprint. "
        "The preset: mgpo science --params params.yaml --params params/science.yaml"
    ),
}


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--params",
        action="append",
        default=None,
        metavar="PATH",
        help="params file (default: params.yaml); repeatable: the first is the base, each later one a "
        "partial overlay deep-merged on it (mappings merge, lists and scalars replace), then -S",
    )
    parser.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one param, e.g. -S rl.max_steps=5 (repeatable; validated like the file)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mgpo",
        description="MGPO pipeline: multi-turn grounding-based RL for high-resolution visual reasoning. "
        "Each subcommand is one stage (a Prefect flow with an MLflow run); `dvc repro` runs them in order.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=DESCRIPTIONS.get(name, help_text))
        _common(p)
        if name == "science":
            p.add_argument("--fresh", action="store_true", help="rerun every run, even those already done")
        if name in {"sft", "rl"}:
            p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
        if name == "promote":
            p.add_argument(
                "--rollback", action="store_true", help="move champion back to its previous holder"
            )
        if name == "evaluate":
            p.add_argument("--model", action="append", default=[], help="evaluate only these model names")
        if name == "infer":
            p.add_argument("image", help="image file")
            p.add_argument("question", help="question text")
            p.add_argument("--options", nargs="+", default=[], help="answer options, in order (A, B, ...)")
            p.add_argument(
                "--model", default=None, help="model folder, hub id or models:/ URI (default: base)"
            )
            p.add_argument("--mode", default="mgpo", choices=["mgpo", "direct"], help="protocol")
            p.add_argument("--out", default="infer.png", help="PNG with the box and the crop")
            p.add_argument(
                "--json", dest="as_json", action="store_true", help="print one JSON object instead of text"
            )
    return parser


def services_needed(args: argparse.Namespace) -> tuple[bool, bool]:
    """(MLflow, Prefect): which servers the command talks to."""
    if args.command == "infer":  # no flow, no run; MLflow only to resolve a models:/ URI
        return bool(args.model and args.model.startswith("models:/")), False
    return True, True


def preflight(args: argparse.Namespace) -> bool:
    """Valid params and answering servers, before any flow module is imported (a few seconds).

    Returns True when the command has nothing left to do: `pipeline` with every DVC stage up to
    date (flows/uptodate.py has printed so), decided before Prefect is even imported.
    """
    from components.config import load_params
    from flows.preflight import check_services

    mlflow, prefect = services_needed(args)
    params = load_params(args.params, args.overrides)
    if args.command == "pipeline":
        from flows.uptodate import up_to_date

        check_services(params, prefect_settings=False)  # an environment PREFECT_API_URL only
        lines = up_to_date(args.params, args.overrides, params)
        if lines is not None:
            print("\n".join(lines))
            return True
    if mlflow or prefect:
        check_services(params, mlflow=mlflow, prefect=prefect)
    return False


def params_argument(files: list[str] | None) -> str | list[str]:
    """What the flows get as `params_path`: the one file as a string (as before overlays), or
    the list [base, overlay, ...]."""
    files = list(files or ["params.yaml"])
    return files[0] if len(files) == 1 else files


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.params = params_argument(args.params)
    module_name, _ = STAGES[args.command]
    from components.config import ParamsError
    from components.tracking import TrackingUnavailable
    from flows.preflight import PrefectUnavailable

    try:
        if preflight(args):
            return 0
    except (ParamsError, TrackingUnavailable, PrefectUnavailable) as exc:
        print(f"mgpo {args.command}: {exc}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"mgpo {args.command}: this stage is not built yet ({module_name} is missing)", file=sys.stderr)
        return 2

    options = {k: v for k, v in vars(args).items() if k not in {"command", "params", "overrides"}}
    if args.command == "pipeline":
        options["status_checked"] = True  # preflight asked DVC: something is stale
    try:
        return int(module.run(args.params, args.overrides, **options) or 0)
    except (ParamsError, TrackingUnavailable, PrefectUnavailable) as exc:
        print(f"mgpo {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
