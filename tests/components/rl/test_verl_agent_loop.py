"""MGPO's verl agent loop, driven by a fake server manager with the real tiny tokenizer/processor.

The rows come from a canonical parquet (the data stage's writer) through verl's own
`RLHFDataset`; the loop is instantiated from the YAML the stage writes, exactly as verl's
`AgentLoopWorker` does, with a config composed from the stage's overrides; its output goes
through verl's own post-processing (multimodal inputs, M-RoPE positions).

The fake server stands in for vLLM (no CPU rollout replica exists in verl 0.9.1): it returns
scripted token ids and log-probs. Only a GPU run shows that vLLM accepts two images per prompt
at these sizes, that the sampled log-probs match the FSDP actor's recomputed ones, and that
training on these trajectories moves the policy.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import hydra
import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker, DictConfigWrap, ToolListWrap
from verl.utils import hf_processor
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput
from verl_fixtures import bundle, canonical_parquet, params

from components import grounding as g
from components import prompts
from components.engines.tokens import encode, image_runs, render
from components.rl import verl_config as vc
from components.rl.verl_reward import compute_score

IMG = "<|image_pad|>"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tiny = bundle(tmp_path_factory.getbasetemp() / "verl_tiny_bundle")
    tmp = tmp_path_factory.mktemp("agent_loop")
    p = params()
    data, records = canonical_parquet(tmp / "train.parquet", p, "train", 4)
    processor = hf_processor(str(tiny))
    return {"tiny": tiny, "tmp": tmp, "data": data, "records": records, "processor": processor}


class FakeServer:
    """Stands in for verl's LLM server client: scripted replies, recorded requests."""

    def __init__(self, tokenizer, replies: list[str], logprob: float | None = -0.25, first_step: int = 7):
        self.tok, self.replies, self.logprob = tokenizer, list(replies), logprob
        self.calls: list[dict] = []
        self.sampled: list[list[int]] = []
        self.step = first_step  # the weights version; it moves on between turns (async weight sync)

    async def generate(self, request_id, *, prompt_ids, sampling_params, image_data=None, **kwargs):
        self.calls.append(
            {
                "request_id": request_id,
                "prompt_ids": list(prompt_ids),
                "images": list(image_data or []),
                **sampling_params,
            }
        )
        ids = self.tok.encode(self.replies.pop(0), add_special_tokens=False)
        ids = [*ids, self.tok.convert_tokens_to_ids("<|im_end|>")][: sampling_params["max_tokens"]]
        self.sampled.append(ids)
        logprobs = None if self.logprob is None else [self.logprob] * len(ids)
        # as verl 0.9.1's LLMServerClient.generate returns them (llm_server.py)
        extra = {
            "global_steps": self.step,
            "min_global_steps": self.step,
            "max_global_steps": self.step,
            "num_cached_tokens": 0,
        }
        self.step += 1
        return TokenOutput(token_ids=ids, log_probs=logprobs, stop_reason="completed", extra_fields=extra)


