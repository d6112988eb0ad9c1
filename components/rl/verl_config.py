"""The `rl` params as verl 0.9.1 `main_ppo` Hydra overrides: the one place they are translated.

`main_ppo_overrides(params, inputs)` returns a short list of named `Override`s, each saying which
params key (and unit) it comes from; `check_rl(params)` rejects batch arithmetic verl would only
trip over on the cluster, naming the params keys; `compose_main_ppo(overrides)` composes them into
verl's own `ppo_trainer` config with Hydra and runs verl's `validate_config` on it, so an override
verl does not know fails here, on the CPU, before a job is submitted. `write_agent_loop_config`
writes the YAML that registers our agent loop (`actor_rollout_ref.rollout.agent.agent_loop_config_path`).

Mapping (verl's batch sizes count prompts; verl multiplies by `rollout.n` itself):
    rl.prompts_per_step        -> data.train_batch_size                      (prompts per step)
    rl.rollouts_per_prompt     -> actor_rollout_ref.rollout.n                (episodes per prompt)
    rl.prompts_per_mini_batch  -> actor_rollout_ref.actor.ppo_mini_batch_size (prompts per update)
    rl.ppo_epochs, lr, weight_decay, clip_ratio, kl_coef, entropy_coef, grad_clip, norm_adv_by_std,
    temperature, max_steps, checkpoint_every, val_every, val_samples, seed; rl.verl.* for the
    cluster shape; episode.* for the agent loop (its YAML) and the reward's optional terms.
    rl.filter_groups           -> algorithm.filter_groups.enable, metric "reward" (verl's DAPO
                                  group filtering: groups whose rewards do not spread are evicted
                                  and the batch is refilled; the local trainer only drops them)
    rl.verl.keep_checkpoints   -> trainer.max_actor_ckpt_to_keep (0: null, keep all)
    rl.verl.attn_implementation -> actor_rollout_ref.model.override_config.attn_implementation;
                                  use_remove_padding only with flash_attention_2 (verl's
                                  remove-padding path calls flash-attn's varlen kernels)

`pixel_bytes_per_step` / `report_host_memory` estimate the host memory a step's pixel_values
take (verl keeps every trajectory's `multi_modal_inputs` in the step's batch) and warn past
`rl.verl.host_memory_warn_gb`, naming the keys that lower it.

Departures: `rl.time_budget_s` has no verl counterpart (verl stops at `max_steps`; the Ray job is
bounded by `rl.verl.job_timeout_s`); batches are dynamic (`rl.verl.max_tokens_per_gpu` tokens per
GPU) rather than fixed micro-batches, since two-turn multimodal trajectories vary a lot in length.

Run: `python -c "from components.config import load_params; from components.rl.verl_config import *;
print(render(main_ppo_overrides(load_params(), VerlInputs('m', 't.parquet', 'v.parquet', 'a.yaml', 'ck'))))"`
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.config import Params
from components.data.parquet import AGENT_NAME

AGENT_LOOP_TARGET = "components.rl.verl_agent_loop.MGPOAgentLoop"
REWARD_PATH = "pkg://components.rl.verl_reward"
REWARD_NAME = "compute_score"
REWARD_KWARGS = "reward.custom_reward_function.reward_kwargs"
MAIN_PPO_CONFIG = "ppo_trainer"
SFT_CONFIG = "sft_trainer_engine"
# verl stops at trainer.total_training_steps; epochs only need to be enough to reach it.
EPOCHS_UPPER_BOUND = 10_000


class VerlConfigError(ValueError):
    """The params cannot become a valid verl config; the message names the params keys."""


@dataclass(frozen=True)
class Override:
    key: str
    value: Any
    why: str
    """The params key (with its unit) or the reason this value is fixed."""
    new: bool = False
    """Key absent from verl's YAML (rendered as `+key=value`)."""

    def render(self) -> str:
        return f"{'+' if self.new else ''}{self.key}={hydra_value(self.value)}"


@dataclass(frozen=True)
class VerlInputs:
    """Paths as the cluster sees them (absolute, on storage every node mounts)."""

    model_path: str
    train_files: str
    val_files: str
    agent_loop_config: str
    checkpoint_dir: str
    experiment_name: str = "mgpo-rl-verl"
    loggers: tuple[str, ...] = ("console",)


_PLAIN = re.compile(r"[A-Za-z0-9_./:@+\-]+")


def hydra_value(value: Any) -> str:
    """A Python value in Hydra's override grammar (strings quoted unless plainly safe)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    text = str(value)
    if _PLAIN.fullmatch(text) and text.lower() not in {"null", "true", "false"}:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def render(overrides: list[Override], extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Command-line form; user `extra_overrides` come last so they win."""
    return [o.render() for o in overrides] + list(extra)


