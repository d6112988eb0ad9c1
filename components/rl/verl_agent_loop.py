"""MGPO's verl 0.9.1 agent loop: verl's rollout server drives the shared `Episode`.

verl instantiates `MGPOAgentLoop` once per sample (from the YAML `components.rl.verl_config`
writes, selected by the parquet's `agent_name` column, "mgpo_agent") and awaits `run`. The loop
holds no protocol of its own: `components.episode.Episode` decides the prompts, parses and checks
the box, crops the original and says when the episode is over. The loop only
- rebuilds the canonical record from verl's row (`extra_info` + the image bytes of `raw_prompt`);
- turns the episode's messages into tokens with verl's Continuous Token helpers
  (`ct_build_initial_tokens`, `ct_merge_assistant_token`, `ct_merge_context_msg`), so sampled ids
  are kept exactly as sampled and the environment's ids (the turn-2 user text and the crop's image
  tokens) get mask 0 and log-prob 0;
- asks the server for each turn (`server_manager.generate(request_id, prompt_ids=...,
  sampling_params=..., image_data=[every image so far])`, one request id per episode) with at
  most `episode.max_new_tokens` and never more than the response budget left;
- stops before adding an image whose tokens would pass `response_length` (verl issue #4050: an
  image cut off mid-way breaks the features-to-tokens alignment), so `multi_modal_data["images"]`
  always holds exactly the images whose tokens are in the sequence, in order;
- runs the episode's image work (building it: decoding the original and the first view; each
  step: the crop and its resize) in worker threads (`asyncio.to_thread`), never on the event
  loop that serves the worker's other episodes; decoded originals are cached per process
  (`episode.original_cache`);
- returns `AgentLoopOutput` with the final turn's text and the box validity in `extra_fields`
  (verl passes them to the reward function as `extra_info`), beside the fields verl's server
  client returns (`TokenOutput.extra_fields`), merged over turns as verl's tool loop merges them:
  the first turn's (`min_global_steps`, `global_steps`, ...), the last turn's `max_global_steps`,
  speculative-decoding counts summed. verl's V1 trainer (the default, `trainer.use_v1`) turns
  `min_global_steps`/`max_global_steps` into integers every step: dropping them crashed step 1.

Images reach verl at the episode's sizes (the first view after `smart_resize`, the crop in the crop
budget); `data.mm_processor_kwargs` (set by verl_config) spans both budgets, so neither verl's
processor nor vLLM's resizes them and a box stays in the frame the model saw.
A sampled vision token (vLLM's sampler is not ours; the local engine forbids them) makes the
turn invalid (`Episode`'s rule): the episode ends there, the turn gets mask 0 and its vision ids
are replaced by the pad id, the reward is 0 (`mgpo_invalid_turn`, recorded by the reward's
`invalid_turn`), and a warning names the sample. Nothing is retried.
Departure: when a turn is cut by the token limit before `<|im_end|>` and the episode continues,
the loop closes the turn with an `<|im_end|>` of mask 0, as the local engine does (verl's tool
loop would not).
Runs only inside verl's Ray workers; `tests/components/rl/test_verl_agent_loop.py` drives it with a
fake server manager.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput
from verl.experimental.agent_loop.tool_agent_loop import SPEC_DECODE_EXTRA_KEYS
from verl.utils.profiler import simple_timer
from verl.utils.tokenizer.continuous_token import MergeResult

from components import prompts
from components.config import EpisodeConfig
from components.data.parquet import row_to_record
from components.engines import tokens
from components.episode import Episode, Generation

logger = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
IM_END = "<|im_end|>"


def record_from_row(kwargs: dict) -> Any:
    """The canonical record behind one verl row (RLHFDataset pops `images` into `raw_prompt`)."""
    info = kwargs.get("extra_info") or {}
    rid = kwargs.get("id") or info.get("id") or "?"
    blocks = [
        c
        for m in kwargs.get("raw_prompt") or []
        if isinstance(m.get("content"), list)
        for c in m["content"]
        if isinstance(c, dict) and c.get("type") == "image"
    ]
    if not blocks or not blocks[0].get("bytes"):
        raise ValueError(f"sample {rid}: raw_prompt carries no image bytes (expected the canonical parquet)")
    row = {
        "id": rid,
        "data_source": kwargs.get("data_source") or "unknown",
        "images": [{"bytes": blocks[0]["bytes"]}],
        "extra_info": info,
    }
    return row_to_record(row, where=f"sample {rid}")


def with_images(messages: list[dict], images: list) -> list[dict]:
    """Copies of `messages` whose image blocks carry the images in order (verl's CT builder reads
    them from the blocks); fails if the counts disagree."""
    out, k = [], 0
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            blocks = []
            for c in content:
                if c.get("type") == "image":
                    if k >= len(images):
                        raise ValueError(f"{k + 1} image placeholders but {len(images)} images")
                    c = {"type": "image", "image": images[k]}
                    k += 1
                blocks.append(c)
            content = blocks
        out.append({**m, "content": content})
    if k != len(images):
        raise ValueError(f"{k} image placeholders but {len(images)} images")
    return out


def merge_server_fields(fields: dict[str, Any], turn: dict[str, Any]) -> None:
    """Fold one turn's `TokenOutput.extra_fields` into the episode's, as verl's tool loop does:
    the first turn's fields are kept, `max_global_steps` follows the latest turn, and the
    speculative-decoding counts add up."""
    if not fields:
        fields.update(turn)
        return
    if turn.get("max_global_steps") is not None:
        fields["max_global_steps"] = turn["max_global_steps"]
    for key in SPEC_DECODE_EXTRA_KEYS:
        if key in turn and key in fields:
            fields[key] = int(fields[key]) + int(turn[key])


def _templates_path(path: str) -> Path:
    # On a cluster node the job runs in its own folder and `components` arrives through
    # py_modules, so a relative templates path is looked up beside the package too.
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return PROJECT_ROOT / p


class MGPOAgentLoop(AgentLoopBase):
    """verl agent loop for MGPO episodes (see the module docstring)."""

    def __init__(
        self,
        *args,
        episode: dict | None = None,
        mode: str = "mgpo",
        first_view: list[int] | tuple[int, int] = (3136, 50176),
        max_image_pixels: int | None = None,
        tools: Any = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        from omegaconf import DictConfig, OmegaConf

        if isinstance(episode, DictConfig):
            episode = OmegaConf.to_container(episode, resolve=True)
        self.episode_cfg = EpisodeConfig.model_validate(episode or {})
        self.templates = prompts.load_templates(
            _templates_path(self.episode_cfg.templates), self.episode_cfg.template
        )
        self.mode = mode
        self.first_view = (int(first_view[0]), int(first_view[1]))
        self.max_image_pixels = None if max_image_pixels is None else int(max_image_pixels)
        self.response_length = int(self.rollout_config.response_length)
        self.vision_ids = frozenset(tokens.vision_token_ids(self.tokenizer))
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.substitute_id = (
            pad if pad is not None and pad not in self.vision_ids else self.tokenizer.eos_token_id
        )
        self.im_end_id = self.tokenizer.convert_tokens_to_ids(IM_END)
        if self.im_end_id == getattr(self.tokenizer, "unk_token_id", None):
            self.im_end_id = None

    def _finish_reason(self, token_ids: list[int], limit: int) -> str:
        stops = {self.tokenizer.eos_token_id, self.im_end_id} - {None}
        if token_ids and token_ids[-1] in stops:
            return "stop"
        return "length" if len(token_ids) >= limit else "stop"

    def _mask_invalid_turn(self, ids: list[int], mask: list[int], n: int, rid: str, ep: Episode):
        """The episode ended on an invalid turn (a sampled vision token): give the turn's last `n`
        ids mask 0 and replace its vision ids by the pad id, so neither verl's post-processing
        nor the actor reads them as image slots. Logged (one warning); the reward records `invalid_turn`."""
        ids, mask = list(ids), list(mask)
        for j in range(len(ids) - n, len(ids)):
            if ids[j] in self.vision_ids:
                ids[j] = self.substitute_id
        mask[len(mask) - n :] = [0] * n
        logger.warning(
            "sample %s: turn %d is invalid (%s); the episode ends there, masked and scored 0",
            rid,
            len(ep.turns),
            ep.invalid_turn,
        )
        return ids, mask

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        try:
            return await self._run(sampling_params, **kwargs)
        except Exception as exc:
            # Never retried here: verl's V1 worker marks the group failed and counts it
            # (`training/rollout_failure/evicted_samples`); this line names the sample and why.
            rid = kwargs.get("id") or (kwargs.get("extra_info") or {}).get("id") or "?"
            logger.warning("sample %s: rollout failed: %s: %s", rid, type(exc).__name__, str(exc)[:500])
            raise

    async def _run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        # Image work (decoding the original and the first view, later the crop and its resize)
        # runs in worker threads: on the event loop it would stall every other episode this
        # worker is serving.
        record = await asyncio.to_thread(record_from_row, kwargs)
        ep = await asyncio.to_thread(
            Episode,
            record,
            self.episode_cfg,
            self.templates,
            mode=self.mode,
            first_view=self.first_view,
            max_image_pixels=self.max_image_pixels,
            forbidden_ids=self.vision_ids,
        )
        self._assert_mm_supported(True)
        mm_kwargs = self._get_mm_processor_kwargs()
        request_id = uuid4().hex
        metrics: dict[str, Any] = {}
        shown = 1  # images whose tokens are in the sequence
        prompt_ids = await self.ct_build_initial_tokens(
            with_images(ep.messages, ep.images[:1]), images=ep.images[:1]
        )
        ids = list(prompt_ids)
        mask: list[int] = []
        # None when the server returns no log-probs (rollout.calculate_log_probs off), as verl's loops do
        logprobs: list[float] | None = None
        reported = 0  # ids already handed to the episode
        stopped = None
        num_preempted = 0
        server_fields: dict[str, Any] = {}  # the server client's extra_fields, merged over turns
        while True:
            budget = min(self.episode_cfg.max_new_tokens, self.response_length - len(mask))
            if budget <= 0:
                stopped = "response_length"
                break
            with simple_timer("generate_sequences", metrics):
                out = await self.server_manager.generate(
                    request_id=request_id,
                    prompt_ids=ids,
                    sampling_params={**sampling_params, "max_tokens": budget},
                    image_data=list(ep.images[:shown]),
                    mm_processor_kwargs=mm_kwargs,
                )
            num_preempted += out.num_preempted or 0
            merge_server_fields(server_fields, dict(out.extra_fields or {}))
            sampled = list(out.token_ids)[:budget]
            sampled_lp = list(out.log_probs)[: len(sampled)] if out.log_probs is not None else None
            if sampled_lp is not None and logprobs is None:
                logprobs = [0.0] * len(mask)
            merge, mask, logprobs = await self.ct_merge_assistant_token(
                ids, sampled, mask, logprobs, assistant_logprobs=sampled_lp
            )
            ids = merge.token_ids
            delta = ids[reported : len(ids) - merge.appended_token_count]
            reported = len(ids)
            finish = self._finish_reason(sampled, budget)
            text = self.tokenizer.decode(sampled, skip_special_tokens=True)
            n_before = len(ep.messages)
            await asyncio.to_thread(
                ep.step,
                Generation(
                    text=text,
                    token_ids=sampled,
                    logprobs=sampled_lp if sampled_lp is not None else [0.0] * len(sampled),
                    prompt_delta_ids=delta,
                    finish_reason=finish,
                ),
            )
            if ep.invalid_turn:
                ids, mask = self._mask_invalid_turn(ids, mask, merge.appended_token_count, record.id, ep)
                stopped = "invalid_turn"
                break
            if ep.done:
                break
            # The episode appended the model's turn (already in `ids` as sampled) and its next
            # user turn and image; add the user turn's tokens unless they would pass the
            # response budget (then the image is not added at all: issue #4050).
            previous = with_images(ep.messages[: n_before + 1], ep.images[:shown])
            base_ids, base_mask, base_lp = ids, mask, logprobs
            if finish == "length" and self.im_end_id is not None:
                closed = MergeResult(token_ids=[*ids, self.im_end_id], appended_token_count=1, kind="context")
                base_mask, base_lp = self.continuous_token_builder.align_response_metadata(
                    closed, mask, logprobs
                )
                base_ids = closed.token_ids
            merged, new_mask, new_lp = await self.ct_merge_context_msg(
                previous, with_images(ep.messages, ep.images), base_ids, base_mask, base_lp
            )
            if len(new_mask) >= self.response_length:
                stopped = "response_length"
                break
            ids, mask, logprobs, shown = merged.token_ids, new_mask, new_lp, len(ep.images)

        cut = len(ids) - len(mask)
        turns = [t for t in ep.turns if not t.by_env]
        first = ep.turns[0] if ep.turns and self.mode != "direct" else None
        metrics["num_preempted"] = num_preempted
        return AgentLoopOutput(
            prompt_ids=ids[:cut],
            response_ids=ids[cut:][: self.response_length],
            response_mask=mask[: self.response_length],
            response_logprobs=None if logprobs is None else logprobs[: self.response_length],
            multi_modal_data={"images": list(ep.images[:shown])},
            mm_processor_kwargs=mm_kwargs,
            num_turns=1 + len(turns) + (shown - 1),
            metrics=metrics,
            extra_fields={
                **server_fields,
                "mgpo_final_text": ep.turns[-1].text if ep.turns else "",
                "mgpo_box_valid": None if first is None else bool(first.valid),
                "mgpo_model_turns": len(turns),
                "mgpo_stopped": stopped or "done",
                "mgpo_invalid_turn": ep.invalid_turn,
                "turn_scores": [],
                "tool_rewards": [],
            },
        )
