"""Local SFT trainer: teacher forcing on multi-turn image conversations, loss on assistant tokens.

It reads the trajectory parquet written by `components.sft.trajectories` (verl's multi-turn SFT
format: `messages` with `<image>` placeholders, `images` as `[{bytes}]`), so the CPU path and
verl's GPU path train on the same file. Per trajectory:
- the processor's chat template renders the conversation, the processor expands each image into
  its `<|image_pad|>` tokens;
- the loss mask is 1 on the tokens of assistant messages (after `<|im_start|>assistant\\n`,
  through `<|im_end|>\\n`, exactly verl's `MultiTurnSFTDataset` rule) and 0 everywhere else: the
  system and user turns, the environment's crop turn and every vision token;
- batches are right-padded; the loss is the mean over all assistant tokens of an optimizer step
  (gradient accumulation divides by the step's token count, not per micro-batch).

Training: AdamW, transformers' warmup+cosine or warmup+constant schedule, gradient clipping,
bf16 autocast where the device supports it (CUDA with bf16; the CPU trains in fp32), a progress
bar (components/progress.py) with loss and tokens/s, a `on_step` callback (the flow logs MLflow
metrics from it), checkpoints every `checkpoint_every` steps holding weights, optimizer,
scheduler, RNG state and the data position; `resume=True` continues from the last one with the same data order. A non-finite loss
stops the run (`NonFiniteLoss`) before any update, so the last checkpoint on disk stays good.

Departure from the paper: the paper has no SFT code; its reported SFT baseline is a plain
single-turn SFT. This is the cold-start warmup the issue asks for.
Run: `mgpo sft` (the flow in flows/sft.py calls `train`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import torch

from components.config import SFTConfig
from components.engines import tokens
from components.grounding import load_original

IMAGE_PLACEHOLDER = "<image>"
CHECKPOINT_FILE = "state.pt"


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


class ResumeMismatch(ValueError):
    """--resume found a checkpoint made on other data or with another batch layout or seed."""


class TrajectoryFormatError(ValueError):
    """A trajectory row cannot be used; the message names the file and the row."""


# ------------------------------------------------------------------------------ encoding


def to_chat_messages(messages: list[dict]) -> tuple[list[dict], int]:
    """verl-style messages (string content with `<image>`) -> processor chat messages with image
    entries; returns them with the number of placeholders (images are passed separately)."""
    out, count = [], 0
    for message in messages:
        parts = []
        for i, piece in enumerate(message["content"].split(IMAGE_PLACEHOLDER)):
            if i:
                parts.append({"type": "image"})
                count += 1
            if piece:
                parts.append({"type": "text", "text": piece})
        out.append({"role": message["role"], "content": parts})
    return out, count


def assistant_token_mask(input_ids: torch.Tensor, tokenizer) -> torch.Tensor:
    """1 on assistant-message tokens, 0 elsewhere (1-D ids of one rendered conversation).

    Written by hand because the tiny model's chat template (like Qwen2.5-VL's own) has no
    `{% generation %}` markers, so `return_assistant_tokens_mask` cannot be used. The span of an
    assistant message starts after `<|im_start|>assistant\\n` and ends after the `<|im_end|>\\n`
    that closes it, which is the rule verl's `MultiTurnSFTDataset` applies per message (the model
    must learn to stop at `<|im_end|>`). Vision tokens are forced to 0 whatever the template.
    """
    ids = input_ids.tolist()
    header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    newline = tokenizer.encode("\n", add_special_tokens=False)
    mask = torch.zeros(len(ids), dtype=torch.long)
    i, n, h = 0, len(ids), len(header)
    while i < n:
        if ids[i : i + h] == header:
            j = i + h
            while j < n and ids[j] != end_id:
                j += 1
            stop = min(n, j + 1)
            if ids[stop : stop + len(newline)] == newline:
                stop += len(newline)
            mask[i + h : stop] = 1
            i = stop
        else:
            i += 1
    for name in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"):
        token = tokenizer.convert_tokens_to_ids(name)
        if isinstance(token, int) and token >= 0:
            mask[input_ids == token] = 0
    return mask


def encode_trajectory(messages: list[dict], images: list, processor) -> dict[str, torch.Tensor]:
    """Tokenize one conversation with its images: input_ids, loss_mask, pixel_values, grid."""
    chat, count = to_chat_messages(messages)
    if count != len(images):
        raise TrajectoryFormatError(f"{count} <image> placeholders but {len(images)} images")
    text = processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=False)
    # The engines' encoder: images pass at their own size (checked), as at generation time.
    image_token_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    try:
        enc = tokens.encode(processor, text, images, image_token_id)
    except tokens.TokenizationError as exc:
        raise TrajectoryFormatError(str(exc)) from None
    input_ids = torch.tensor(enc.ids, dtype=torch.long)
    out = {
        "input_ids": input_ids,
        "loss_mask": assistant_token_mask(input_ids, processor.tokenizer),
        # Without it transformers' Qwen2.5-VL gives every token a 1-D position (its fallback),
        # while generation, the engines and the RL update use the 3-D M-RoPE positions of the
        # image tokens: a model trained on the fallback reads its own prompts wrongly at
        # inference (measured: 87% next-token accuracy teacher-forced, no valid box generated).
        "mm_token_type_ids": (input_ids == image_token_id).int(),
    }
    if images:
        out["pixel_values"] = torch.cat(enc.pixel_values)
        out["image_grid_thw"] = torch.tensor(enc.grids, dtype=torch.long)
    return out


def collate(examples: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; labels are -100 wherever the loss mask is 0 (and on padding)."""
    length = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    token_types = torch.zeros((len(examples), length), dtype=torch.int)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = e["input_ids"]
        attention[row, :n] = 1
        labels[row, :n] = torch.where(e["loss_mask"].bool(), e["input_ids"], torch.tensor(-100))
        token_types[row, :n] = e["mm_token_type_ids"]
    batch = {
        "input_ids": ids,
        "attention_mask": attention,
        "labels": labels,
        "mm_token_type_ids": token_types,
    }
    with_images = [e for e in examples if "pixel_values" in e]
    if with_images:
        batch["pixel_values"] = torch.cat([e["pixel_values"] for e in with_images])
        batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in with_images])
    return batch


