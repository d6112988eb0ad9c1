"""The rl params -> verl main_ppo Hydra overrides: they compose into verl's own config and mean
what they say.

Composition and verl's `validate_config` run here on the CPU; only a GPU run shows that the
composed job trains (FSDP workers, vLLM with two images per prompt, checkpoint saving).
"""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf
from verl_fixtures import bundle, params

from components.rl import verl_config as vc


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return bundle(tmp_path_factory.getbasetemp() / "verl_tiny_bundle")


def inputs(tmp_path, model) -> vc.VerlInputs:
    return vc.VerlInputs(
        model_path=str(model),
        train_files=str(tmp_path / "train.parquet"),
        val_files=str(tmp_path / "val.parquet"),
        agent_loop_config="agent_loop.yaml",
        checkpoint_dir=str(tmp_path / "ck"),
    )


@pytest.fixture(scope="module")
def composed(tiny, tmp_path_factory):
    """Distinct numbers for every mapped key, so a crossed wire shows."""
    p = params(
        "rl.prompts_per_step=12",
        "rl.rollouts_per_prompt=6",
        "rl.prompts_per_mini_batch=4",
        "rl.ppo_epochs=3",
        "rl.lr=3e-6",
        "rl.clip_ratio=0.25",
        "rl.kl_coef=0.02",
        "rl.entropy_coef=0.005",
        "rl.grad_clip=0.7",
        "rl.weight_decay=0.03",
        "rl.norm_adv_by_std=false",
        "rl.temperature=0.9",
        "rl.max_steps=17",
        "rl.checkpoint_every=5",
        "rl.val_every=7",
        "rl.val_samples=9",
        "rl.seed=11",
        "rl.verl.n_gpus_per_node=2",
        "rl.verl.tensor_parallel_size=2",
        "rl.verl.gpu_memory_utilization=0.45",
        "rl.verl.prompt_length=900",
        "rl.verl.response_length=1100",
        "episode.max_turns=3",
        "episode.format_reward=0.1",
        "rl.verl.extra_overrides=[trainer.val_before_train=false]",
    )
    tmp = tmp_path_factory.mktemp("compose")
    overrides = vc.main_ppo_overrides(p, inputs(tmp, tiny))
    cfg = vc.compose_main_ppo(vc.render(overrides, p.rl.verl.extra_overrides))
    return p, overrides, cfg


def test_overrides_compose_into_verls_config(composed):
    p, overrides, cfg = composed
    get = lambda key: OmegaConf.select(cfg, key)  # noqa: E731
    expected = {
        "data.train_batch_size": 12,
        "actor_rollout_ref.rollout.n": 6,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 4,
        "actor_rollout_ref.actor.ppo_epochs": 3,
        "actor_rollout_ref.actor.optim.lr": 3e-6,
        "actor_rollout_ref.actor.clip_ratio_low": 0.25,
        "actor_rollout_ref.actor.clip_ratio_high": 0.25,
        "actor_rollout_ref.actor.use_kl_loss": True,
        "actor_rollout_ref.actor.kl_loss_coef": 0.02,
        "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
        "actor_rollout_ref.actor.entropy_coeff": 0.005,
        "actor_rollout_ref.actor.optim.clip_grad": 0.7,
        "actor_rollout_ref.actor.optim.weight_decay": 0.03,
        "algorithm.adv_estimator": "grpo",
        "algorithm.norm_adv_by_std_in_grpo": False,
        "actor_rollout_ref.rollout.temperature": 0.9,
        "trainer.total_training_steps": 17,
        "trainer.save_freq": 5,
        "trainer.test_freq": 7,
        "data.val_max_samples": 9,
        "data.seed": 11,
        "trainer.nnodes": 1,
        "trainer.n_gpus_per_node": 2,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": 2,
        "actor_rollout_ref.rollout.gpu_memory_utilization": 0.45,
        # verl's interpolations carry the lengths to the rollout
        "actor_rollout_ref.rollout.prompt_length": 900,
        "actor_rollout_ref.rollout.response_length": 1100,
        "actor_rollout_ref.rollout.limit_images": 3,
        "actor_rollout_ref.rollout.agent.default_agent_loop": "mgpo_agent",
        "reward.custom_reward_function.path": "pkg://components.rl.verl_reward",
        "reward.custom_reward_function.reward_kwargs.format_reward": 0.1,
        "data.mm_processor_kwargs.min_pixels": min(p.model.min_pixels, p.episode.crop_min_pixels),
        "data.mm_processor_kwargs.max_pixels": max(p.model.max_pixels, p.episode.crop_max_pixels),
        "trainer.val_before_train": False,  # extra_overrides come last and win
    }
    got = {k: get(k) for k in expected}
    assert got == expected
    assert all(o.why for o in overrides)
    assert len(overrides) < 60  # few and named


