"""The GRPO objective, assembled from verl's `core_algos` (no copy of verl's math).

- `group_advantages`: `core_algos.compute_grpo_outcome_advantage` on one scalar reward per
  trajectory (mean-centred per group, divided by the group's std unless `norm_adv_by_std` is
  off, as in Dr. GRPO).
- `grpo_loss`: the same composition as verl's actor loss (`verl.workers.utils.losses.ppo_loss`):
  the clipped policy loss (`compute_policy_loss_vanilla`, dual-clip included) aggregated with
  `agg_loss` over the loss mask, minus `entropy_coef` x the aggregated entropy, plus
  `kl_coef` x the aggregated low-variance KL (`kl_penalty(..., "low_var_kl")`) to the frozen
  reference. Aggregation is verl's default "token-mean" over the whole mini-batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def group_advantages(
    rewards: Sequence[float], groups: Sequence, norm_adv_by_std: bool = True
) -> torch.Tensor:
    """One advantage per trajectory from its reward and group id (verl's GRPO estimator)."""
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    if len(rewards) != len(groups):
        raise ValueError(f"{len(rewards)} rewards but {len(groups)} group ids")
    scores = torch.tensor([float(r) for r in rewards], dtype=torch.float32).unsqueeze(-1)
    adv, _ = compute_grpo_outcome_advantage(
        token_level_rewards=scores,
        response_mask=torch.ones_like(scores),
        index=np.asarray(list(groups), dtype=object),
        norm_adv_by_std_in_grpo=norm_adv_by_std,
    )
    return adv.squeeze(-1)


@dataclass(frozen=True)
class LossConfig:
    clip_ratio: float = 0.2
    kl_coef: float = 0.0
    entropy_coef: float = 0.0
    loss_agg_mode: str = "token-mean"


def _actor_config(cfg: LossConfig):
    # verl's policy losses read clip ratios (and global batch info) from an ActorConfig.
    from verl.workers.config import ActorConfig

    return ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio=cfg.clip_ratio,
        clip_ratio_low=cfg.clip_ratio,
        clip_ratio_high=cfg.clip_ratio,
        loss_agg_mode=cfg.loss_agg_mode,
        entropy_coeff=cfg.entropy_coef,
        use_kl_loss=cfg.kl_coef > 0,
        kl_loss_coef=cfg.kl_coef,
        kl_loss_type="low_var_kl",
        use_torch_compile=False,
    )


def grpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
    entropy: torch.Tensor | None = None,
    ref_log_prob: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Scalar loss and metrics for (B, R) token tensors; `advantages` is (B,) or (B, R).

    `mask` is 1 on the model's tokens and 0 on environment tokens and padding, so neither
    the turn-2 user text nor the crop's image tokens ever reach the gradient.
    """
    from verl.trainer.ppo.core_algos import agg_loss, compute_policy_loss_vanilla, kl_penalty
    from verl.utils.torch_functional import masked_mean

    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(log_prob)
    if mask.sum() == 0:
        raise ValueError("the loss mask selects no token")
    actor = _actor_config(cfg)
    mask = mask.to(log_prob.dtype)
    pg_loss, pg_metrics = compute_policy_loss_vanilla(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=advantages,
        response_mask=mask,
        loss_agg_mode=cfg.loss_agg_mode,
        config=actor,
    )
    loss = pg_loss
    metrics = {
        "pg_loss": pg_loss.item(),
        "clip_frac": pg_metrics["actor/pg_clipfrac"],
        "ppo_kl": pg_metrics["actor/ppo_kl"],
    }
    if entropy is not None:
        entropy_loss = agg_loss(loss_mat=entropy, loss_mask=mask, loss_agg_mode=cfg.loss_agg_mode)
        metrics["entropy"] = entropy_loss.item()
        if cfg.entropy_coef:
            loss = loss - cfg.entropy_coef * entropy_loss
    if ref_log_prob is not None:
        kld = kl_penalty(logprob=log_prob, ref_logprob=ref_log_prob, kl_penalty="low_var_kl")
        kl_loss = agg_loss(loss_mat=kld, loss_mask=mask, loss_agg_mode=cfg.loss_agg_mode)
        metrics["kl"] = kl_loss.item()
        if cfg.kl_coef:
            loss = loss + cfg.kl_coef * kl_loss
    metrics["loss"] = loss.item()
    metrics["response_tokens"] = float(mask.sum().item())
    metrics["mean_logprob"] = masked_mean(log_prob.detach(), mask).item()
    return loss, metrics
