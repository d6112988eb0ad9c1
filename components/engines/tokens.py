"""Token helpers shared by engines: chat rendering, environment deltas, image encoding.

The rule that keeps training ids equal to sampled ids (unlike the reference code, which
re-tokenized turn-1 text): the context is the initial prompt's ids, then each turn's sampled
ids as sampled, then the ids of what the environment appended. Those appended ids are found by
rendering the chat template twice, for the conversation up to the model's turn and for the
conversation with the environment's next user turn, checking that the first is a prefix of the
second, and tokenizing only the suffix after the model turn's `<|im_end|>`. The model's own
text is never re-tokenized. Special tokens split tokenization, so the suffix (which starts at a
special token or right after one) tokenizes exactly as it would inside the whole text.
"""

from __future__ import annotations

from dataclasses import dataclass

IM_END = "<|im_end|>"
VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
"""Tokens only the processor and the environment place: a sampled `<|image_pad|>` would be read
as an image slot by M-RoPE in the next turn (`get_rope_index` runs out of image grids)."""


def vision_token_ids(tokenizer) -> tuple[int, ...]:
    """Ids of `VISION_TOKENS` in this tokenizer (those it lacks are left out), sorted."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = tokenizer.convert_tokens_to_ids(list(VISION_TOKENS))
    return tuple(sorted({i for i in ids if isinstance(i, int) and i >= 0 and i != unk}))


def forbid_vision_tokens(logits, vision_ids):
    """THE rule of what the model may sample, applied in place to (..., vocab) logits that are
    already divided by the temperature: vision ids get the dtype's lowest finite value, so their
    probability is exactly 0 and softmax, log-softmax and entropy stay finite (an -inf would turn
    verl's entropy into NaN). The engine's sampler and the learner's log-probs and entropy both
    call it, so sampled and recomputed log-probs are of the same distribution. Returns `logits`."""
    import torch

    if len(vision_ids):
        index = torch.as_tensor(list(vision_ids), dtype=torch.long, device=logits.device)
        logits.index_fill_(-1, index, torch.finfo(logits.dtype).min)
    return logits


def target_logprobs(logits, targets, vision_ids):
    """Log-probs of `targets` (...,) under `logits` (..., vocab) with the sampling rule applied
    (`forbid_vision_tokens`, in place). A target that is a vision id can only be one the
    environment inserted (mask 0): it gets 0.0, as rollout stores for inserted ids, rather than
    the rule's huge negative value."""
    import torch

    logp = torch.log_softmax(forbid_vision_tokens(logits, vision_ids), dim=-1)
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if len(vision_ids):
        index = torch.as_tensor(list(vision_ids), dtype=targets.dtype, device=targets.device)
        picked = picked.masked_fill(torch.isin(targets, index), 0.0)
    return picked


class TokenizationError(RuntimeError):
    """Rendered conversations do not line up (a chat-template or processor surprise)."""


def render(processor, messages: list[dict], add_generation_prompt: bool) -> str:
    """The chat template's text for `messages` (image placeholders unexpanded)."""
    return processor.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def delta_text(processor, messages: list[dict], n_before: int, stopped: bool) -> str:
    """Text the environment appended after the model turn `messages[n_before]`.

    `messages[:n_before]` is the context the model generated from, `messages[n_before]` its
    turn, the rest the environment's new turns. When the model did not stop on `<|im_end|>`
    (length cut), the delta starts with `<|im_end|>` (inserted by the environment, mask 0).
    """
    if messages[n_before]["role"] != "assistant":
        raise TokenizationError(
            f"message {n_before} should be the model's turn, got {messages[n_before]['role']!r}"
        )
    base = render(processor, messages[: n_before + 1], add_generation_prompt=False)
    full = render(processor, messages, add_generation_prompt=True)
    cut = base.rfind(IM_END)
    if cut < 0 or not full.startswith(base[: cut + len(IM_END)]):
        raise TokenizationError(
            "the conversation with the new turn does not extend the rendered conversation"
        )
    return full[cut + len(IM_END) :] if stopped else full[cut:]


def prompt_text(processor, messages: list[dict], n_prompt: int) -> tuple[str, str]:
    """(initial prompt text, whole context text) for a first call; the first is a prefix."""
    full = render(processor, messages, add_generation_prompt=True)
    head = render(processor, messages[:n_prompt], add_generation_prompt=True)
    if not full.startswith(head):
        raise TokenizationError("the initial prompt is not a prefix of the whole context")
    return head, full


@dataclass
class Encoded:
    ids: list[int]
    pixel_values: list  # one tensor per image: (patches, channels * temporal * patch * patch)
    grids: list[tuple[int, int, int]]  # (t, h, w) in patches, per image


def encode(processor, text: str, images: list, image_token_id: int) -> Encoded:
    """Tokenize `text` (its image placeholders expanded) with `images` at their sizes.

    The processor gets a per-call budget spanning exactly these images' areas, so images that
    were already resized to a `smart_resize` fixed point pass unchanged; this is checked, as is
    the count of image tokens for each image.
    """
    kwargs = {}
    if images:
        areas = [im.width * im.height for im in images]
        kwargs = {"images": images, "min_pixels": min(areas), "max_pixels": max(areas)}
    out = processor(text=[text], return_tensors="pt", **kwargs)
    ids = out["input_ids"][0].tolist()
    if not images:
        if image_token_id in ids:
            raise TokenizationError("text has image placeholders but no images were given")
        return Encoded(ids, [], [])
    ip = processor.image_processor
    patch, merge = ip.patch_size, ip.merge_size
    grids = [tuple(int(v) for v in g) for g in out["image_grid_thw"].tolist()]
    sizes = [(g[2] * patch, g[1] * patch) for g in grids]
    if sizes != [im.size for im in images]:
        raise TokenizationError(f"the processor resized images {[im.size for im in images]} to {sizes}")
    runs = image_runs(ids, image_token_id)
    expected = [g[0] * g[1] * g[2] // merge**2 for g in grids]
    if runs != expected:
        raise TokenizationError(f"image token runs {runs} != processor's per-image counts {expected}")
    splits = [g[0] * g[1] * g[2] for g in grids]
    return Encoded(ids, list(out["pixel_values"].split(splits, dim=0)), grids)


def count_placeholders(text: str) -> int:
    """Image placeholders in rendered (unexpanded) chat text."""
    return text.count("<|image_pad|>")


def image_runs(ids: list[int], image_token_id: int) -> list[int]:
    """Lengths of the runs of image tokens in `ids`, in order (one run per image)."""
    runs, n = [], 0
    for t in ids:
        if t == image_token_id:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    if n:
        runs.append(n)
    return runs