def test_composed_config_builds_verls_typed_configs(composed, tiny):
    """verl's worker-side dataclasses accept the result, and the model config loads the real
    tiny tokenizer and processor from the model path (what every rollout worker does)."""
    from verl.utils.config import omega_conf_to_dataclass

    _, _, cfg = composed
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    assert rollout.limit_images == 3 and rollout.n == 6
    assert omega_conf_to_dataclass(cfg.algorithm).adv_estimator == "grpo"
    model = omega_conf_to_dataclass(cfg.actor_rollout_ref.model)
    assert model.hf_config.model_type == "qwen2_5_vl"
    assert type(model.processor).__name__ == "Qwen2_5_VLProcessor"


def test_reward_function_loads_through_verls_loader(composed):
    from verl.trainer.ppo.reward import get_custom_reward_fn

    _, _, cfg = composed
    fn = get_custom_reward_fn(cfg)
    out = fn(
        data_source="synthetic",
        solution_str="A first \\boxed{A}\nuser\n... within \\boxed{}.\nassistant\nso \\boxed{B}",
        ground_truth="B",
        extra_info={"options": ["x", "y"]},
    )
    assert out["score"] == pytest.approx(1.1)  # accuracy 1 + format_reward 0.1 from params


def test_agent_loop_yaml_registers_our_loop(tmp_path):
    import hydra

    p = params("rl.mode=direct")
    path = vc.write_agent_loop_config(p, tmp_path / "agent_loop.yaml")
    entries = OmegaConf.load(path)
    assert [e.name for e in entries] == ["mgpo_agent"]
    assert hydra.utils.get_class(entries[0]._target_).__name__ == "MGPOAgentLoop"
    assert entries[0].mode == "direct"
    assert entries[0].episode.max_turns == p.episode.max_turns
    assert vc.images_per_episode(p) == 1


def test_an_override_verl_does_not_know_fails_here():
    with pytest.raises(vc.VerlConfigError, match="no_such_key"):
        vc.compose(vc.MAIN_PPO_CONFIG, ["trainer.no_such_key=1"])


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["rl.verl.n_gpus_per_node=3"], "rl.verl.nnodes x rl.verl.n_gpus_per_node"),
        (["rl.verl.n_gpus_per_node=8", "rl.prompts_per_mini_batch=1"], "rl.prompts_per_mini_batch"),
        (["rl.verl.max_tokens_per_gpu=1500"], "rl.verl.max_tokens_per_gpu"),
        (["rl.verl.n_gpus_per_node=4", "rl.verl.tensor_parallel_size=3"], "rl.verl.tensor_parallel_size"),
        (["rl.verl.response_length=64", "episode.max_new_tokens=64"], "episode.max_new_tokens"),
    ],
)
def test_impossible_batch_shapes_name_the_params(tmp_path, overrides, named):
    with pytest.raises(vc.VerlConfigError) as err:
        vc.main_ppo_overrides(params(*overrides), inputs(tmp_path, "m"))
    assert named in str(err.value)


def test_defaults_fit_the_papers_cluster_shape():
    # the embedded numbers (4 prompts x 4 rollouts = 16 episodes) on 2 nodes of 8 GPUs
    vc.check_rl(params("rl.verl.nnodes=2", "rl.verl.n_gpus_per_node=8"))
    vc.check_rl(
        params(
            "rl.prompts_per_step=512",
            "rl.rollouts_per_prompt=8",
            "rl.prompts_per_mini_batch=128",
            "rl.verl.nnodes=4",
            "rl.verl.n_gpus_per_node=8",
            "rl.verl.prompt_length=8192",
            "rl.verl.response_length=8192",
            "rl.verl.max_tokens_per_gpu=32768",
        )
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "null"),
        (True, "true"),
        (3, "3"),
        (1e-6, "1e-06"),
        ("pkg://components.rl.verl_reward", "pkg://components.rl.verl_reward"),
        ("/a b/c", "'/a b/c'"),
        ("it's", "'it\\'s'"),
        ("null", "'null'"),
        (["console", "mlflow"], "[console,mlflow]"),
    ],
)
def test_hydra_values(value, text):
    assert vc.hydra_value(value) == text