def token_losses(model, batch: dict[str, torch.Tensor], autocast: torch.dtype | None) -> torch.Tensor:
    """Sum of the next-token cross-entropy over label positions (not averaged)."""
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.autocast(labels.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        logits = model(**inputs).logits
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    return torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )


# --------------------------------------------------------------------------------- data


class TrajectoryData:
    """The rows of a trajectory parquet (messages + image bytes), encoded on demand."""

    def __init__(self, path: str | Path, processor):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"trajectory file {self.path} not found (build it with the sft stage)")
        table = pq.read_table(self.path, columns=["messages", "images"])
        self.rows = table.to_pylist()
        if not self.rows:
            raise TrajectoryFormatError(f"{self.path}: holds no trajectories")
        self.processor = processor

    def __len__(self) -> int:
        return len(self.rows)

    def encode(self, index: int) -> dict[str, torch.Tensor]:
        row = self.rows[index]
        where = f"{self.path} row {index}"
        try:
            images = [
                load_original(img["bytes"], name=f"{where} image {k}")
                for k, img in enumerate(row["images"] or [])
            ]
            return encode_trajectory(row["messages"], images, self.processor)
        except (KeyError, TypeError, TrajectoryFormatError) as exc:
            raise TrajectoryFormatError(f"{where}: {exc}") from None


def sample_order(n: int, seed: int, start: int, count: int) -> list[int]:
    """Indices at positions [start, start+count) of the stream of per-epoch permutations.

    Epoch e is `range(n)` shuffled by `Random(seed * 1_000_003 + e)`, so position p always maps to
    the same sample: resuming at a step needs only the position, not the generator's state.
    """
    out, perm_epoch, perm = [], -1, []
    for p in range(start, start + count):
        epoch, offset = divmod(p, n)
        if epoch != perm_epoch:
            perm = list(range(n))
            random.Random(seed * 1_000_003 + epoch).shuffle(perm)
            perm_epoch = epoch
        out.append(perm[offset])
    return out


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------- training


def cpu_image_backend(processor, ref: str):
    """Swap in transformers' PIL image backend for the default torchvision one.

    Measured here on 2 CPU cores: 0.017 s versus 0.25 s for two first-view-sized images, with
    pixel values equal to 2.4e-7, so on-the-fly encoding stops dominating a training step.
    """
    from transformers import AutoImageProcessor

    # A processor without the PIL backend keeps its own.
    with contextlib.suppress(TypeError, ValueError, OSError):
        processor.image_processor = AutoImageProcessor.from_pretrained(ref, backend="pil")
    return processor


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on a CUDA device that supports it; None (fp32) elsewhere, the CPU included
    (CPU bf16 autocast is slower than fp32 on most CPUs and changes the numbers tests check)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def make_scheduler(optimizer, cfg: SFTConfig):
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    warmup = min(cfg.warmup_steps, cfg.max_steps)
    if cfg.schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, cfg.max_steps)
    return get_constant_schedule_with_warmup(optimizer, warmup)


@dataclass
class TrainResult:
    steps: int
    """Optimizer steps reached (== max_steps when the run finished)."""
    history: list[dict] = field(default_factory=list)
    """One dict per step: step, loss, lr, grad_norm, tokens, tokens_per_s, seconds."""
    resumed_from: int | None = None
    """Step of the checkpoint the run resumed from (None for a fresh run)."""
    device: str = "cpu"
    precision: str = "fp32"


