"""Log-probs of sampled trajectories, recomputed on the whole sequence for the GRPO update.

A trajectory is `prompt_ids + response_ids` exactly as the engine sampled them (no
re-tokenization) with every image of the episode in order (the first view, then each crop or
the original view again). The update's forward pass feeds all of it at once:
- `pixel_values` / `image_grid_thw` for every image, from the processor's image processor;
- M-RoPE position ids from the model's own `get_rope_index`, so the crop's image tokens sit at
  their true 2-D (time, height, width) positions, as in rollout. The reference code gave them
  1-D positions in training (MGPO.md, "known weaknesses"); this module fixes that.
Only the response positions go through `lm_head` (the prompt's logits are never needed), and
log-probs / entropies come back aligned with `response_ids` as (batch, max_response_len) tensors
with a 0/1 `response_mask` (1 on model tokens, 0 on environment tokens and padding).

Logits are divided by the sampling temperature before the softmax, as verl's actor does, and the
vision tokens the sampler forbids are forbidden here too (`tokens.forbid_vision_tokens`, one rule
for both), so the policy being optimized is the one that was sampled: log-probs and entropy are
of the same distribution the engine drew from (`logprob_gap` stays below 1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch


class TrajectoryLike(Protocol):
    prompt_ids: Sequence[int]
    response_ids: Sequence[int]
    response_mask: Sequence[int]
    images: Sequence[Any]


@dataclass
class Batch:
    """Right-padded model inputs for a list of trajectories, plus response-aligned targets."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (3, B, L) M-RoPE
    image_slots: torch.Tensor  # (B, L) bool: placeholders that receive image features
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    response_ids: torch.Tensor  # (B, R)
    response_mask: torch.Tensor  # (B, R) float, 1 on model tokens only
    gather_index: torch.Tensor  # (B, R) position whose logits predict response token j
    vision_ids: tuple[int, ...] = ()  # ids the sampler never draws (tokens.vision_token_ids)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def encode_images(
    processor, images: Sequence[Any], image_token_id: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """pixel_values and image_grid_thw for images in order (None, None when there are none).

    Each image is encoded alone by the engines' `tokens.encode` (a per-image pixel budget, so an
    image already at its seen size passes unchanged, which it checks): the same pixels rollout saw.
    """
    from components.engines import tokens

    if not images:
        return None, None
    encoded = [tokens.encode(processor, _PLACEHOLDER, [im], image_token_id) for im in images]
    pixel_values = torch.cat([p for e in encoded for p in e.pixel_values])
    grid = torch.tensor([g for e in encoded for g in e.grids], dtype=torch.long)
    return pixel_values, grid


_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


