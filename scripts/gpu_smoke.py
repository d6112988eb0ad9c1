"""One-GPU smoke run of the GPU path: vLLM evaluation, verl SFT, verl MGPO RL, merge, evaluate.

NOT YET RUN ON A GPU. Everything up to the commands themselves is checked on the CPU by
`--dry-run` (tests/scripts/test_gpu_smoke.py runs it in CI); whether vLLM, flash-attn and verl's
FSDP workers actually run the tiny model on a GPU is what this script exists to find out. Run by
hand on a CPU machine with these params: build_model and prepare succeed, and sft builds its 16
trajectories and composes verl's config, then stops where it should, in torchrun's NCCL setup
("no GPUs found").

On one CUDA GPU, in a work folder (default `smoke/`, ignored by git), it runs these steps in
order, prints one summary line per step with its time, and exits non-zero on the first failure:
  install      its own venv (`<work>/venv`) with the gpu set, in the order docs/scale-out.md gives
               (torch first, flash-attn==2.8.3 with --no-build-isolation or `--flash-attn-wheel`,
               then `-e '.[gpu]'`); `--venv PATH` uses an existing one and skips this step
  build_model  the embedded tiny Qwen2.5-VL (`mgpo build-model`)
  prepare      a small synthetic benchmark (16 train, 8 val, 8 test questions)
  eval_base    8 synthetic test questions, mgpo mode (two images per prompt), vLLM engine
  ray          a one-GPU local Ray head (verl's RL job is a Ray job on RAY_ADDRESS)
  sft          verl SFT, 2 steps, torchrun on 1 GPU (`sft.backend: verl`), merged into an HF folder
  rl           verl MGPO RL, 2 steps through our agent loop on 1 GPU, tiny batch (2 prompts x 2
               rollouts), verl's default V1 trainer (`trainer.use_v1: true`), rollouts on vLLM
  merge        `python -m verl.model_merger merge` of the last RL checkpoint into an HF folder
  eval_rl      the merged model on the same 8 questions with vLLM
The ray head is stopped at the end, whatever happened. Each step's output goes to
`<work>/logs/<step>.log`; its last lines are printed when it fails. Time on an H200, install
excluded, is meant to stay under 10 minutes (a flash-attn source build alone takes 20-60; pass a
wheel or `--venv`).

    python scripts/gpu_smoke.py                      # everything, on a GPU machine
    python scripts/gpu_smoke.py --venv .venv         # reuse an installed gpu venv
    python scripts/gpu_smoke.py --attn sdpa          # a node without flash-attn
    python scripts/gpu_smoke.py --dry-run            # CPU: compose every command and verl config
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("install", "build_model", "prepare", "eval_base", "ray", "sft", "rl", "merge", "eval_rl")
RL_STEPS = 2


@dataclass
class Step:
    name: str
    commands: list[list[str]]
    env: dict[str, str] = field(default_factory=dict)


def smoke_overrides(work: Path, attn: str) -> list[str]:
    """params.yaml overrides of the smoke run: every path under `work`, tiny sizes, 1 GPU."""
    w = work.resolve()
    data = w / "data" / "processed"
    test = data / "synthetic" / "test.parquet"
    return [
        f"paths.base_model={w}/models/base",
        f"paths.sft_model={w}/models/sft",
        f"paths.rl_model={w}/models/rl",
        f"paths.raw_dir={w}/data/raw",
        f"paths.processed_dir={data}",
        f"paths.sft_data={w}/data/sft",
        f"paths.checkpoints={w}/checkpoints",
        f"paths.eval_dir={w}/results/eval_base",
        f"paths.rl_dir={w}/results/rl",
        f"paths.sft_dir={w}/results/sft",
        f"paths.model_info={w}/results/model.json",
        f"paths.promotion={w}/results/promotion.json",
        f"tracking.uri=sqlite:///{w}/mlflow.db",
        "tracking.registered_model=mgpo-gpu-smoke",
        "prepare.synthetic.train=16",
        "prepare.synthetic.val=8",
        "prepare.synthetic.test=8",
        "prepare.synthetic.scale_sweep.per_size=1",
        "prepare.synthetic.split_4k.count=1",
        f"sft.train_data={data}/synthetic/train.parquet",
        "sft.backend=verl",
        "sft.max_steps=2",
        "sft.samples_per_micro_batch=2",
        "sft.checkpoint_every=2",
        "sft.warmup_steps=0",
        "sft.verl.nnodes=1",
        "sft.verl.nproc_per_node=1",
        "sft.verl.run_on=local",
        f"sft.verl.attn_implementation={attn}",
        "rl.backend=verl",
        "rl.mode=mgpo",
        f"rl.train_data={data}/synthetic/train.parquet",
        f"rl.val_data={data}/synthetic/val.parquet",
        f"rl.max_steps={RL_STEPS}",
        "rl.prompts_per_step=2",
        "rl.rollouts_per_prompt=2",
        "rl.prompts_per_mini_batch=2",
        f"rl.checkpoint_every={RL_STEPS}",
        f"rl.val_every={RL_STEPS}",
        "rl.val_samples=4",
        "rl.filter_groups=false",  # a random tiny model scores 0 everywhere: DAPO would refill forever
        "rl.verl.nnodes=1",
        "rl.verl.n_gpus_per_node=1",
        "rl.verl.prompt_length=1024",
        "rl.verl.response_length=512",
        "rl.verl.max_tokens_per_gpu=4096",
        "rl.verl.gpu_memory_utilization=0.3",
        "rl.verl.job_timeout_s=900",
        "rl.verl.keep_checkpoints=1",
        f"rl.verl.attn_implementation={attn}",
        "rl.verl.extra_overrides=[trainer.val_before_train=false]",
        f"evaluate.models={{base: {w}/models/base, sft: {w}/models/sft, rl: {w}/models/rl}}",
        f"evaluate.benchmarks={{synthetic_test: {test}}}",
        "evaluate.modes=[mgpo]",
        "evaluate.max_samples=8",
        "evaluate.engine=vllm",
        "evaluate.device=cuda",
        "evaluate.workers=0",
        "evaluate.batch_size=8",
        "evaluate.report_cards=8",
        "promote.gate_benchmark=synthetic_test",
    ]


def write_params(work: Path, attn: str):
    """Validate the smoke params (components/config) and write them as one params file."""
    import yaml

    sys.path.insert(0, str(ROOT))
    from components.config import load_params

    params = load_params(ROOT / "params.yaml", smoke_overrides(work, attn))
    path = work / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    load_params(path)  # the written file reads back as the same params
    load_params(path, eval_rl_overrides(work))  # and the last step's overrides apply to it
    return params, path


def eval_rl_overrides(work: Path) -> list[str]:
    """The last evaluation: the merged RL checkpoint alone, into its own results folder."""
    w = work.resolve()
    return [
        f"evaluate.models={{rl: {w}/models/rl_merged}}",
        "promote.candidate=rl",
        'promote.parent=""',  # the SFT parent is not evaluated in this pass
        f"paths.eval_dir={w}/results/eval_rl",
    ]


def compose_verl(params, work: Path) -> list[str]:
    """Compose the SFT and RL verl configs on the CPU exactly as the stages map them; return
    summary lines (raises VerlConfigError when verl rejects them)."""
    from components.rl import verl_config as vc
    from components.sft import verl_backend as vb

    w = work.resolve()
    ppo_inputs = vc.VerlInputs(
        params.paths.sft_model,
        params.rl.train_data,
        params.rl.val_data,
        str(w / "results" / "rl" / "agent_loop.yaml"),
        str(w / "checkpoints" / "rl_verl"),
    )
    rl_args = vc.render(vc.main_ppo_overrides(params, ppo_inputs), params.rl.verl.extra_overrides)
    cfg = vc.compose_main_ppo(rl_args)
    if not cfg.trainer.use_v1:
        raise RuntimeError("the smoke run must exercise verl's default V1 trainer (trainer.use_v1)")
    sft_args = vc.render(
        vb.sft_overrides(
            params,
            model_path=params.paths.base_model,
            train_files=str(Path(params.paths.sft_data) / "train.parquet"),
            checkpoint_dir=str(w / "checkpoints" / "sft_verl"),
            steps=params.sft.max_steps,
        ),
        params.sft.verl.extra_overrides,
    )
    sft_cfg = vc.compose(vc.SFT_CONFIG, sft_args)
    vc.write_agent_loop_config(params, w / "dry_run" / "agent_loop.yaml")
    (w / "dry_run").mkdir(parents=True, exist_ok=True)
    (w / "dry_run" / "main_ppo_overrides.txt").write_text("\n".join(rl_args) + "\n")
    (w / "dry_run" / "sft_overrides.txt").write_text("\n".join(sft_args) + "\n")
    return [
        f"main_ppo: use_v1={cfg.trainer.use_v1} trainer_mode={cfg.trainer.v1.trainer_mode} "
        f"gpus={cfg.trainer.nnodes}x{cfg.trainer.n_gpus_per_node} steps={cfg.trainer.total_training_steps} "
        f"batch={cfg.data.train_batch_size}x{cfg.actor_rollout_ref.rollout.n} "
        f"attn={cfg.actor_rollout_ref.model.override_config.attn_implementation} "
        f"rollout={cfg.actor_rollout_ref.rollout.name} ({len(rl_args)} overrides)",
        f"sft: steps={sft_cfg.trainer.total_training_steps} gpus={sft_cfg.trainer.n_gpus_per_node} "
        f"attn={sft_cfg.model.override_config.attn_implementation} ({len(sft_args)} overrides)",
    ]


def plan(work: Path, venv: Path, params_path: Path, attn: str, flash_attn_wheel: str | None) -> list[Step]:
    py = str(venv / "bin" / "python")
    mgpo = [py, "-m", "flows.cli"]
    pip = [py, "-m", "pip", "install", "-c", str(ROOT / "constraints" / "gpu.txt")]
    flash = [flash_attn_wheel] if flash_attn_wheel else ["--no-build-isolation", "flash-attn"]
    flash_attn = attn == "flash_attention_2"
    install = [
        [sys.executable, "-m", "venv", str(venv)],
        [*pip, "--upgrade", "pip"],
        [*pip, "torch", "torchvision", "packaging", "ninja", "psutil", "wheel"],
        # without flash-attn (--attn sdpa) the project and vLLM go in without the gpu extra
        *(
            [[*pip, *flash], [*pip, "-e", f"{ROOT}[gpu]"]]
            if flash_attn
            else [[*pip, "-e", str(ROOT), "vllm==0.24.0"]]
        ),
        [py, "-c", "import vllm, verl, torch; assert torch.cuda.is_available(), 'no CUDA GPU'"],
    ]
    stage = lambda name, *extra: [*mgpo, name, "--params", str(params_path), *extra]  # noqa: E731
    ckpt = work.resolve() / "checkpoints" / "rl_verl" / f"global_step_{RL_STEPS}" / "actor"
    merged = work.resolve() / "models" / "rl_merged"  # eval_rl_overrides evaluates this folder
    return [
        Step("install", install),
        Step("build_model", [stage("build-model")]),
        Step("prepare", [stage("prepare")]),
        Step("eval_base", [stage("evaluate", "--model", "base")]),
        Step(
            "ray",
            [
                [
                    str(venv / "bin" / "ray"),
                    "start",
                    "--head",
                    "--num-gpus=1",
                    "--dashboard-host=127.0.0.1",
                    "--include-dashboard=true",
                    "--disable-usage-stats",
                ]
            ],
        ),
        Step("sft", [stage("sft")]),
        Step("rl", [stage("rl")]),
        Step(
            "merge",
            [
                [
                    py,
                    "-m",
                    "verl.model_merger",
                    "merge",
                    "--backend",
                    "fsdp",
                    "--local_dir",
                    str(ckpt),
                    "--target_dir",
                    str(merged),
                ]
            ],
        ),
        Step(
            "eval_rl",
            [stage("evaluate", "--model", "rl", *[x for o in eval_rl_overrides(work) for x in ("-S", o)])],
        ),
    ]


def step_env(work: Path) -> dict[str, str]:
    w = work.resolve()
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RAY_ADDRESS": "http://127.0.0.1:8265",
        "RAY_AUTH_MODE": "disabled",
        "PREFECT_HOME": str(w / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{w}/mlflow.db",
        "VLLM_LOGGING_LEVEL": "WARNING",
    }


def run_step(step: Step, env: dict[str, str], logs: Path) -> tuple[bool, float]:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{step.name}.log"
    start = time.perf_counter()
    with log.open("w") as out:
        for cmd in step.commands:
            out.write(f"$ {shlex.join(cmd)}\n")
            out.flush()
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
            if rc != 0:
                out.write(f"[exit {rc}]\n")
                return False, time.perf_counter() - start
    return True, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(ROOT / "smoke"), help="work folder (default: smoke/)")
    ap.add_argument("--venv", default=None, help="use this installed gpu venv; skips the install step")
    ap.add_argument("--attn", default="flash_attention_2", choices=["flash_attention_2", "sdpa"])
    ap.add_argument("--flash-attn-wheel", default=None, help="a flash-attn 2.8.3 wheel file to install")
    ap.add_argument("--dry-run", action="store_true", help="compose commands and verl configs; run nothing")
    args = ap.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    venv = Path(args.venv) if args.venv else work.resolve() / "venv"
    t0 = time.perf_counter()
    params, params_path = write_params(work, args.attn)
    print(f"[smoke] params   ok  {time.perf_counter() - t0:6.1f}s  {params_path}", flush=True)
    steps = plan(work, venv, params_path, args.attn, args.flash_attn_wheel)
    if args.venv:
        steps = [s for s in steps if s.name != "install"]
    if args.dry_run:
        t0 = time.perf_counter()
        lines = compose_verl(params, work)
        print(
            f"[smoke] verl     ok  {time.perf_counter() - t0:6.1f}s  configs composed and validated",
            flush=True,
        )
        for line in lines:
            print(f"[smoke]   {line}")
        for s in steps:
            for cmd in s.commands:
                print(f"[smoke] {s.name:<11} would run: {shlex.join(cmd)}")
        print("[smoke] dry run: nothing was run")
        return 0

    env = step_env(work)
    total = time.perf_counter()
    try:
        for s in steps:
            ok, seconds = run_step(s, env, work / "logs")
            print(f"[smoke] {s.name:<11} {'ok' if ok else 'FAILED'} {seconds:7.1f}s", flush=True)
            if not ok:
                tail = (work / "logs" / f"{s.name}.log").read_text().splitlines()[-40:]
                print("\n".join(f"    {line}" for line in tail), file=sys.stderr)
                return 1
        print(f"[smoke] all steps ok in {time.perf_counter() - total:.1f}s", flush=True)
        return 0
    finally:
        ray = venv / "bin" / "ray"
        if ray.exists():
            subprocess.run([str(ray), "stop"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    sys.exit(main())