def compose_for(tmp_path, tiny, *overrides):
    p = params(*overrides)
    return p, vc.compose_main_ppo(
        vc.render(vc.main_ppo_overrides(p, inputs(tmp_path, tiny)), p.rl.verl.extra_overrides)
    )


@pytest.mark.parametrize("on", [True, False])
def test_filter_groups_maps_to_verls_group_filtering(tmp_path, tiny, on):
    """rl.filter_groups (leave equal-reward groups out) is verl's DAPO group filtering on the
    canonical reward (`algorithm.filter_groups`, metric "reward": groups whose rewards have no
    spread are evicted), as the V1 trainer reads it (`_resolve_filter_groups_metric`)."""
    from verl.utils.config import omega_conf_to_dataclass

    _, cfg = compose_for(tmp_path, tiny, f"rl.filter_groups={str(on).lower()}")
    fg = omega_conf_to_dataclass(cfg.algorithm).filter_groups
    assert fg.enable is on and fg.metric == "reward"


def test_keep_checkpoints_bounds_verls_actor_checkpoints(tmp_path, tiny):
    _, cfg = compose_for(tmp_path, tiny, "rl.verl.keep_checkpoints=2")
    assert cfg.trainer.max_actor_ckpt_to_keep == 2
    _, cfg = compose_for(tmp_path, tiny, "rl.verl.keep_checkpoints=0")
    assert cfg.trainer.max_actor_ckpt_to_keep is None  # verl: keep all


@pytest.mark.parametrize(("impl", "unpad"), [("flash_attention_2", True), ("sdpa", False)])
def test_attention_implementation_reaches_verls_model_config(tmp_path, tiny, impl, unpad):
    """verl's HFModelConfig loads the model config with `override_config.attn_implementation`
    (default flash_attention_2); its remove-padding path calls flash-attn's varlen kernels, so the
    sdpa fallback (a node without flash-attn) turns it off."""
    from verl.utils.config import omega_conf_to_dataclass

    _, cfg = compose_for(tmp_path, tiny, f"rl.verl.attn_implementation={impl}")
    model = omega_conf_to_dataclass(cfg.actor_rollout_ref.model)
    assert model.hf_config._attn_implementation == impl
    assert cfg.actor_rollout_ref.model.use_remove_padding is unpad


def test_host_memory_estimate_counts_pixel_values_as_the_processor_emits_them(caplog):
    """Per trajectory: the first view plus one crop per later turn at their pixel budgets; the
    Qwen2-VL image processor emits 3 channels x temporal_patch_size 2 fp32 values per pixel."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    pixels = 1120 * 896
    proc = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=pixels)
    pv = proc(images=[Image.new("RGB", (1120, 896))], return_tensors="pt")["pixel_values"]
    assert vc.PIXEL_VALUE_BYTES * pixels == pv.numel() * pv.element_size()

    paper = params(
        "rl.prompts_per_step=512",
        "rl.rollouts_per_prompt=8",
        "rl.prompts_per_mini_batch=128",
        "model.max_pixels=1003520",
        "episode.crop_max_pixels=1003520",
        "rl.verl.host_memory_warn_gb=64",
    )
    est = vc.pixel_bytes_per_step(paper)
    assert est == 512 * 8 * (1003520 + 1003520) * vc.PIXEL_VALUE_BYTES  # ~197 GB
    with caplog.at_level("INFO"):
        message = vc.report_host_memory(paper)
    assert message is not None and "197.3 GB" in message
    for key in (
        "rl.prompts_per_step",
        "rl.rollouts_per_prompt",
        "model.max_pixels",
        "episode.crop_max_pixels",
    ):
        assert key in message
    assert any(r.levelname == "WARNING" and "197.3 GB" in r.getMessage() for r in caplog.records)
    small = params("rl.verl.host_memory_warn_gb=64")
    assert vc.report_host_memory(small) is None