def collate(
    trajectories: Sequence[TrajectoryLike], processor, model, pad_token_id: int | None = None
) -> Batch:
    """Build one right-padded batch; raise ValueError naming the trajectory when ids and images
    disagree (a count of image pad tokens that does not match the processor's grid)."""
    from components.engines import tokens

    if not trajectories:
        raise ValueError("collate needs at least one trajectory")
    config = model.config
    image_token_id = config.image_token_id
    merge = config.vision_config.spatial_merge_size
    if pad_token_id is None:
        pad_token_id = processor.tokenizer.pad_token_id or 0
    seqs, slots, resp_lens, prompt_lens, pixels, grids = [], [], [], [], [], []
    for i, t in enumerate(trajectories):
        if len(t.response_ids) != len(t.response_mask):
            raise ValueError(
                f"trajectory {i}: {len(t.response_ids)} response ids but {len(t.response_mask)} mask entries"
            )
        if not len(t.response_ids):
            raise ValueError(f"trajectory {i}: empty response")
        ids = list(t.prompt_ids) + list(t.response_ids)
        # An image pad the MODEL sampled is text to it (the engine fed it without pixels), so
        # only the prompt's and the environment's pads receive image features.
        sampled = [0] * len(t.prompt_ids) + [int(m) for m in t.response_mask]
        slot = [x == image_token_id and not s for x, s in zip(ids, sampled, strict=True)]
        pv, grid = encode_images(processor, t.images, image_token_id)
        expected = int((grid.prod(-1) // merge**2).sum()) if grid is not None else 0
        if expected != sum(slot):
            raise ValueError(
                f"trajectory {i}: {sum(slot)} image pad tokens but its {len(t.images)} images need {expected}"
            )
        seqs.append(ids)
        slots.append(slot)
        prompt_lens.append(len(t.prompt_ids))
        resp_lens.append(len(t.response_ids))
        if pv is not None:
            pixels.append(pv)
            grids.append(grid)
    batch, length, rmax = len(seqs), max(map(len, seqs)), max(resp_lens)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    image_slots = torch.zeros((batch, length), dtype=torch.bool)
    response_ids = torch.full((batch, rmax), pad_token_id, dtype=torch.long)
    response_mask = torch.zeros((batch, rmax), dtype=torch.float32)
    gather_index = torch.zeros((batch, rmax), dtype=torch.long)
    for b, (ids, slot, plen, rlen, t) in enumerate(
        zip(seqs, slots, prompt_lens, resp_lens, trajectories, strict=True)
    ):
        input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, : len(ids)] = 1
        image_slots[b, : len(ids)] = torch.tensor(slot, dtype=torch.bool)
        response_ids[b, :rlen] = torch.tensor(list(t.response_ids), dtype=torch.long)
        response_mask[b, :rlen] = torch.tensor([float(m) for m in t.response_mask])
        # logits at position p predict token p + 1; padding points at a harmless position.
        gather_index[b, :rlen] = torch.arange(plen - 1, plen - 1 + rlen)
    pixel_values = torch.cat(pixels) if pixels else None
    image_grid_thw = torch.cat(grids) if grids else None
    position_ids = rope_positions(model, image_slots, attention_mask, image_grid_thw)
    return Batch(
        input_ids,
        attention_mask,
        position_ids,
        image_slots,
        pixel_values,
        image_grid_thw,
        response_ids,
        response_mask,
        gather_index,
        tokens.vision_token_ids(processor.tokenizer),
    )


def rope_positions(model, image_slots, attention_mask, image_grid_thw) -> torch.Tensor:
    """(3, B, L) M-RoPE positions from the model's `get_rope_index` (image tokens get 2-D ones)."""
    if image_grid_thw is None:
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return pos.unsqueeze(0).expand(3, -1, -1).contiguous()
    position_ids, _ = model.model.get_rope_index(
        image_slots.long(),  # only its shape is read; the token types below decide
        mm_token_type_ids=image_slots.int(),
        image_grid_thw=image_grid_thw,
        attention_mask=attention_mask,
    )
    return position_ids


def response_logprobs(
    model, batch: Batch, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs (B, R) of the response ids, and entropies when asked.

    Gradients flow when called outside `torch.no_grad()`. Padding positions hold garbage
    values; multiply by `batch.response_mask` (verl's losses take the mask).
    """
    from verl.utils.torch_functional import entropy_from_logits

    from components.engines import tokens

    inner = model.model
    embeds = inner.get_input_embeddings()(batch.input_ids)
    if batch.pixel_values is not None:
        # Scatter image features into the image slots ourselves (the model's own forward would
        # also fill any image pad the model sampled, which then has no features).
        features = inner.get_image_features(batch.pixel_values, batch.image_grid_thw).pooler_output
        features = torch.cat(features, dim=0).to(embeds.dtype)
        embeds = embeds.masked_scatter(batch.image_slots.unsqueeze(-1).expand_as(embeds), features)
    out = inner(
        inputs_embeds=embeds,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )
    hidden = out.last_hidden_state  # (B, L, H)
    index = batch.gather_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    logits = model.lm_head(torch.gather(hidden, 1, index)).float()  # (B, R, V)
    if temperature != 1.0:
        logits = logits / temperature
    # the sampler's rule, for log-probs and entropy alike (in place: a fresh non-leaf tensor)
    logits = tokens.forbid_vision_tokens(logits, batch.vision_ids)
    logp = tokens.target_logprobs(logits, batch.response_ids, batch.vision_ids)
    entropy = entropy_from_logits(logits) if with_entropy else None
    return logp, entropy