def run_loop(env, p, replies: list[str], row: int = 0, logprob: float | None = -0.25):
    """Compose the stage's config for `p`, load a row with verl's dataset, run our loop once."""
    tmp, processor = env["tmp"], env["processor"]
    yaml_path = vc.write_agent_loop_config(p, tmp / f"agent_loop_{p.rl.mode}.yaml")
    inputs = vc.VerlInputs(
        str(env["tiny"]), str(env["data"]), str(env["data"]), str(yaml_path), str(tmp / "ck")
    )
    # rendered as verl_launch.prepare_job renders them (user extra_overrides last)
    cfg = vc.compose_main_ppo(vc.render(vc.main_ppo_overrides(p, inputs), p.rl.verl.extra_overrides))
    sample = RLHFDataset(str(env["data"]), processor.tokenizer, cfg.data, processor)[row]
    kwargs = {k: v for k, v in sample.items() if k != "dummy_tensor"}
    server = FakeServer(processor.tokenizer, replies, logprob)
    entry = OmegaConf.load(yaml_path)[0]

    async def go():
        # instantiated as verl's AgentLoopWorker._run_agent_loop does, inside the running loop
        loop = hydra.utils.instantiate(
            config=entry,
            trainer_config=DictConfigWrap(config=cfg),
            server_manager=server,
            tokenizer=processor.tokenizer,
            processor=processor,
            hf_model_type="qwen2_5_vl",
            dataset_cls=RLHFDataset,
            data_config=DictConfigWrap(cfg.data),
            tools=ToolListWrap([]),
        )
        return await loop.run({"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}, **kwargs)

    return asyncio.run(go()), server, cfg, kwargs


def box_around_target(p, record, pad: int = 12) -> str:
    seen = g.seen_size(record.width, record.height, p.model.min_pixels, p.model.max_pixels)
    x1, y1, x2, y2 = g.to_seen(tuple(record.target_boxes[0]), seen, (record.width, record.height))
    box = (max(0, x1 - pad), max(0, y1 - pad), min(seen[0], x2 + pad), min(seen[1], y2 + pad))
    return prompts.render_box(prompts.load_templates(p.episode.templates, p.episode.template), box)


def per_image_tokens(processor, images) -> list[int]:
    kw = {
        "min_pixels": min(i.width * i.height for i in images),
        "max_pixels": max(i.width * i.height for i in images),
    }
    grids = processor.image_processor(images=images, return_tensors="pt", **kw)["image_grid_thw"]
    return [int(t * h * w) // processor.image_processor.merge_size**2 for t, h, w in grids.tolist()]


def test_two_turns_mask_images_and_tokens(env):
    """Valid box: the mask is 1 exactly on the fake model's ids, the crop's image tokens sit in
    the response with mask 0, both images reach the server and `multi_modal_data` in order, and
    the ids equal the processor's rendering of the whole conversation (the local engine's way)."""
    p = params()
    rec = env["records"][0]
    turn1, turn2 = box_around_target(p, rec), f"Looking closer. \\boxed{{{rec.answer}}}"
    out, server, _, _ = run_loop(env, p, [turn1, turn2])
    s1, s2 = server.sampled
    tok = env["processor"].tokenizer
    pad = tok.convert_tokens_to_ids(IMG)

    ctx = len(out.response_ids) - len(s1) - len(s2)
    assert ctx > 0
    assert out.response_mask == [1] * len(s1) + [0] * ctx + [1] * len(s2)
    assert out.response_ids[: len(s1)] == s1 and out.response_ids[-len(s2) :] == s2
    assert out.response_logprobs == [-0.25] * len(s1) + [0.0] * ctx + [-0.25] * len(s2)

    images = out.multi_modal_data["images"]
    assert len(images) == 2
    first, crop = images
    assert first.size == g.seen_size(rec.width, rec.height, p.model.min_pixels, p.model.max_pixels)
    assert crop.size != first.size  # the crop, cut from the original
    assert p.episode.crop_min_pixels <= crop.width * crop.height <= p.episode.crop_max_pixels
    n1, n2 = per_image_tokens(env["processor"], images)
    assert image_runs(out.prompt_ids, pad) == [n1]
    assert image_runs(out.response_ids, pad) == [n2]
    assert all(m == 0 for i, m in zip(out.response_ids, out.response_mask, strict=True) if i == pad)

    # the server saw the first view, then both images, and the growing context
    assert [len(c["images"]) for c in server.calls] == [1, 2]
    assert server.calls[1]["images"][0] is server.calls[0]["images"][0]
    assert server.calls[1]["prompt_ids"] == out.prompt_ids + out.response_ids[: len(s1) + ctx]
    assert len({c["request_id"] for c in server.calls}) == 1
    assert all(c["max_tokens"] == p.episode.max_new_tokens for c in server.calls)

    # the same ids the local engine's tokenization gives for this conversation
    t = prompts.load_templates(p.episode.templates, p.episode.template)
    messages = [
        *prompts.turn1_messages(t, rec.question),
        prompts.assistant_message(tok.decode(s1, skip_special_tokens=True)),
        prompts.followup_message(t, rec.question, list(rec.options), valid=True),
        prompts.assistant_message(tok.decode(s2, skip_special_tokens=True)),
    ]
    whole = encode(env["processor"], render(env["processor"], messages, False), images, pad).ids
    assert out.prompt_ids + out.response_ids == whole[: len(out.prompt_ids) + len(out.response_ids)]

    assert out.extra_fields["mgpo_box_valid"] is True
    assert out.extra_fields["mgpo_final_text"] == tok.decode(s2, skip_special_tokens=True)
    assert out.num_turns == 4


def test_verl_postprocess_accepts_the_output(env):
    """verl's own post-processing rebuilds the pixel inputs from the decoded ids and the images
    (so the image-pad counts must match the features) and computes M-RoPE positions in which the
    crop's tokens get 2-D (height, width) positions, not the reference code's 1-D ones."""
    p = params()
    rec = env["records"][0]
    out, _, cfg, kwargs = run_loop(env, p, [box_around_target(p, rec), "\\boxed{A}"])
    worker = object.__new__(AgentLoopWorker)  # only the post-processing state, no Ray actor
    worker.processor, worker.tokenizer = env["processor"], env["processor"].tokenizer
    worker.rollout_config = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    worker.mm_processor_kwargs = cfg.data.mm_processor_kwargs
    worker.reward_loop_worker_handles, worker.distillation_enabled = None, False
    res = asyncio.run(worker._agent_loop_postprocess(out, False, **kwargs))

    grids = res.multi_modal_inputs["image_grid_thw"].tolist()
    assert [tuple(gr) for gr in grids] == [
        (1, im.height // 14, im.width // 14) for im in out.multi_modal_data["images"]
    ]
    assert res.multi_modal_inputs["pixel_values"].shape[0] == sum(t * h * w for t, h, w in grids)
    pad = worker.tokenizer.convert_tokens_to_ids(IMG)
    ids = res.input_ids[0]
    assert int((ids == pad).sum()) == sum(t * h * w // 4 for t, h, w in grids)
    assert res.position_ids.shape == (1, 4, ids.shape[0])
    crop_run = (ids == pad).nonzero().flatten()[-grids[1][1] * grids[1][2] // 4 :]
    hw = res.position_ids[0, 2:, crop_run]
    assert hw[0].unique().numel() == grids[1][1] // 2 and hw[1].unique().numel() == grids[1][2] // 2
    assert int(res.response_mask.sum()) == sum(out.response_mask)


def test_stops_before_an_image_past_response_length(env):
    """verl issue #4050: when the crop's turn would not fit in `response_length`, the episode ends
    after turn 1 and the crop is never added (tokens or image)."""
    p = params("rl.verl.response_length=128", "rl.verl.prompt_length=1024")
    rec = env["records"][0]
    out, server, _, _ = run_loop(env, p, [box_around_target(p, rec), "\\boxed{A}"])
    (s1,) = server.sampled
    assert out.response_ids == s1 and out.response_mask == [1] * len(s1)
    assert len(out.multi_modal_data["images"]) == 1
    pad = env["processor"].tokenizer.convert_tokens_to_ids(IMG)
    assert pad not in out.response_ids
    assert out.extra_fields["mgpo_stopped"] == "response_length"
    assert out.extra_fields["mgpo_final_text"] == env["processor"].tokenizer.decode(
        s1, skip_special_tokens=True
    )
    assert len(server.calls) == 1


def test_cut_turn_is_closed_and_invalid_box_shows_the_first_view_again(env):
    """Turn 1 cut at `max_new_tokens` (no box): the loop closes it with <|im_end|> (mask 0), the
    episode's invalid-box turn shows the first view again, so both images are that view."""
    p = params("episode.max_new_tokens=10")
    rec = env["records"][1]
    out, server, _, _ = run_loop(env, p, [box_around_target(p, rec), "\\boxed{B}"], row=1)
    s1, s2 = server.sampled
    tok = env["processor"].tokenizer
    assert len(s1) == 10 and s1[-1] != tok.convert_tokens_to_ids("<|im_end|>")
    assert out.response_ids[10] == tok.convert_tokens_to_ids("<|im_end|>") and out.response_mask[10] == 0
    assert sum(out.response_mask) == len(s1) + len(s2)
    first, again = out.multi_modal_data["images"]
    assert again is first
    assert out.extra_fields["mgpo_box_valid"] is False
    text = tok.decode(out.response_ids, skip_special_tokens=False)
    assert "Not providing correct coordinates" in text


def test_a_sampled_vision_token_ends_the_episode_as_an_invalid_turn(env, caplog):
    """vLLM's sampler is not ours: a sampled `<|image_pad|>` in turn 1 would be read as an image
    slot by the next turn's M-RoPE and by verl's post-processing. The loop ends the episode there:
    the turn is masked, its vision ids are replaced (mask 0), the reward is 0, and it is logged."""
    p = params()
    rec = env["records"][0]
    tok = env["processor"].tokenizer
    pad = tok.convert_tokens_to_ids(IMG)
    turn1 = box_around_target(p, rec) + IMG
    with caplog.at_level("WARNING"):
        out, server, cfg, kwargs = run_loop(env, p, [turn1, f"\\boxed{{{rec.answer}}}"])
    (s1,) = server.sampled
    assert pad in s1 and len(server.calls) == 1  # no second turn
    assert pad not in out.response_ids and len(out.response_ids) == len(s1)
    assert out.response_mask == [0] * len(s1)
    assert out.extra_fields["mgpo_invalid_turn"] == "sampled_vision_token"
    assert out.extra_fields["mgpo_stopped"] == "invalid_turn"
    assert len(out.multi_modal_data["images"]) == 1
    assert any("sampled_vision_token" in r.getMessage() for r in caplog.records)
    # verl's post-processing takes it (image pads match the one image)
    worker = _postprocess_worker(AgentLoopWorker, env, cfg)
    res = asyncio.run(worker._agent_loop_postprocess(out, False, **kwargs))
    assert int(res.response_mask.sum()) == 0
    info = {"options": list(rec.options), **out.extra_fields}
    scored = compute_score("synthetic", tok.decode(out.response_ids), rec.answer, info)
    assert scored["score"] == 0.0 and scored["invalid_turn"] == 1.0


def test_episode_work_runs_off_the_event_loop(env, monkeypatch):
    """Building the episode (decoding the original, the first view) and each step (crop, resize)
    run in worker threads, so one episode's image work never stalls the worker's other loops."""
    import threading

    from components.rl import verl_agent_loop as loop_module

    threads: dict[str, set] = {"init": set(), "step": set()}

    class Spy(loop_module.Episode):
        def __init__(self, *a, **k):
            threads["init"].add(threading.get_ident())
            super().__init__(*a, **k)

        def step(self, gen):
            threads["step"].add(threading.get_ident())
            return super().step(gen)

    monkeypatch.setattr(loop_module, "Episode", Spy)
    p = params()
    rec = env["records"][0]
    out, server, _, _ = run_loop(env, p, [box_around_target(p, rec), "\\boxed{A}"])
    assert len(server.calls) == 2 and out.extra_fields["mgpo_box_valid"] is True
    main = threading.get_ident()  # asyncio.run ran the event loop in this thread
    assert threads["init"] and main not in threads["init"]
    assert len(threads["step"]) >= 1 and main not in threads["step"]


def test_a_failing_rollout_is_logged_with_its_reason_and_not_retried(env, caplog):
    """A server error reaches verl (its V1 worker marks the group failed and counts it) after one
    warning naming the sample and the reason; the loop does not ask the server again."""

    class Broken(FakeServer):
        async def generate(self, request_id, **kwargs):
            self.calls.append(request_id)
            raise RuntimeError("vLLM engine died")

    p = params()
    tmp, processor = env["tmp"], env["processor"]
    yaml_path = vc.write_agent_loop_config(p, tmp / "agent_loop_broken.yaml")
    inputs = vc.VerlInputs(
        str(env["tiny"]), str(env["data"]), str(env["data"]), str(yaml_path), str(tmp / "ck")
    )
    cfg = vc.compose_main_ppo(vc.render(vc.main_ppo_overrides(p, inputs)))
    sample = RLHFDataset(str(env["data"]), processor.tokenizer, cfg.data, processor)[0]
    kwargs = {k: v for k, v in sample.items() if k != "dummy_tensor"}
    server = Broken(processor.tokenizer, [])

    async def go():  # instantiated inside the running loop, as verl's worker does
        loop = hydra.utils.instantiate(
            config=OmegaConf.load(yaml_path)[0],
            trainer_config=DictConfigWrap(config=cfg),
            server_manager=server,
            tokenizer=processor.tokenizer,
            processor=processor,
            hf_model_type="qwen2_5_vl",
            dataset_cls=RLHFDataset,
            data_config=DictConfigWrap(cfg.data),
            tools=ToolListWrap([]),
        )
        return await loop.run({"temperature": 1.0}, **kwargs)

    with caplog.at_level("WARNING"), pytest.raises(RuntimeError, match="vLLM engine died"):
        asyncio.run(go())
    assert len(server.calls) == 1
    assert any("rollout failed: RuntimeError: vLLM engine died" in r.getMessage() for r in caplog.records)


def test_direct_mode_is_one_turn_with_choices(env):
    """Also: a server without log-probs (rollout.calculate_log_probs off) gives None, as in verl."""
    p = params("rl.mode=direct")
    rec = env["records"][0]
    out, server, _, _ = run_loop(env, p, [f"\\boxed{{{rec.answer}}}"], logprob=None)
    assert out.response_logprobs is None
    assert len(server.calls) == 1 and len(out.multi_modal_data["images"]) == 1
    assert out.response_mask == [1] * len(server.sampled[0])
    assert "(A)" in env["processor"].tokenizer.decode(out.prompt_ids)
    assert out.extra_fields["mgpo_box_valid"] is None


def test_reward_on_a_real_decoded_response_scores_only_the_final_turn(env):
    """verl's reward manager decodes the whole response with special tokens skipped; a right
    letter boxed in turn 1 (and the template's own `\\boxed{}`) must not count."""
    p = params()
    rec = env["records"][0]
    wrong = next(letter for letter in "ABCD"[: len(rec.options)] if letter != rec.answer)
    turn1 = box_around_target(p, rec) + f" \\boxed{{{rec.answer}}}"
    out, _, _, _ = run_loop(env, p, [turn1, f"I think \\boxed{{{wrong}}}"])
    tok = env["processor"].tokenizer
    solution = tok.decode(out.response_ids, skip_special_tokens=True)
    assert f"\\boxed{{{rec.answer}}}" in solution and "\\boxed{}" in solution
    info = {"options": list(rec.options)}
    assert compute_score("synthetic", solution, rec.answer, info)["score"] == 0.0
    assert compute_score("synthetic", solution, rec.answer, {**info, **out.extra_fields})["score"] == 0.0
    assert compute_score("synthetic", solution, wrong, {**info, **out.extra_fields})["score"] == 1.0


class FakeTransferQueue:
    """In-memory stand-in for verl's TransferQueue client (`transfer_queue` needs its Ray
    controller): stores what the V1 worker puts, hands fields back as the trainer reads them."""

    def __init__(self):
        self.keys, self.tags, self.fields = [], [], None

    async def async_kv_batch_put(self, keys, fields, tags, partition_id):
        self.keys, self.tags, self.fields = list(keys), list(tags), fields

    def kv_batch_get(self, keys, partition_id, select_fields):
        # TransferQueue stores samples one by one and returns a batch of per-sample tensors as
        # jagged nested tensors (the trainer reads `.offsets()`)
        out = {}
        for f in select_fields:
            if f not in self.fields:
                continue
            v = self.fields[f]
            if isinstance(v, torch.Tensor) and not v.is_nested and v.dim() >= 2:
                v = torch.nested.as_nested_tensor(list(v.unbind(0)), layout=torch.jagged)
            out[f] = v
        return TensorDict(out, batch_size=self.fields.batch_size)


def _postprocess_worker(cls, env, cfg):
    worker = object.__new__(cls)  # only the post-processing state, no Ray actor
    worker.processor, worker.tokenizer = env["processor"], env["processor"].tokenizer
    worker.config = cfg
    worker.rollout_config = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    worker.mm_processor_kwargs = cfg.data.mm_processor_kwargs
    worker.reward_loop_worker_handles, worker.distillation_enabled = None, False
    return worker


@pytest.mark.parametrize("use_v1", [True, False])
def test_trainer_postprocess_and_step_metrics_keep_the_servers_global_steps(env, monkeypatch, use_v1):
    """verl 0.9.1's default V1 trainer copies the loop's `extra_fields` min/max_global_steps into
    per-trajectory tags and `_compute_metrics` makes them ints every step: the loop must keep the
    server's fields (first turn's min, last turn's max). Drives the worker class the composed
    config selects (`trainer.use_v1`), then the trainer's own metric computation."""
    import numpy as np
    import transfer_queue
    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopWorkerTQ

    extra = [] if use_v1 else ["trainer.use_v1=false"]
    p = params(f"rl.verl.extra_overrides={extra!r}".replace("'", ""))
    rec = env["records"][0]
    out, _, cfg, kwargs = run_loop(env, p, [box_around_target(p, rec), "\\boxed{A}"])
    assert bool(cfg.trainer.use_v1) is use_v1  # what main_ppo.main branches on
    assert out.extra_fields["mgpo_box_valid"] is True  # ours, beside the server's

    if not use_v1:  # legacy main_ppo_v0: AgentLoopWorker pads, then collates a DataProto
        worker = _postprocess_worker(AgentLoopWorker, env, cfg)
        res = asyncio.run(worker._agent_loop_postprocess(out, False, **kwargs))
        batch = worker._postprocess([res])
        assert np.array(batch.non_tensor_batch["min_global_steps"], dtype=int).tolist() == [7]
        assert np.array(batch.non_tensor_batch["max_global_steps"], dtype=int).tolist() == [8]
        return

    fake = FakeTransferQueue()
    monkeypatch.setattr(transfer_queue, "async_kv_batch_put", fake.async_kv_batch_put)
    monkeypatch.setattr(transfer_queue, "kv_batch_get", fake.kv_batch_get)
    # a Ray actor class: its plain class holds the methods
    worker = _postprocess_worker(AgentLoopWorkerTQ.__ray_actor_class__, env, cfg)
    asyncio.run(worker._agent_loop_postprocess(out, False, uid="u0", session_id=0, global_steps=8, **kwargs))
    (tag,) = fake.tags
    assert (tag["min_global_steps"], tag["max_global_steps"]) == (7, 8)

    # the trainer adds scores and advantages before its metrics; zeros of the response's shape
    responses = fake.fields["responses"]
    zeros = [torch.zeros(len(r), dtype=torch.float32) for r in responses.unbind(0)]
    for key in ("rm_scores", "token_level_rewards", "advantages", "returns"):
        fake.fields[key] = torch.nested.as_nested_tensor(zeros, layout=torch.jagged)
    trainer = object.__new__(get_trainer_cls(cfg.trainer.v1.trainer_mode))
    trainer.config, trainer.use_critic = cfg, False
    trainer._rollout_moe_lb_metrics_accumulator = None
    monkeypatch.setattr(type(trainer), "_get_n_gpus_for_throughput", lambda self: 1)
    meta = SimpleNamespace(keys=fake.keys, tags=fake.tags, partition_id="train")
    metrics: dict = {}
    trainer._compute_metrics(meta, metrics, {"step": 1.0, "gen": 0.5}, global_steps=9, epoch=0)
    assert metrics["training/off_policy/trajectory_spans/mean"] == 2
    assert metrics["training/off_policy/trajectory_staleness/mean"] == 0
    assert out.extra_fields["global_steps"] == 7 and out.extra_fields["num_cached_tokens"] == 0