def _data_fingerprint(cfg: SFTConfig, data_sha: str) -> dict:
    # What must match for a resumed run to see the same data order. max_steps may grow (the
    # schedule is then recomputed over the new length from the current step).
    return {
        "data_sha256": data_sha,
        "seed": cfg.seed,
        "samples_per_micro_batch": cfg.samples_per_micro_batch,
        "micro_batches_per_step": cfg.micro_batches_per_step,
    }


def save_checkpoint(ckpt_dir: Path, model, optimizer, scheduler, step: int, extra: dict) -> Path:
    """Write the checkpoint of `step` atomically (temp folder, then rename) and drop older ones."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"step_{step:06d}"
    tmp = ckpt_dir / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])},
        **extra,
    }
    if torch.cuda.is_available():
        state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(state, tmp / CHECKPOINT_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in ckpt_dir.glob("step_*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _describe(path: Path | None) -> str:
    return f"{path} (step {int(path.name.split('_')[1])})" if path is not None else "none yet"


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = sorted(p for p in ckpt_dir.glob("step_*") if (p / CHECKPOINT_FILE).is_file())
    return found[-1] if found else None


def load_checkpoint(path: Path) -> dict:
    # weights_only: a checkpoint is never unpickled as arbitrary objects.
    return torch.load(path / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def train(
    cfg: SFTConfig,
    model,
    processor,
    data_path: str | Path,
    ckpt_dir: str | Path,
    resume: bool = False,
    on_step: Callable[[dict], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `model` in place on the trajectory parquet; return the per-step history.

    Without `resume` any old checkpoint in `ckpt_dir` is removed first. With `resume` the last
    checkpoint there is loaded (weights, optimizer, scheduler, RNG, position) after checking that
    the data file and the batch/seed params are the same, and training continues to max_steps.
    """
    from components.progress import progress_bar

    ckpt_dir = Path(ckpt_dir)
    data = TrajectoryData(data_path, processor)
    device = pick_device()
    autocast = autocast_dtype(device)
    model.to(device)
    model.train()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    scheduler = make_scheduler(optimizer, cfg)
    fingerprint = _data_fingerprint(cfg, file_sha256(data.path))
    history: list[dict] = []
    step, resumed_from = 0, None

    last = latest_checkpoint(ckpt_dir)
    if resume:
        if last is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}; run without --resume first")
        state = load_checkpoint(last)
        changed = {
            k: (state["fingerprint"].get(k), v)
            for k, v in fingerprint.items()
            if state["fingerprint"].get(k) != v
        }
        if changed:
            detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ResumeMismatch(
                f"--resume: checkpoint {last} was made with different data or params ({detail}); "
                "run without --resume to start over"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate((3, tuple(state["rng"]["python"]), None))
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        step = resumed_from = int(state["step"])
        history = json.loads(state["history"])
    elif last is not None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)

    per_micro, per_step = (
        cfg.samples_per_micro_batch,
        cfg.samples_per_micro_batch * cfg.micro_batches_per_step,
    )
    pad_id = processor.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    bar = progress_bar(total=cfg.max_steps, initial=step, desc="sft", disable=not progress)
    last_good = last if resume else None
    while step < cfg.max_steps:
        start = time.perf_counter()
        order = sample_order(len(data), cfg.seed, step * per_step, per_step)
        batches = [
            collate([data.encode(i) for i in order[m : m + per_micro]], pad_id)
            for m in range(0, per_step, per_micro)
        ]
        target_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in batches)
        if target_tokens == 0:
            raise TrajectoryFormatError(f"step {step + 1}: no assistant tokens in samples {order}")
        total_loss, tokens = 0.0, 0
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss_sum = token_losses(model, batch, autocast)
            if not torch.isfinite(loss_sum):
                bar.close()
                raise NonFiniteLoss(
                    f"sft: loss is {loss_sum.item()} at step {step + 1} (samples {order}); stopped before "
                    f"the update. Last good checkpoint: {_describe(last_good)}. Lower sft.lr or check the data."
                )
            (loss_sum / target_tokens).backward()
            total_loss += loss_sum.item()
            tokens += int(batch["attention_mask"].sum())
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        if not torch.isfinite(grad_norm):
            bar.close()
            raise NonFiniteLoss(
                f"sft: gradient norm is {grad_norm.item()} at step {step + 1} (samples {order}); stopped "
                f"before the update. Last good checkpoint: {_describe(last_good)}. Lower sft.lr or check the data."
            )
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        seconds = time.perf_counter() - start
        record = {
            "step": step,
            "loss": total_loss / target_tokens,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens": tokens,
            "target_tokens": target_tokens,
            "tokens_per_s": tokens / seconds,
            "seconds": seconds,
        }
        history.append(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            last_good = save_checkpoint(
                ckpt_dir,
                model,
                optimizer,
                scheduler,
                step,
                {
                    "fingerprint": fingerprint,
                    "samples_seen": step * per_step,
                    "history": json.dumps(history),
                },
            )
        if on_step is not None:
            on_step(record)
    bar.close()
    precision = "bf16" if autocast is not None else "fp32"
    return TrainResult(step, history, resumed_from, device.type, precision)
