"""The local GRPO trainer (`rl.backend: local`): MGPO, or the single-turn GRPO baseline.

Per step: `prompts_per_step` train records (a seeded permutation per epoch), `rollouts_per_prompt`
sampled episodes each through the shared transformers engine (`components.rl.rollout`), rewards
from the shared reward (inside the episode), GRPO advantages, then `ppo_epochs` passes over
mini-batches of `prompts_per_mini_batch` groups with verl's clipped policy loss, low-variance KL
to the frozen starting model, an entropy bonus and gradient clipping (`components.rl.loss`).
Log-probs for the update are recomputed on whole trajectories with every image and M-RoPE
positions (`components.rl.logprobs`); the mean gap to the engine's sampled log-probs is logged
(`logprob_gap`) as an end-to-end check that training sees what rollout saw.

Modes: `mgpo` (the paper's two-turn grounding episode, the environment's tokens masked out) and
`direct` (one turn with the choices: the paper's GRPO baseline, same budget). Validation runs
on the first `val_samples` val records, before the first step, every `val_every` steps and at
the end, twice: greedy (`val_<protocol>_<metric>`), and sampled at the rollout temperature with
`val_sampled_rollouts` episodes per question (`val_sampled_<protocol>_<metric>`, the mean over
all of them; 0 turns it off). Greedy figures of a tiny model hang on near-tied digits (one flip
moves the valid-box ratio from 84% to 25%); sampled ones measure the policy RL actually trains.
The sampled pass uses the same seed at every validation (common random numbers: a change between
passes is the model's, not the sampler's), so reruns give identical figures. A `direct` run also
validates the mgpo protocol, so its valid-box ratio can be compared with MGPO's.

Departures from the paper (7B on 32 H100s): the budget (group size, batch, lr, steps, tokens)
is scaled to a tiny model on CPU (params `rl`); with `rl.filter_groups` (default) groups whose
rewards are all equal are left out of the update, as DAPO's dynamic-sampling filter (without
resampling): they carry no policy gradient, and with Adam their KL/entropy-only gradient turned
into full-size drift steps on the tiny model (measured: KL 0.5 and truncated answers after 10
steps); old log-probs equal the current ones when there is one mini-batch and one epoch
(on-policy, as verl does then); with `rl.time_budget_s` > 0 (default 0: no limit, so that
`rl.max_steps` alone decides the step count and the outputs do not depend on machine load) a
step is not started when, by the mean step time so far, it would end past the budget.
Run: `mgpo rl` (flows/rl.py), `mgpo rl -S rl.mode=direct`, `mgpo rl --resume`.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from components.config import EpisodeConfig, RLConfig
from components.rl import checkpoint as ckpt
from components.rl.logprobs import collate, response_logprobs
from components.rl.loss import LossConfig, group_advantages, grpo_loss
from components.rl.rollout import Rollout, run_groups, usable_groups

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: object
    processor: object
    state: ckpt.TrainerState
    stop_reason: str
    """max_steps | time_budget"""
    resumed_from: int | None = None
    failures: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------- data


def step_records(records: Sequence, step: int, per_step: int, seed: int) -> list:
    """The records of a step: a fresh seeded permutation each epoch, a pure function of the
    step (so a resumed run sees exactly the records the uninterrupted run would have)."""
    n = len(records)
    out = []
    for k in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(k, n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        out.append(records[int(perm[pos])])
    return out


# ------------------------------------------------------------------------------ metrics


def episode_metrics(results: Sequence, has_target: Callable[[str], bool]) -> dict[str, float]:
    """Reward, accuracy, grounding and length figures of finished episodes.

    IoU and crop-hit are over episodes whose record has a target box (an invalid box counts 0),
    as in the evaluation stage; they are absent when no record has one.
    """
    if not results:
        return {}
    out = {
        "reward_mean": float(np.mean([r.reward.score for r in results])),
        "accuracy": float(np.mean([r.reward.accuracy for r in results])),
        "format_ok": float(np.mean([r.reward.format_ok for r in results])),
        "truncated_ratio": float(np.mean([r.truncated for r in results])),
    }
    model_turns = sum(sum(1 for t in r.turns if not t.by_env) for r in results)
    out["response_tokens_per_turn"] = sum(sum(r.response_mask) for r in results) / max(model_turns, 1)
    boxes = [r.box_valid for r in results if r.box_valid is not None]
    if boxes:
        out["valid_box_ratio"] = float(np.mean(boxes))
    targeted = [r for r in results if r.box_valid is not None and has_target(r.id)]
    if targeted:
        out["iou"] = float(np.mean([r.iou or 0.0 for r in targeted]))
        out["crop_hit_ratio"] = float(np.mean([bool(r.crop_hit) for r in targeted]))
    return out


# ------------------------------------------------------------------------------ trainer


class GRPOTrainer:
    """Holds the policy, the frozen reference and the optimizer; `run` trains to the end."""

    def __init__(
        self,
        cfg: RLConfig,
        episode_cfg: EpisodeConfig,
        model,
        processor,
        train_records: Sequence,
        val_records: Sequence,
        checkpoint_dir: str | Path,
        first_view: tuple[int, int],
        max_image_pixels: int | None = None,
    ):
        from components.prompts import load_templates

        if not train_records:
            raise ValueError("the RL train split is empty")
        self.cfg, self.episode_cfg = cfg, episode_cfg
        self.model, self.processor = model, processor
        self.train_records, self.val_records = list(train_records), list(val_records)[: cfg.val_samples]
        self.checkpoint_dir = Path(checkpoint_dir)
        self.first_view, self.max_image_pixels = first_view, max_image_pixels
        self.templates = load_templates(episode_cfg.templates, episode_cfg.template)
        targets = {r.id for r in [*self.train_records, *self.val_records] if r.target_boxes}
        self.has_target = targets.__contains__
        self.ref = None
        if cfg.kl_coef > 0:
            self.ref = copy.deepcopy(model).eval()
            self.ref.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.loss_cfg = LossConfig(
            clip_ratio=cfg.clip_ratio, kl_coef=cfg.kl_coef, entropy_coef=cfg.entropy_coef
        )
        self.state = ckpt.TrainerState(fingerprint=self.fingerprint())

    def fingerprint(self) -> dict:
        c = self.cfg
        return {
            "mode": c.mode,
            "seed": c.seed,
            "prompts_per_step": c.prompts_per_step,
            "rollouts_per_prompt": c.rollouts_per_prompt,
            "train_records": len(self.train_records),
        }

    # --------------------------------------------------------------------- episodes

    def make_episode(self, mode: str):
        from components.episode import Episode

        def make(record):
            return Episode(
                record, self.episode_cfg, self.templates, mode, self.first_view, self.max_image_pixels
            )

        return make

    def sampling(self, temperature: float, seed: int):
        from components.engines.base import SamplingParams

        return SamplingParams(
            max_new_tokens=self.episode_cfg.max_new_tokens, temperature=temperature, seed=seed
        )

    def engine(self):
        # A fresh engine per phase: its sampling stream then depends only on the seed we pass.
        from components.engines.transformers_engine import TransformersEngine

        return TransformersEngine(self.model, self.processor)

    # ------------------------------------------------------------------- validation

    def val_seed(self) -> int:
        """The sampled validation's seed: the same at every pass, apart from the training steps'."""
        return self.cfg.seed * 1_000_003 + 999_999

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Greedy and sampled episodes on the val records.

        `val_<protocol>_<metric>`: one greedy episode per question; `val_sampled_<protocol>_<metric>`:
        `val_sampled_rollouts` episodes per question at `temperature`, averaged over all of them.
        """
        if not self.val_records:
            return {}
        cfg = self.cfg
        start = time.perf_counter()
        self.model.eval()
        protocols = [cfg.mode] + (["mgpo"] if cfg.mode == "direct" else [])
        passes = [("val", 1, self.sampling(0.0, cfg.seed))]
        if cfg.val_sampled_rollouts > 0:
            passes.append(
                ("val_sampled", cfg.val_sampled_rollouts, self.sampling(cfg.temperature, self.val_seed()))
            )
        out: dict[str, float] = {}
        for prefix, rollouts_per_question, sampling in passes:
            for protocol in protocols:
                rollouts, failures = run_groups(
                    self.engine(),
                    self.val_records,
                    rollouts_per_question,
                    self.make_episode(protocol),
                    sampling,
                    cfg.rollout_batch_size,
                )
                figures = episode_metrics([r.result for r in rollouts], self.has_target)
                figures["failed"] = sum(f.kind == "dropped" for f in failures)
                figures["retried_batches"] = sum(f.kind == "rerun" for f in failures)
                out.update({f"{prefix}_{protocol}_{k}": v for k, v in figures.items()})
        out["val_seconds"] = time.perf_counter() - start
        return out

    # ------------------------------------------------------------------------ update

    def _minibatches(self, rollouts: list[Rollout]) -> list[list[int]]:
        groups = sorted({r.group for r in rollouts})
        per = self.cfg.prompts_per_mini_batch
        chunks = [set(groups[i : i + per]) for i in range(0, len(groups), per)]
        return [[i for i, r in enumerate(rollouts) if r.group in chunk] for chunk in chunks]

    def update(self, rollouts: list[Rollout], advantages: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        batches = []
        for idx in self._minibatches(rollouts):
            batch = collate([rollouts[i].result for i in idx], self.processor, self.model)
            sampled = torch.zeros_like(batch.response_mask)
            for row, i in enumerate(idx):
                lp = rollouts[i].result.response_logprobs
                sampled[row, : len(lp)] = torch.tensor(lp)
            batches.append((idx, batch, sampled))
        on_policy = cfg.ppo_epochs == 1 and len(batches) == 1
        old, ref = {}, {}
        with torch.no_grad():
            self.model.eval()
            for n, (_, batch, _) in enumerate(batches):
                if not on_policy:
                    old[n] = response_logprobs(self.model, batch, cfg.temperature)[0]
                if self.ref is not None:
                    ref[n] = response_logprobs(self.ref, batch, cfg.temperature)[0]
        self.model.train()
        sums: dict[str, float] = {}
        count = 0
        gaps = []
        for epoch in range(cfg.ppo_epochs):
            for n, (idx, batch, sampled) in enumerate(batches):
                logp, entropy = response_logprobs(self.model, batch, cfg.temperature, with_entropy=True)
                if epoch == 0:
                    current = old[n] if n in old else logp.detach()
                    mask = batch.response_mask
                    gaps.append(float(((current - sampled).abs() * mask).sum() / mask.sum()))
                old_lp = logp.detach() if on_policy else old[n]
                loss, m = grpo_loss(
                    logp, old_lp, advantages[idx], batch.response_mask, self.loss_cfg, entropy, ref.get(n)
                )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
                m["grad_norm"] = grad_norm
                if math.isfinite(grad_norm):
                    self.optimizer.step()
                else:  # as verl does: never apply a non-finite gradient
                    log.warning("non-finite gradient norm; update skipped")
                    m["skipped_updates"] = 1.0
                for k, v in m.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        self.model.eval()
        out = {k: v / count for k, v in sums.items() if k != "skipped_updates"}
        out["skipped_updates"] = sums.get("skipped_updates", 0.0)
        out["logprob_gap"] = float(np.mean(gaps)) if gaps else 0.0
        return out

    # -------------------------------------------------------------------------- step

    def step(self) -> tuple[dict[str, float], list[str]]:
        cfg = self.cfg
        step = self.state.step
        start = time.perf_counter()
        records = step_records(self.train_records, step, cfg.prompts_per_step, cfg.seed)
        self.model.eval()
        rollouts, failures = run_groups(
            self.engine(),
            records,
            cfg.rollouts_per_prompt,
            self.make_episode(cfg.mode),
            self.sampling(cfg.temperature, cfg.seed * 1_000_003 + step),
            cfg.rollout_batch_size,
        )
        rollout_s = time.perf_counter() - start
        metrics = episode_metrics([r.result for r in rollouts], self.has_target)
        usable, skipped = usable_groups(rollouts, len(records))
        rewards = [r.result.reward.score for r in usable]
        metrics.update(
            failed_rollouts=float(sum(f.kind == "dropped" for f in failures)),
            retried_batches=float(sum(f.kind == "rerun" for f in failures)),
            skipped_groups=float(len(skipped)),
            rollout_seconds=rollout_s,
        )
        by_group: dict[int, set] = {}
        for r, s in zip(usable, rewards, strict=True):
            by_group.setdefault(r.group, set()).add(s)
        flat = {g for g, v in by_group.items() if len(v) == 1}
        metrics["zero_variance_groups"] = float(len(flat))
        if cfg.filter_groups:
            # A group whose rewards are all equal has zero advantage: no policy-gradient signal,
            # only KL/entropy terms, which Adam would scale up to a full-size step of drift.
            rewards = [s for r, s in zip(usable, rewards, strict=True) if r.group not in flat]
            usable = [r for r in usable if r.group not in flat]
        if usable:
            adv = group_advantages(rewards, [r.group for r in usable], cfg.norm_adv_by_std)
            t0 = time.perf_counter()
            metrics.update(self.update(usable, adv))
            metrics["update_seconds"] = time.perf_counter() - t0
            metrics["updated"] = 1.0
        else:
            log.info("step %d: no group with a reward signal; no update", step + 1)
            metrics["updated"] = 0.0
        metrics["seconds_per_step"] = time.perf_counter() - start
        reasons = [f"step {step + 1} {f.describe()}" for f in failures]
        return metrics, reasons

    # --------------------------------------------------------------------------- run

    def run(
        self,
        resume: bool = False,
        on_step: Callable[[int, dict], None] | None = None,
        on_val: Callable[[int, dict], None] | None = None,
    ) -> TrainResult:
        cfg = self.cfg
        resumed_from = None
        found = ckpt.latest(self.checkpoint_dir) if resume else None
        if found is not None:
            self.state = ckpt.load(found, self.model, self.optimizer, self.fingerprint())
            resumed_from = self.state.step
            log.info("resumed from %s (step %d)", found, self.state.step)
        elif not resume:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        failures: list[str] = []
        clock = time.perf_counter() - self.state.elapsed_s
        if not self.state.val_history:
            self._validate(on_val)
        stop = "max_steps"
        while self.state.step < cfg.max_steps:
            elapsed = time.perf_counter() - clock
            if self._would_overrun(elapsed):
                stop = "time_budget"
                break
            metrics, reasons = self.step()
            failures += reasons
            self.state.step += 1
            self.state.history.append({"step": self.state.step, **metrics})
            if on_step:
                on_step(self.state.step, metrics)
            last = self.state.step >= cfg.max_steps
            if self.state.step % cfg.val_every == 0 or last:
                self._validate(on_val)
            self.state.elapsed_s = time.perf_counter() - clock
            if self.state.step % cfg.checkpoint_every == 0 or last:
                ckpt.save(self.checkpoint_dir, self.model, self.optimizer, self.state)
        if self.state.val_history[-1]["step"] != self.state.step:
            self._validate(on_val)
            self.state.elapsed_s = time.perf_counter() - clock
            ckpt.save(self.checkpoint_dir, self.model, self.optimizer, self.state)
        return TrainResult(self.model, self.processor, self.state, stop, resumed_from, failures)

    def _validate(self, on_val) -> None:
        figures = self.validate()
        self.state.val_history.append({"step": self.state.step, **figures})
        if on_val:
            on_val(self.state.step, figures)

    def _would_overrun(self, elapsed: float) -> bool:
        """True when one more step (and the closing validation) would pass the time budget."""
        if self.cfg.time_budget_s <= 0:  # no budget: the step limit decides
            return False
        steps = [h["seconds_per_step"] for h in self.state.history[-5:]]
        vals = [v.get("val_seconds", 0.0) for v in self.state.val_history[-2:]]
        step_s = float(np.mean(steps)) if steps else 0.0
        val_s = float(np.mean(vals)) if vals else 0.0
        return elapsed + step_s + val_s > self.cfg.time_budget_s