def world_size(params: Params) -> int:
    return params.rl.verl.nnodes * params.rl.verl.n_gpus_per_node


def images_per_episode(params: Params) -> int:
    """The original view plus one crop per later turn (vLLM's per-prompt image limit)."""
    return 1 if params.rl.mode == "direct" else params.episode.max_turns


def processor_pixels(params: Params) -> tuple[int, int]:
    """(min_pixels, max_pixels) spanning the first view's and the crop's budgets."""
    m, e = params.model, params.episode
    return min(m.min_pixels, e.crop_min_pixels), max(m.max_pixels, e.crop_max_pixels)


PIXEL_VALUE_BYTES = 3 * 2 * 4
"""Host bytes of pixel_values per image pixel: the Qwen2-VL image processor emits, per 14x14
patch, 3 channels x temporal_patch_size 2 x 14 x 14 float32 values (an image is repeated over the
two temporal slots), i.e. 24 bytes a pixel; checked against the processor in the tests."""


def pixel_bytes_per_step(params: Params) -> int:
    """Upper bound of one step's pixel_values bytes: prompts x rollouts trajectories, each with
    the first view at `model.max_pixels` and one image per later turn at the larger of the crop
    budget and the first view (an invalid box shows the first view again)."""
    rl, m, e = params.rl, params.model, params.episode
    later = images_per_episode(params) - 1
    per_trajectory = m.max_pixels + later * max(e.crop_max_pixels, m.max_pixels)
    return rl.prompts_per_step * rl.rollouts_per_prompt * per_trajectory * PIXEL_VALUE_BYTES


def report_host_memory(params: Params) -> str | None:
    """Log the step's pixel_values estimate; return (and log as a warning) a message naming the
    keys to lower when it passes `rl.verl.host_memory_warn_gb`, else None."""
    import logging

    log = logging.getLogger(__name__)
    rl = params.rl
    gb = pixel_bytes_per_step(params) / 1e9
    trajectories = rl.prompts_per_step * rl.rollouts_per_prompt
    log.info("verl step: %d trajectories, pixel_values about %.1f GB of host memory", trajectories, gb)
    if gb <= rl.verl.host_memory_warn_gb:
        return None
    message = (
        f"a verl step holds about {gb:.1f} GB of pixel_values in host memory ({trajectories} trajectories = "
        f"rl.prompts_per_step {rl.prompts_per_step} x rl.rollouts_per_prompt {rl.rollouts_per_prompt}, "
        f"each up to model.max_pixels {params.model.max_pixels} + episode.crop_max_pixels "
        f"{params.episode.crop_max_pixels} per later turn (episode.max_turns {params.episode.max_turns}), "
        f"{PIXEL_VALUE_BYTES} bytes a pixel), above rl.verl.host_memory_warn_gb {rl.verl.host_memory_warn_gb:g}: "
        "lower rl.prompts_per_step, rl.rollouts_per_prompt, model.max_pixels or episode.crop_max_pixels, "
        "or raise the threshold on nodes with that much RAM"
    )
    log.warning(message)
    return message


def check_rl(params: Params) -> None:
    """Reject params verl would accept at compose time but fail on at run time."""
    rl, v = params.rl, params.rl.verl
    gpus = world_size(params)
    problems = []
    if (rl.prompts_per_step * rl.rollouts_per_prompt) % gpus:
        problems.append(
            f"rl.prompts_per_step x rl.rollouts_per_prompt = {rl.prompts_per_step * rl.rollouts_per_prompt} "
            f"episodes per step must be divisible by rl.verl.nnodes x rl.verl.n_gpus_per_node = {gpus} GPUs"
        )
    if (rl.prompts_per_mini_batch * rl.rollouts_per_prompt) % gpus:
        problems.append(
            f"rl.prompts_per_mini_batch x rl.rollouts_per_prompt = "
            f"{rl.prompts_per_mini_batch * rl.rollouts_per_prompt} episodes per update must be divisible "
            f"by {gpus} GPUs"
        )
    if v.n_gpus_per_node % v.tensor_parallel_size:
        problems.append(
            f"rl.verl.tensor_parallel_size {v.tensor_parallel_size} must divide rl.verl.n_gpus_per_node "
            f"{v.n_gpus_per_node}"
        )
    if v.max_tokens_per_gpu < v.prompt_length + v.response_length:
        problems.append(
            f"rl.verl.max_tokens_per_gpu {v.max_tokens_per_gpu} must hold one whole trajectory: "
            f"rl.verl.prompt_length + rl.verl.response_length = {v.prompt_length + v.response_length} tokens"
        )
    if v.response_length <= params.episode.max_new_tokens:
        problems.append(
            f"rl.verl.response_length {v.response_length} tokens leaves no room for a second turn after "
            f"episode.max_new_tokens {params.episode.max_new_tokens}"
        )
    if problems:
        raise VerlConfigError("rl params do not fit verl:\n  " + "\n  ".join(problems))


