"""The `sft` and `rl` sections: local trainers and their verl counterparts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from components.config.base import Section

AttnImplementation = Literal["flash_attention_2", "sdpa", "eager"]


class SFTVerl(Section):
    nnodes: int = Field(1, ge=1)
    """Nodes for torchrun."""
    nproc_per_node: int = Field(8, ge=1)
    """GPUs per node."""
    micro_batch_size_per_gpu: int = Field(1, ge=1)
    """Trajectories per GPU per forward."""
    epochs: int = Field(1, ge=1)
    """Passes over the trajectories (an upper bound beside sft.max_steps)."""
    max_tokens_per_gpu: int = Field(0, ge=0)
    """0: fixed micro-batches; >0: dynamic batches of at most this many tokens per GPU."""
    run_on: Literal["local", "ray"] = "local"
    """local: torchrun on this machine; ray: a Ray job on RAY_ADDRESS."""
    checkpoint_dir: str = ""
    """verl checkpoint folder (shared by all nodes); empty: <paths.checkpoints>/sft_verl."""
    job_timeout_s: float = Field(86400, gt=0)
    """Stop waiting for (and stop) the Ray job after this many seconds."""
    attn_implementation: AttnImplementation = "flash_attention_2"
    """Attention kernel verl loads the model with (sdpa: a node without flash-attn)."""
    extra_overrides: list[str] = []
    """Further Hydra overrides for verl.trainer.sft_trainer."""


class SFTConfig(Section):
    backend: Literal["local", "verl"] = "local"
    """local (transformers) or verl (torchrun)."""
    train_data: str = "data/processed/synthetic/train.parquet"
    """Canonical parquet of the records the trajectories are built from."""
    seed: int = 0
    """Data order and jitter seed."""
    max_steps: int = Field(250, ge=1)
    """Optimizer steps."""
    samples_per_micro_batch: int = Field(8, ge=1)
    """Trajectories per forward/backward."""
    micro_batches_per_step: int = Field(1, ge=1)
    """Gradient accumulation."""
    lr: float = Field(2e-3, gt=0)
    """AdamW peak learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Learning-rate schedule."""
    warmup_steps: int = Field(10, ge=0)
    """Linear warmup steps."""
    grad_clip: float = Field(1.0, gt=0)
    """Max gradient norm."""
    max_seq_len: int = Field(1024, ge=64)
    """Longer trajectories are skipped and counted, never cut."""
    checkpoint_every: int = Field(50, ge=1)
    """Steps between checkpoints."""
    box_jitter: float = Field(0.08, ge=0, le=0.5)
    """Jitter of target boxes as a share of the box side."""
    box_grid: int = Field(28, ge=0)
    """Snap turn-1 boxes outward to this pixel grid (28: whole merged tokens); 0 keeps pixels."""
    missing_box_share: float = Field(0.1, ge=0, le=1)
    """Share of trajectories whose turn 1 has no valid box."""
    direct_share: float = Field(0.0, ge=0, le=1)
    """Share of direct-answer trajectories."""
    answer: Literal["letter", "text"] = "letter"
    """What the answer's \\boxed{} holds: the option's letter (paper) or the option's text."""
    verl: SFTVerl = SFTVerl()


