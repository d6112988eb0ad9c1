"""Batched multi-turn generation with transformers (CPU or one GPU), continuing from the KV cache.

`TransformersEngine.generate(episodes, params)` runs one turn for a batch of episodes with a
hand-written decoding loop (transformers' `generate` cannot extend a batched cache with chunks
of different lengths that contain new images, nor return per-row log-probs of a multi-turn
context):
- batch rows are left-padded; later chunks are left-padded too, so a row's cache may hold
  masked holes (the 2-D attention mask covers every cached column);
- turn 1 encodes the whole prompt; a later turn feeds only the new chunk (the last sampled id,
  which the loop had not fed yet, plus the environment's delta, with the crop's pixels) on top
  of the previous turn's cache: no re-encoding;
- M-RoPE positions: for each row, the model's `get_rope_index` runs over the row's whole
  sequence with all its images, and the slice for the new chunk is passed as `position_ids`
  (without it transformers would give the crop's tokens text positions: the reference code's
  bug); decoding continues at max position + 1;
- sampled ids are kept as sampled; deltas come from `tokens.delta_text` (never re-tokenized);
- vision tokens (`<|image_pad|>`, `<|video_pad|>`, `<|vision_start|>`, `<|vision_end|>`) are
  never sampled: `tokens.forbid_vision_tokens`, the rule the learner's log-probs apply too;
- with `reuse_kv=False` every turn re-encodes the whole context (the same ids): the benchmark
  baseline and the check that both paths agree.
Load a bundle: `TransformersEngine.from_pretrained("models/base")`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from components.engines import tokens
from components.engines.base import Engine, SamplingParams
from components.episode import INITIAL_PROMPT_MESSAGES, Episode, Generation


@dataclass
class _Row:
    """Token state of one episode: the context ids as the model saw them, and its images."""

    episode: Episode
    ids: list[int] = field(default_factory=list)
    pixel_values: list = field(default_factory=list)
    grids: list[tuple[int, int, int]] = field(default_factory=list)
    n_messages: int = 0  # messages rendered into `ids` (the model's turn comes next)
    stopped: bool = True  # the last turn ended with a stop id
    cached: int = 0  # ids already in the KV cache
    cached_images: int = 0


def rope_positions(model, ids: list[int], grids: list[tuple[int, int, int]]) -> torch.Tensor:
    """(3, len(ids)) M-RoPE positions of one unpadded sequence with its images."""
    inner = model.model
    t = torch.tensor([ids], dtype=torch.long)
    if not grids:
        return torch.arange(len(ids)).view(1, -1).expand(3, -1)
    pos, _ = inner.get_rope_index(
        t,
        mm_token_type_ids=(t == model.config.image_token_id).int(),
        image_grid_thw=torch.tensor(grids, dtype=torch.long),
    )
    return pos[:, 0]


class TransformersEngine(Engine):
    """See the module docstring."""

    def __init__(self, model, processor, *, reuse_kv: bool = True):
        self.model = model
        self.processor = processor
        self.reuse_kv = reuse_kv
        tok = processor.tokenizer
        self.image_token_id = model.config.image_token_id
        self.vision_ids = tokens.vision_token_ids(tok)  # never sampled (tokens.forbid_vision_tokens)
        self.stop_ids = {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}
        self.im_end_id = tok.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = (
            tok.pad_token_id if tok.pad_token_id is not None else tok.convert_tokens_to_ids("<|endoftext|>")
        )
        self.device = next(model.parameters()).device
        self._rows: dict[int, _Row] = {}
        self._cache = None  # (row keys in batch order, DynamicCache, attention mask)
        self._generator: torch.Generator | None = None
        self._batches = 0  # batches started; each gets its own sampling stream

    @classmethod
    def from_pretrained(
        cls, path: str, *, device: str = "cpu", dtype: str = "float32", trust_remote_code: bool = False, **kw
    ) -> TransformersEngine:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code
        ).to(device)
        return cls(model, processor, **kw)

    def _stream_seed(self, seed: int | None, rows) -> int:
        """The batch's sampling seed. With a seed it depends only on the seed and the batch's
        record ids (so a resumed or re-chunked run samples the same); without one, batches
        of this engine get successive streams."""
        if seed is None:
            return self._batches
        key = f"{seed}|" + "|".join(str(getattr(r.episode.record, "id", "")) for r in rows)
        return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)

    def reset(self) -> None:
        """Forget rows and caches (the sampling stream counter goes on, so batches differ)."""
        self._rows, self._cache, self._generator = {}, None, None

    # ----------------------------------------------------------------------- context ids

    def _extend(self, row: _Row) -> tuple[list[int], int | None]:
        """Append the environment's new ids (and images) to the row; return them and, on the
        first call, how many of them are the initial prompt."""
        ep = row.episode
        if not row.ids:
            head, full = tokens.prompt_text(self.processor, ep.messages, INITIAL_PROMPT_MESSAGES)
            enc = tokens.encode(self.processor, full, ep.images, self.image_token_id)
            split = None
            if len(ep.messages) > INITIAL_PROMPT_MESSAGES:  # oracle: inserted turns follow the prompt
                n_img = tokens.count_placeholders(head)
                split = len(tokens.encode(self.processor, head, ep.images[:n_img], self.image_token_id).ids)
            delta, images = enc, ep.images
        else:
            text = tokens.delta_text(self.processor, ep.messages, row.n_messages, row.stopped)
            images = ep.images[len(row.grids) :]
            delta, split = tokens.encode(self.processor, text, images, self.image_token_id), None
        if len(delta.grids) != len(images):
            raise tokens.TokenizationError(f"{len(images)} new images but {len(delta.grids)} placeholders")
        row.ids += delta.ids
        row.pixel_values += delta.pixel_values
        row.grids += delta.grids
        row.n_messages = len(ep.messages)
        return delta.ids, split

    # --------------------------------------------------------------------------- forward

    def _batch_state(self, rows: list[_Row]):
        """Continue the cached batch (selecting the surviving rows) or start a fresh one."""
        keys = [id(r.episode) for r in rows]
        if self.reuse_kv and self._cache is not None:
            old_keys, cache, attn = self._cache
            if set(keys) <= set(old_keys):
                idx = torch.tensor([old_keys.index(k) for k in keys], device=self.device)
                cache.batch_select_indices(idx)
                return cache, attn[idx]
        for r in rows:
            r.cached, r.cached_images = 0, 0
        return None, None

    def _prefill(self, rows: list[_Row], cache, attn):
        chunks = [r.ids[r.cached :] for r in rows]
        width = max(len(c) for c in chunks)
        b = len(rows)
        input_ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        pos = torch.zeros((3, b, width), dtype=torch.long)
        next_pos = []
        pixels, grids = [], []
        for i, (r, c) in enumerate(zip(rows, chunks, strict=True)):
            input_ids[i, width - len(c) :] = torch.tensor(c)
            mask[i, width - len(c) :] = 1
            full = rope_positions(self.model, r.ids, r.grids)
            pos[:, i, width - len(c) :] = full[:, r.cached :]
            next_pos.append(int(full.max()) + 1)
            pixels += r.pixel_values[r.cached_images :]
            grids += r.grids[r.cached_images :]
            r.cached, r.cached_images = len(r.ids), len(r.grids)
        mask = mask.to(self.device)
        attn = mask if attn is None else torch.cat([attn, mask], dim=1)
        kwargs = {}
        if pixels:
            kwargs = {
                "pixel_values": torch.cat(pixels).to(self.device, self.model.dtype),
                "image_grid_thw": torch.tensor(grids, dtype=torch.long, device=self.device),
            }
        if cache is None:
            from transformers import DynamicCache

            cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attn,
            position_ids=pos.to(self.device),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        return out.logits[:, -1].float(), out.past_key_values, attn, next_pos

    # -------------------------------------------------------------------------- generate

    def generate(self, episodes: Sequence[Episode], params: SamplingParams) -> list[Generation]:
        # A trainer may hand in its model in train mode: generate in eval mode, then restore.
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                return self._generate(episodes, params)
        finally:
            self.model.train(was_training)

    def _generate(self, episodes: Sequence[Episode], params: SamplingParams) -> list[Generation]:
        rows = []
        for ep in episodes:
            if ep.done:
                raise ValueError(f"episode {ep.record.id} is done; it cannot generate")
            rows.append(self._rows.get(id(ep)) or _Row(ep))
        self._rows = {id(r.episode): r for r in rows}  # the call's episodes are the working set
        if all(not r.ids for r in rows):  # a new batch: a new sampling stream
            self._batches += 1
            self._generator = torch.Generator(device=self.device)
            self._generator.manual_seed(self._stream_seed(params.seed, rows))
        added = [self._extend(r) for r in rows]
        cache, attn = self._batch_state(rows)
        logits, cache, attn, next_pos = self._prefill(rows, cache, attn)

        b = len(rows)
        out_ids: list[list[int]] = [[] for _ in range(b)]
        out_lp: list[list[float]] = [[] for _ in range(b)]
        finished = [False] * b
        for _ in range(params.max_new_tokens):
            # The learner's log-probs apply the same rule at the same temperature (logprobs.py).
            scaled = logits / params.temperature if params.temperature > 0 else logits.clone()
            logp = torch.log_softmax(tokens.forbid_vision_tokens(scaled, self.vision_ids), dim=-1)
            if params.temperature > 0:
                picked = torch.multinomial(logp.exp(), 1, generator=self._generator).squeeze(1)
            else:
                picked = logp.argmax(-1)
            live = [i for i in range(b) if not finished[i]]
            for i in live:
                t = int(picked[i])
                out_ids[i].append(t)
                out_lp[i].append(float(logp[i, t]))
                if t in self.stop_ids or len(out_ids[i]) >= params.max_new_tokens:
                    finished[i] = True
            if all(finished):
                break
            # Feed this step's ids; rows that had finished earlier feed a masked pad.
            feed = torch.full((b, 1), self.pad_id, dtype=torch.long)
            col = torch.zeros((b, 1), dtype=torch.long)
            pos = torch.zeros((3, b, 1), dtype=torch.long)
            for i in live:
                feed[i, 0] = out_ids[i][-1]
                col[i, 0] = 1
                pos[:, i, 0] = next_pos[i] + len(out_ids[i]) - 1
                rows[i].cached += 1
            attn = torch.cat([attn, col.to(self.device)], dim=1)
            out = self.model(
                input_ids=feed.to(self.device),
                attention_mask=attn,
                position_ids=pos.to(self.device),
                past_key_values=cache,
                use_cache=True,
            )
            logits, cache = out.logits[:, -1].float(), out.past_key_values
        self._cache = ([id(r.episode) for r in rows], cache, attn)

        gens = []
        tok = self.processor.tokenizer
        for r, ids, lps, (delta, split) in zip(rows, out_ids, out_lp, added, strict=True):
            ended = bool(ids) and ids[-1] in self.stop_ids
            # Only <|im_end|> closes the turn in the template; after any other end the
            # environment inserts <|im_end|> itself (mask 0).
            r.stopped = bool(ids) and ids[-1] == self.im_end_id
            r.ids += ids  # the last id may not be in the cache yet: the next chunk starts with it
            gens.append(
                Generation(
                    text=tok.decode(ids, skip_special_tokens=True),
                    token_ids=ids,
                    logprobs=lps,
                    prompt_delta_ids=delta,
                    finish_reason="stop" if ended else "length",
                    prompt_split=split,
                )
            )
        return gens

    # ------------------------------------------------------------------------- checking

    @torch.no_grad()
    def sequence_logprobs(self, prompt_ids: list[int], response_ids: list[int], images) -> list[float]:
        """Log-probs of every response id from ONE full forward over prompt + response with all
        images (M-RoPE positions over the whole sequence): the re-encode reference that KV-cached
        generation must match, and what a trainer computes."""
        ids = list(prompt_ids) + list(response_ids)
        enc_images = [
            tokens.encode(
                self.processor, "<|vision_start|><|image_pad|><|vision_end|>", [im], self.image_token_id
            )
            for im in images
        ]
        pixels = [p for e in enc_images for p in e.pixel_values]
        grids = [g for e in enc_images for g in e.grids]
        pos = rope_positions(self.model, ids, grids).unsqueeze(1)
        kwargs = {}
        if pixels:
            kwargs = {
                "pixel_values": torch.cat(pixels).to(self.device, self.model.dtype),
                "image_grid_thw": torch.tensor(grids, dtype=torch.long, device=self.device),
            }
        out = self.model(
            input_ids=torch.tensor([ids], device=self.device),
            position_ids=pos.to(self.device),
            use_cache=False,
            **kwargs,
        )
        start = len(prompt_ids)
        targets = torch.tensor(ids[start:], device=self.device)
        logits = out.logits[0, start - 1 : len(ids) - 1].float().clone()
        return tokens.target_logprobs(logits, targets, self.vision_ids).tolist()
