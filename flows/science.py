"""`mgpo science`: SFT -> MGPO RL versus SFT -> single-turn GRPO, over seeds, with a summary.

For each seed of `science.seeds` it trains one SFT model (the `sft` stage's work with
`sft.seed` and `rl.seed` set to the seed), then from it one RL model per arm of `science.modes`
(the `rl` stage's work with `rl.mode` set to the arm; every other knob, so the budget, is the
same for both arms), and evaluates each RL model (the `evaluate` stage's work) on every
`evaluate.benchmarks` entry in `science.eval_modes`. Everything lands under `science.out_dir`:
`seed_<s>/sft/` (model, curves, trajectories) and `seed_<s>/<arm>/` (model, rl/, eval/), then
`summary.json` and `summary.md` (per seed and arm the accuracy with its 95% Wilson interval,
pooled over seeds, and MGPO minus direct with whether the pooled intervals overlap; the
statistics are components/evaluation/science.py).

It is an experiment sweep, not a pipeline stage: DVC does not run it. MLflow gets one parent run
(`science`) with every SFT, RL and evaluation run as its child, tagged `mgpo.science.seed` and
`mgpo.science.arm`, and the summary's figures and files on the parent. The sweep's models are not
registered (the registry's aliases stay the pipeline's). A rerun skips each SFT and arm whose
outputs exist with the same inputs fingerprint (params, data, base model), so an interrupted
sweep resumes at the run it was in; `--fresh` reruns everything. Checkpoints are deleted once a
run is done.

Run: `mgpo science --params params.yaml --params params/science.yaml` (the preset: 3 seeds x
2 arms at equal budget), or smaller: `-S science.seeds=[0] -S rl.max_steps=2`.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from prefect import flow

from flows._stage import ParamsPath, params_for


class MissingInput(FileNotFoundError):
    """An input of the sweep is absent; the message names the params keys."""


def check_inputs(params) -> None:
    from components.evaluation import science

    missing = science.missing_inputs(params)
    if missing:
        raise MissingInput(
            "; ".join(missing) + " (run `mgpo build-model` and `mgpo prepare`, or `dvc repro prepare`, first)"
        )


def budget(params) -> dict:
    """The knobs that set the sweep's cost, for the summary and the parent run."""
    sft, rl, ev = params.sft, params.rl, params.evaluate
    return {
        "sft.max_steps": sft.max_steps,
        "sft.samples_per_micro_batch": sft.samples_per_micro_batch,
        "rl.max_steps": rl.max_steps,
        "rl.prompts_per_step": rl.prompts_per_step,
        "rl.rollouts_per_prompt": rl.rollouts_per_prompt,
        "rl.val_samples": rl.val_samples,
        "rl.val_sampled_rollouts": rl.val_sampled_rollouts,
        "evaluate.max_samples": ev.max_samples,
    }


@flow(name="science")
def science_flow(
    params_path: ParamsPath = "params.yaml", overrides: list[str] | None = None, fresh: bool = False
) -> dict:
    import mlflow

    from components.evaluation import science
    from components.tracking import stage_run
    from flows.evaluate import run_evaluate
    from flows.rl import run_rl
    from flows.sft import run_sft

    params = params_for(params_path, overrides)
    check_inputs(params)
    cfg = params.science
    out_dir = Path(cfg.out_dir)
    sections = {
        "science": cfg,
        "sft": params.sft,
        "rl": params.rl,
        "evaluate": params.evaluate,
        "episode": params.episode,
    }
    tags = {"mgpo.science.seeds": ",".join(map(str, cfg.seeds)), "mgpo.science.arms": ",".join(cfg.modes)}
    start = time.perf_counter()
    runs: dict = {}
    metrics: dict = {}
    with stage_run("science", params.tracking, sections, tags=tags):
        for seed in cfg.seeds:
            seeded = science.seed_params(params, seed)
            sft_dir = Path(seeded.paths.sft_dir)
            sft_print = science.sft_fingerprint(seeded)
            model = Path(seeded.paths.sft_model) / "config.json"
            seed_tags = {"mgpo.science.seed": str(seed)}
            done = None if fresh else science.is_done(sft_dir, sft_print, [model])
            if done:
                print(f"science: seed {seed}: SFT done before (same fingerprint), skipped", flush=True)
            else:
                t0 = time.perf_counter()
                summary = run_sft(seeded, register=False, tags=seed_tags)
                shutil.rmtree(seeded.paths.checkpoints, ignore_errors=True)
                done = science.mark_done(
                    sft_dir, sft_print, sft=summary, seconds=round(time.perf_counter() - t0, 1)
                )
            runs[f"seed_{seed}/sft"] = {
                "seconds": done.get("seconds"),
                "final_loss": done["sft"].get("final_loss"),
            }
            for arm in cfg.modes:
                armed = science.arm_params(seeded, seed, arm)
                folder = science.arm_dir(params, seed, arm)
                arm_print = science.arm_fingerprint(armed, sft_print)
                eval_metrics = Path(armed.paths.eval_dir) / "metrics.json"
                arm_model = Path(armed.paths.rl_model) / "config.json"
                done = None if fresh else science.is_done(folder, arm_print, [arm_model, eval_metrics])
                if done:
                    print(
                        f"science: seed {seed} arm {arm}: done before (same fingerprint), skipped", flush=True
                    )
                else:
                    t0 = time.perf_counter()
                    arm_tags = {**seed_tags, "mgpo.science.arm": arm}
                    rl_summary = run_rl(armed, register=False, tags=arm_tags)
                    shutil.rmtree(armed.paths.checkpoints, ignore_errors=True)
                    evaluated = run_evaluate(armed, tags=arm_tags)
                    done = science.mark_done(
                        folder,
                        arm_print,
                        rl=rl_summary,
                        metrics=evaluated,
                        seconds=round(time.perf_counter() - t0, 1),
                    )
                metrics[(seed, arm)] = done["metrics"]
                runs[f"seed_{seed}/{arm}"] = {
                    "seconds": done.get("seconds"),
                    "rl_steps": done["rl"].get("steps"),
                }

        summary = science.summarize(
            metrics, cfg.seeds, cfg.modes, cfg.eval_modes, list(params.evaluate.benchmarks)
        )
        summary["budget"] = budget(params)
        summary["runs"] = runs
        summary["seconds"] = round(time.perf_counter() - start, 1)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        markdown = science.to_markdown(summary, summary["budget"])
        (out_dir / "summary.md").write_text(markdown)
        mlflow.log_metrics({**science.flat_figures(summary), "science_seconds": summary["seconds"]})
        for name in ("summary.json", "summary.md"):
            mlflow.log_artifact(str(out_dir / name), artifact_path="science")
    print(markdown)
    print(f"science: wrote {out_dir / 'summary.json'} and {out_dir / 'summary.md'} in {summary['seconds']} s")
    return summary


def run(params_path: ParamsPath, overrides: list[str], fresh: bool = False, **_: object) -> int:
    params = params_for(params_path, overrides)  # invalid params fail here, before Prefect starts
    try:
        check_inputs(params)
    except MissingInput as exc:
        print(f"mgpo science: {exc}", file=sys.stderr)
        return 2
    science_flow(params_path, overrides, fresh=fresh)
    return 0
