"""vLLM generation engine (GPU), implementing `components.engines.base.Engine`.

Behind the `gpu` extra (`pip install -e '.[gpu]' -c constraints/gpu.txt`): importing this module
never needs vllm; `VLLMEngine.from_pretrained` imports it and fails with a clear message when
it is missing. Select it with `evaluate.engine: vllm`.

The context of every episode is built exactly like the transformers engine builds it
(`components.engines.tokens`): the initial prompt's ids with expanded image placeholders, then
each turn's sampled ids as sampled, then the ids of the environment's next user turn, so the
token bookkeeping the episode records (prompt, response, mask) is the same whatever the engine.
Each turn is one vLLM request per episode: `TokensPrompt(prompt_token_ids=context,
multi_modal_data={"image": images})` (the images are already at their `smart_resize` sizes, and
the per-request processor budget spans exactly their areas, so vLLM does not resize them);
prefix caching makes the repeated context cheap. Sampling seeds are per request (the chunk's
seed, the episode's position in the call and the turn), so draws do not depend on batch order.
Log-probs are vLLM's `processed_logprobs` (after temperature), as the Engine contract asks.
Vision tokens are forbidden as in the transformers engine (`tokens.vision_token_ids`, passed as
vLLM's `logit_bias`; not yet checked on a GPU that vLLM's processed log-probs include the bias).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from components.engines import tokens
from components.engines.base import Engine, SamplingParams
from components.episode import INITIAL_PROMPT_MESSAGES, Episode, Generation

VISION_BIAS = -100.0
"""vLLM's logit_bias for the vision tokens: their probability becomes ~e^-100 of any other's, so
vLLM samples them as (never) as the transformers engine does; should one still be drawn, the
evaluation's episodes end on it as an invalid turn (components.episode)."""

GPU_EXTRA_HINT = (
    "vLLM is not installed: install the gpu extra (pip install -e '.[gpu]' -c constraints/gpu.txt)"
)


@dataclass
class _Row:
    episode: Episode
    ids: list[int] = field(default_factory=list)
    n_images: int = 0
    n_messages: int = 0
    stopped: bool = True
    turn: int = 0


class VLLMEngine(Engine):
    """See the module docstring. `llm` is a `vllm.LLM`; `processor` the model's HF processor."""

    def __init__(self, llm, processor):
        self.llm = llm
        self.processor = processor
        tok = processor.tokenizer
        self.im_end_id = tok.convert_tokens_to_ids("<|im_end|>")
        self.stop_ids = [self.im_end_id, tok.convert_tokens_to_ids("<|endoftext|>")]
        self.image_token_id = tok.convert_tokens_to_ids("<|image_pad|>")
        # the rule of tokens.forbid_vision_tokens, in vLLM's terms (its sampler is not ours)
        self.logit_bias = {i: VISION_BIAS for i in tokens.vision_token_ids(tok)}
        self._rows: dict[int, _Row] = {}

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        *,
        trust_remote_code: bool = False,
        max_images: int = 8,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        **llm_kwargs,
    ) -> VLLMEngine:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError(f"{GPU_EXTRA_HINT} ({exc})") from None
        from transformers import AutoProcessor

        llm = LLM(
            model=path,
            trust_remote_code=trust_remote_code,
            limit_mm_per_prompt={"image": max_images},
            enable_prefix_caching=True,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            logprobs_mode="processed_logprobs",
            **llm_kwargs,
        )
        return cls(llm, AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code))

    def reset(self) -> None:
        self._rows = {}

    def _extend(self, row: _Row) -> tuple[list[int], int | None]:
        """Append the environment's new ids to the row; return them and, on the first call,
        how many are the initial prompt (the transformers engine's rule, shared helpers)."""
        ep = row.episode
        if not row.ids:
            head, full = tokens.prompt_text(self.processor, ep.messages, INITIAL_PROMPT_MESSAGES)
            enc = tokens.encode(self.processor, full, ep.images, self.image_token_id)
            split = None
            if len(ep.messages) > INITIAL_PROMPT_MESSAGES:  # oracle: inserted turns follow the prompt
                n_img = tokens.count_placeholders(head)
                split = len(tokens.encode(self.processor, head, ep.images[:n_img], self.image_token_id).ids)
            delta = enc.ids
        else:
            text = tokens.delta_text(self.processor, ep.messages, row.n_messages, row.stopped)
            delta = tokens.encode(self.processor, text, ep.images[row.n_images :], self.image_token_id).ids
            split = None
        row.ids += delta
        row.n_images = len(ep.images)
        row.n_messages = len(ep.messages)
        return delta, split

    def _request(self, row: _Row, params: SamplingParams, position: int):
        from vllm import SamplingParams as VSampling
        from vllm import TokensPrompt

        images = list(row.episode.images)
        areas = [im.width * im.height for im in images]
        prompt = TokensPrompt(
            prompt_token_ids=list(row.ids),
            multi_modal_data={"image": images},
            mm_processor_kwargs={"min_pixels": min(areas), "max_pixels": max(areas)},
        )
        seed = None
        if params.temperature > 0:
            base = params.seed if params.seed is not None else 0
            seed = zlib.crc32(f"{base}:{position}:{row.turn}".encode())
        sampling = VSampling(
            temperature=params.temperature,
            max_tokens=params.max_new_tokens,
            stop_token_ids=self.stop_ids,
            logprobs=0,
            logit_bias=dict(self.logit_bias),
            seed=seed,
            skip_special_tokens=True,
        )
        return prompt, sampling

    def generate(self, episodes: Sequence[Episode], params: SamplingParams) -> list[Generation]:
        rows = []
        for ep in episodes:
            if ep.done:
                raise ValueError(f"episode {ep.record.id} is done; it cannot generate")
            rows.append(self._rows.get(id(ep)) or _Row(ep))
        self._rows = {id(r.episode): r for r in rows}
        added = [self._extend(r) for r in rows]
        requests = [self._request(r, params, i) for i, r in enumerate(rows)]
        outputs = self.llm.generate([p for p, _ in requests], [s for _, s in requests], use_tqdm=False)
        gens = []
        for row, out, (delta, split) in zip(rows, outputs, added, strict=True):
            o = out.outputs[0]
            ids = list(o.token_ids)
            lps = [_sampled_logprob(step, t) for step, t in zip(o.logprobs or [], ids, strict=False)]
            if len(lps) != len(ids):
                raise RuntimeError(f"vLLM returned {len(ids)} tokens but {len(lps)} log-probs")
            # Only a sampled <|im_end|> closes the turn; otherwise the environment inserts it.
            row.stopped = bool(ids) and ids[-1] == self.im_end_id
            row.ids += ids
            row.turn += 1
            gens.append(
                Generation(
                    text=o.text,
                    token_ids=ids,
                    logprobs=lps,
                    prompt_delta_ids=delta,
                    finish_reason="stop" if o.finish_reason == "stop" else "length",
                    prompt_split=split,
                )
            )
        return gens


def _sampled_logprob(step: dict, token_id: int) -> float:
    """vLLM's per-step logprobs map token id -> Logprob (the sampled id is always present)."""
    entry = step[token_id]
    return float(getattr(entry, "logprob", entry))