def main_ppo_overrides(params: Params, inputs: VerlInputs) -> list[Override]:
    """The `rl` params as Hydra overrides for `python -m verl.trainer.main_ppo` (see module doc)."""
    check_rl(params)
    rl, v = params.rl, params.rl.verl
    actor = "actor_rollout_ref.actor"
    rollout = "actor_rollout_ref.rollout"
    pixels = processor_pixels(params)
    return [
        # the algorithm: GRPO with the KL in the loss (paper), no critic
        Override("algorithm.adv_estimator", "grpo", "GRPO (MGPO is GRPO over a two-turn rollout)"),
        Override("algorithm.norm_adv_by_std_in_grpo", rl.norm_adv_by_std, "rl.norm_adv_by_std"),
        Override("algorithm.use_kl_in_reward", False, "KL is a loss term (rl.kl_coef), not a reward"),
        Override(
            "algorithm.filter_groups.enable", rl.filter_groups, "rl.filter_groups (DAPO group filtering)"
        ),
        Override("algorithm.filter_groups.metric", "reward", "rl.filter_groups: groups of equal reward"),
        Override(f"{actor}.use_kl_loss", rl.kl_coef > 0, "rl.kl_coef > 0"),
        Override(f"{actor}.kl_loss_coef", rl.kl_coef, "rl.kl_coef"),
        Override(f"{actor}.kl_loss_type", "low_var_kl", "low-variance KL (paper)"),
        Override(f"{actor}.entropy_coeff", rl.entropy_coef, "rl.entropy_coef"),
        Override(f"{actor}.clip_ratio", rl.clip_ratio, "rl.clip_ratio"),
        Override(f"{actor}.clip_ratio_low", rl.clip_ratio, "rl.clip_ratio"),
        Override(f"{actor}.clip_ratio_high", rl.clip_ratio, "rl.clip_ratio"),
        Override(f"{actor}.optim.lr", rl.lr, "rl.lr (constant schedule)"),
        Override(f"{actor}.optim.clip_grad", rl.grad_clip, "rl.grad_clip (max gradient norm)"),
        Override(f"{actor}.optim.weight_decay", rl.weight_decay, "rl.weight_decay (AdamW)"),
        Override(f"{actor}.ppo_epochs", rl.ppo_epochs, "rl.ppo_epochs (passes per step)"),
        # batch shape, in prompts (verl multiplies by rollout.n)
        Override("data.train_batch_size", rl.prompts_per_step, "rl.prompts_per_step (prompts)"),
        Override(f"{rollout}.n", rl.rollouts_per_prompt, "rl.rollouts_per_prompt (episodes per prompt)"),
        Override(
            f"{actor}.ppo_mini_batch_size", rl.prompts_per_mini_batch, "rl.prompts_per_mini_batch (prompts)"
        ),
        Override(f"{actor}.use_dynamic_bsz", True, "trajectory lengths vary: token-budget micro-batches"),
        Override(
            f"{actor}.ppo_max_token_len_per_gpu", v.max_tokens_per_gpu, "rl.verl.max_tokens_per_gpu (tokens)"
        ),
        Override("data.max_prompt_length", v.prompt_length, "rl.verl.prompt_length (tokens)"),
        Override(
            "data.max_response_length", v.response_length, "rl.verl.response_length (tokens, all turns)"
        ),
        Override("data.seed", rl.seed, "rl.seed"),
        Override("data.val_max_samples", rl.val_samples, "rl.val_samples (questions)"),
        # rollout: our agent loop on vLLM/SGLang
        Override(f"{rollout}.name", v.rollout_engine, "rl.verl.rollout_engine"),
        Override(f"{rollout}.mode", "async", "agent loops need the async server"),
        Override(f"{rollout}.temperature", rl.temperature, "rl.temperature"),
        Override(
            f"{rollout}.tensor_model_parallel_size", v.tensor_parallel_size, "rl.verl.tensor_parallel_size"
        ),
        Override(
            f"{rollout}.gpu_memory_utilization", v.gpu_memory_utilization, "rl.verl.gpu_memory_utilization"
        ),
        Override(f"{rollout}.limit_images", images_per_episode(params), "images per episode", new=True),
        # Episode images are already at their seen sizes; a budget spanning the first view's and
        # the crop's keeps verl's and vLLM's processors from resizing them (boxes stay in frame).
        Override(
            "data.mm_processor_kwargs.min_pixels",
            pixels[0],
            "min(model.min_pixels, episode.crop_min_pixels)",
            new=True,
        ),
        Override(
            "data.mm_processor_kwargs.max_pixels",
            pixels[1],
            "max(model.max_pixels, episode.crop_max_pixels)",
            new=True,
        ),
        Override(f"{rollout}.agent.agent_loop_config_path", inputs.agent_loop_config, "our agent loop YAML"),
        Override(f"{rollout}.agent.default_agent_loop", AGENT_NAME, "rows without agent_name use it too"),
        Override("reward.custom_reward_function.path", REWARD_PATH, "shared reward, last turn only"),
        Override("reward.custom_reward_function.name", REWARD_NAME, "shared reward, last turn only"),
        Override(
            f"{REWARD_KWARGS}.format_reward", params.episode.format_reward, "episode.format_reward", new=True
        ),
        Override(
            f"{REWARD_KWARGS}.grounding_reward",
            params.episode.grounding_reward,
            "episode.grounding_reward",
            new=True,
        ),
        # model and data (paths as the cluster sees them)
        Override("actor_rollout_ref.model.path", inputs.model_path, "paths.sft_model"),
        Override(
            "actor_rollout_ref.model.override_config.attn_implementation",
            v.attn_implementation,
            "rl.verl.attn_implementation",
            new=True,
        ),
        Override(
            "actor_rollout_ref.model.use_remove_padding",
            v.attn_implementation == "flash_attention_2",
            "remove padding needs flash-attn (rl.verl.attn_implementation)",
        ),
        Override(
            "actor_rollout_ref.model.trust_remote_code",
            params.model.trust_remote_code,
            "model.trust_remote_code",
        ),
        Override("data.trust_remote_code", params.model.trust_remote_code, "model.trust_remote_code"),
        Override("data.train_files", inputs.train_files, "train split"),
        Override("data.val_files", inputs.val_files, "val split"),
        # trainer: cluster shape, length, checkpoints, validation, logging
        Override("trainer.nnodes", v.nnodes, "rl.verl.nnodes"),
        Override("trainer.n_gpus_per_node", v.n_gpus_per_node, "rl.verl.n_gpus_per_node"),
        Override("trainer.total_training_steps", rl.max_steps, "rl.max_steps (steps)"),
        Override("trainer.total_epochs", EPOCHS_UPPER_BOUND, "max_steps decides; epochs only bound it"),
        Override("trainer.save_freq", rl.checkpoint_every, "rl.checkpoint_every (steps)"),
        Override("trainer.test_freq", rl.val_every, "rl.val_every (steps)"),
        Override("trainer.default_local_dir", inputs.checkpoint_dir, "rl.verl.checkpoint_dir"),
        Override("trainer.resume_mode", "auto", "a resubmitted job resumes from the last checkpoint"),
        Override(
            "trainer.max_actor_ckpt_to_keep",
            v.keep_checkpoints or None,
            "rl.verl.keep_checkpoints (0: keep all)",
        ),
        Override("trainer.project_name", params.tracking.experiment, "tracking.experiment"),
        Override("trainer.experiment_name", inputs.experiment_name, "the stage run"),
        Override("trainer.logger", list(inputs.loggers), "console, plus MLflow when a server is reachable"),
    ]