class RLVerl(Section):
    nnodes: int = Field(4, ge=1)
    """Nodes in the Ray cluster."""
    n_gpus_per_node: int = Field(8, ge=1)
    """GPUs per node."""
    prompt_length: int = Field(8192, ge=64)
    """Max prompt tokens."""
    response_length: int = Field(8192, ge=64)
    """Max response tokens (all turns and the crop)."""
    rollout_engine: Literal["vllm", "sglang"] = "vllm"
    """verl rollout engine."""
    tensor_parallel_size: int = Field(1, ge=1)
    """vLLM tensor parallelism."""
    gpu_memory_utilization: float = Field(0.6, gt=0, le=1)
    """vLLM memory share."""
    max_tokens_per_gpu: int = Field(32768, ge=128)
    """Dynamic-batch token budget per GPU (at least prompt_length + response_length)."""
    checkpoint_dir: str = ""
    """verl checkpoint folder (shared by all nodes); empty: <paths.checkpoints>/rl_verl."""
    job_timeout_s: float = Field(172800, gt=0)
    """Stop waiting for (and stop) the Ray job after this many seconds."""
    keep_checkpoints: int = Field(2, ge=0)
    """Newest actor checkpoints verl keeps (0: all; a 7B one with optimizer state is ~100 GB)."""
    attn_implementation: AttnImplementation = "flash_attention_2"
    """Attention kernel of verl's FSDP actor and reference (sdpa: a node without flash-attn)."""
    host_memory_warn_gb: float = Field(64, gt=0)
    """Warn when a step's estimated pixel_values pass this many GB of host memory."""
    extra_overrides: list[str] = []
    """Further Hydra overrides for verl.trainer.main_ppo."""


class RLConfig(Section):
    backend: Literal["local", "verl"] = "local"
    """local (transformers GRPO) or verl (Ray job)."""
    mode: Literal["mgpo", "direct"] = "mgpo"
    """mgpo (multi-turn grounding) or direct (single-turn GRPO baseline)."""
    seed: int = 0
    """Sampling and data-order seed."""
    max_steps: int = Field(20, ge=1)
    """GRPO steps at most."""
    time_budget_s: float = Field(0, ge=0)
    """Seconds of training at most, over resumes (0: no limit, so max_steps alone sets the steps)."""
    train_data: str = "data/processed/synthetic/train.parquet"
    """Canonical parquet of the RL train questions."""
    val_data: str = "data/processed/synthetic/val.parquet"
    """Canonical parquet of the validation questions."""
    prompts_per_step: int = Field(4, ge=1)
    """Questions sampled per step."""
    rollouts_per_prompt: int = 4
    """Episodes per question (the GRPO group size)."""
    prompts_per_mini_batch: int = Field(4, ge=1)
    """Questions per optimizer mini-batch."""
    ppo_epochs: int = Field(1, ge=1)
    """Passes over each step's rollouts."""
    lr: float = Field(2e-5, gt=0)
    """AdamW learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    clip_ratio: float = Field(0.2, gt=0, lt=1)
    """PPO clip range."""
    kl_coef: float = Field(0.01, ge=0)
    """Low-variance KL to the frozen reference (0 disables)."""
    entropy_coef: float = Field(0.001, ge=0)
    """Entropy bonus."""
    grad_clip: float = Field(1.0, gt=0)
    """Max gradient norm."""
    norm_adv_by_std: bool = True
    """GRPO: divide advantages by the group's std."""
    filter_groups: bool = True
    """Leave groups whose rewards are all equal out of the update (verl: DAPO group filtering)."""
    temperature: float = Field(1.0, gt=0)
    """Rollout sampling temperature."""
    checkpoint_every: int = Field(5, ge=1)
    """Steps between checkpoints."""
    val_every: int = Field(10, ge=1)
    """Steps between validation passes (greedy and sampled)."""
    val_samples: int = Field(32, ge=1)
    """Val questions per validation pass."""
    val_sampled_rollouts: int = Field(2, ge=0)
    """Episodes per val question of the sampled validation pass at `temperature` (0: greedy only)."""
    rollout_batch_size: int = Field(32, ge=1)
    """Episodes generated together by the local engine."""
    torch_threads: int = Field(1, ge=0)
    """CPU threads of torch in the local trainer (0: torch's default)."""
    verl: RLVerl = RLVerl()

    @field_validator("rollouts_per_prompt")
    @classmethod
    def _group(cls, v: int) -> int:
        if v < 2:
            raise ValueError("rollouts per prompt must be >= 2 for GRPO")
        return v

    @model_validator(mode="after")
    def _mini(self) -> RLConfig:
        if self.prompts_per_step % self.prompts_per_mini_batch:
            raise ValueError("prompts_per_step must be a multiple of prompts_per_mini_batch")
        return self
