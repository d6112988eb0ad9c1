"""params/paper.yaml: validates, is a drop-in for params.yaml under DVC, and holds the paper's numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from components.config import load_params

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "params" / "paper.yaml"
# User-named mappings and lists: their entries differ by design.
FREE = {"evaluate.models", "evaluate.benchmarks", "prepare.benchmarks"}


def keys(node, prefix: str = "") -> set[str]:
    out = set()
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}{k}"
            out.add(path)
            if path not in FREE:
                out |= keys(v, path + ".")
    return out


@pytest.fixture(scope="module")
def paper():
    return load_params(PAPER)  # raises ParamsError naming the key when invalid


def test_same_keys_as_params_yaml():
    """`cp params/paper.yaml params.yaml` must keep every key dvc.yaml templates or depends on."""
    embedded = keys(yaml.safe_load((ROOT / "params.yaml").read_text()))
    preset = keys(yaml.safe_load(PAPER.read_text()))
    assert not embedded - preset, f"add to params/paper.yaml: {sorted(embedded - preset)}"
    assert not preset - embedded, f"params/paper.yaml has keys params.yaml lacks: {sorted(preset - embedded)}"


def test_dvc_yaml_templates_resolve():
    data = yaml.safe_load(PAPER.read_text())
    text = "\n".join(line.split("#")[0] for line in (ROOT / "dvc.yaml").read_text().splitlines())
    for ref in re.findall(r"\$\{([^}]+)\}", text):
        node = data
        for part in ref.strip().split("."):
            assert isinstance(node, dict) and part in node, f"dvc.yaml's ${{{ref}}} missing in paper.yaml"
            node = node[part]


def test_paper_hyperparameters(paper):
    rl, v, ep = paper.rl, paper.rl.verl, paper.episode
    assert paper.model.source == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert (rl.mode, rl.backend) == ("mgpo", "verl")
    assert (rl.rollouts_per_prompt, rl.prompts_per_step, rl.prompts_per_mini_batch, rl.ppo_epochs) == (
        8,
        512,
        128,
        1,
    )
    assert rl.lr == 1e-6 and rl.kl_coef == 0.01 and rl.clip_ratio == 0.2
    assert rl.entropy_coef == 0.001 and rl.grad_clip == 1.0 and rl.temperature == 1.0
    assert (v.prompt_length, v.response_length, v.nnodes, v.n_gpus_per_node) == (8192, 8192, 4, 8)
    assert paper.model.max_pixels == 1003520
    assert (ep.crop_min_pixels, ep.crop_max_pixels) == (200704, 1003520)
    assert (ep.max_turns, ep.template, ep.invalid_box) == (2, "paper", "reject")
    assert ep.format_reward == 0 and ep.grounding_reward == 0
    kinds = {b.name: b.kind for b in paper.prepare.benchmarks}
    assert kinds["vstar"] == "vstar" and kinds["hrbench_4k"] == kinds["hrbench_8k"] == "hrbench"
    assert rl.train_data.startswith(f"{paper.paths.processed_dir}/mme_realworld_train/")
    assert paper.promote.gate_benchmark == "vstar" and paper.evaluate.engine == "vllm"
    for name, path in paper.evaluate.benchmarks.items():
        assert path == f"{paper.paths.processed_dir}/{name}/test.parquet" and name in kinds