def agent_loop_entries(params: Params) -> list[dict]:
    """The agent-loop registry entries verl loads; extra keys reach our loop's __init__."""
    return [
        {
            "name": AGENT_NAME,
            "_target_": AGENT_LOOP_TARGET,
            "mode": params.rl.mode,
            "episode": params.episode.model_dump(mode="json"),
            "first_view": [params.model.min_pixels, params.model.max_pixels],
            "max_image_pixels": params.prepare.max_image_pixels,
        }
    ]


def write_agent_loop_config(params: Params, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(agent_loop_entries(params), sort_keys=False))
    return path


def _config_dir() -> str:
    import verl.trainer.config as verl_config

    return os.path.dirname(verl_config.__file__)


def compose(config_name: str, overrides: list[str]):
    """Compose one of verl's own Hydra configs with `overrides` (raises on unknown keys)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=_config_dir(), version_base=None):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except Exception as exc:  # hydra raises several types; all mean "verl rejects these overrides"
        raise VerlConfigError(f"verl's {config_name} config rejects the overrides: {exc}") from exc
    finally:
        GlobalHydra.instance().clear()


def compose_main_ppo(overrides: list[str]):
    """Compose and validate the `main_ppo` config exactly as `verl.trainer.main_ppo.main` would."""
    import warnings

    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    cfg = compose(MAIN_PPO_CONFIG, overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Disabled critic ..." is what GRPO wants
        try:
            validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
        except (AssertionError, ValueError) as exc:
            raise VerlConfigError(f"verl's validate_config rejects the main_ppo config: {exc}") from exc
    return cfg


def resolved(cfg) -> dict:
    """The composed config as a plain dict (interpolations resolved) for MLflow and the job log."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)
