"""scripts/gpu_smoke.py --dry-run on the CPU: every command is composed, the smoke params validate,
and verl's SFT and main_ppo configs compose (main_ppo through verl's validate_config) with the V1
trainer on 1 GPU. Only a GPU run shows that the commands succeed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "scripts" / "gpu_smoke.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_smoke"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_dry_run_composes_every_step_and_the_verl_configs(tmp_path, capsys):
    smoke = load_script()
    assert smoke.main(["--dry-run", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for name in smoke.STEPS:
        assert f"[smoke] {name:<11} would run:" in out, name
    assert "use_v1=True" in out and "gpus=1x1" in out and "batch=2x2" in out
    assert "--no-build-isolation flash-attn" in out and "constraints/gpu.txt" in out
    assert "nothing was run" in out
    assert not (tmp_path / "venv").exists() and not (tmp_path / "logs").exists()

    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["evaluate"]["engine"] == "vllm" and params["evaluate"]["max_samples"] == 8
    assert params["evaluate"]["modes"] == ["mgpo"]  # two images per prompt
    assert params["rl"]["verl"]["n_gpus_per_node"] == 1 and params["rl"]["max_steps"] == 2
    assert params["sft"]["backend"] == "verl" and params["sft"]["max_steps"] == 2
    rl_args = (tmp_path / "dry_run" / "main_ppo_overrides.txt").read_text().splitlines()
    assert "actor_rollout_ref.rollout.agent.default_agent_loop=mgpo_agent" in rl_args


def test_sdpa_dry_run_installs_without_flash_attn(tmp_path, capsys):
    smoke = load_script()
    assert (
        smoke.main(["--dry-run", "--work", str(tmp_path), "--attn", "sdpa", "--venv", str(tmp_path / "v")])
        == 0
    )
    out = capsys.readouterr().out
    assert "attn=sdpa" in out and "flash-attn" not in out
    assert "install     would run" not in out  # --venv: an installed env is reused
