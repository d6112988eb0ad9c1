"""params/paper.yaml and params/one_node.yaml: validate, are drop-ins for params.yaml under DVC,
and hold the paper's numbers (one_node: on 1 node of 8 GPUs, the batch cut for host memory)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from components.config import load_params

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "params" / "paper.yaml"
ONE_NODE = ROOT / "params" / "one_node.yaml"
PRESETS = pytest.mark.parametrize("preset", [PAPER, ONE_NODE], ids=["paper", "one_node"])
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


@PRESETS
def test_same_keys_as_params_yaml(preset):
    """`cp params/<preset>.yaml params.yaml` must keep every key dvc.yaml templates or depends on."""
    embedded = keys(yaml.safe_load((ROOT / "params.yaml").read_text()))
    have = keys(yaml.safe_load(preset.read_text()))
    assert not embedded - have, f"add to {preset.name}: {sorted(embedded - have)}"
    assert not have - embedded, f"{preset.name} has keys params.yaml lacks: {sorted(have - embedded)}"


@PRESETS
def test_dvc_yaml_templates_resolve(preset):
    data = yaml.safe_load(preset.read_text())
    text = "\n".join(line.split("#")[0] for line in (ROOT / "dvc.yaml").read_text().splitlines())
    for ref in re.findall(r"\$\{([^}]+)\}", text):
        node = data
        for part in ref.strip().split("."):
            assert isinstance(node, dict) and part in node, f"dvc.yaml's ${{{ref}}} missing in {preset.name}"
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


def test_one_node_preset_is_the_paper_on_eight_gpus(paper):
    """Only the cluster shape, the batch (cut for host memory) and the step counts differ; verl
    accepts the batch arithmetic on 8 GPUs, and the step's pixel_values stay under the warning."""
    from components.rl import verl_config as vc

    one = load_params(ONE_NODE)
    assert (one.rl.verl.nnodes, one.rl.verl.n_gpus_per_node, one.sft.verl.nnodes) == (1, 8, 1)
    vc.check_rl(one)
    assert vc.report_host_memory(one) is None and vc.report_host_memory(paper) is not None
    assert vc.pixel_bytes_per_step(one) / 1e9 == pytest.approx(49.3, abs=0.1)
    assert one.rl.prompts_per_step * one.rl.max_steps == paper.rl.prompts_per_step * paper.rl.max_steps
    assert (
        one.rl.prompts_per_step // one.rl.prompts_per_mini_batch
        == 4
        == (paper.rl.prompts_per_step // paper.rl.prompts_per_mini_batch)
    )
    differ = {
        "rl.max_steps",
        "rl.time_budget_s",
        "rl.prompts_per_step",
        "rl.prompts_per_mini_batch",
        "rl.checkpoint_every",
        "rl.val_every",
        "rl.verl.nnodes",
        "rl.verl.job_timeout_s",
    }
    a, b = paper.model_dump(mode="json"), one.model_dump(mode="json")

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    fa, fb = flat(a), flat(b)
    assert {k for k in fa if fa[k] != fb[k]} == differ
