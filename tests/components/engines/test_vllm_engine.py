"""The vLLM engine: importable without vllm; its token bookkeeping checked against the
transformers engine through a stand-in `vllm` module; the real thing only where vllm and a GPU are.

vLLM cannot be installed here (no GPU, and its pins clash with the CPU stack, see STACK.md), so
the middle test installs a fake `vllm` module whose `LLM.generate` decodes greedily with the
real tiny model by full forwards over exactly the token ids and images the engine sends. Both
engines must then produce the same turns, ids and contexts: the engine builds vLLM requests
exactly as the transformers engine builds its context.
"""

from __future__ import annotations

import importlib
import shutil
import sys
import types
from dataclasses import dataclass

import pytest
import torch

from components.engines import tokens
from components.engines.base import Engine, SamplingParams, run_episodes
from components.engines.transformers_engine import TransformersEngine, rope_positions
from components.episode import Episode
from components.prompts import load_templates, render_box

T = load_templates("components/templates.yaml", "paper")


def test_importing_the_project_never_needs_vllm():
    """Every module of components/ and the evaluate flow import without pulling vllm in."""
    import pkgutil

    import components

    names = [m.name for m in pkgutil.walk_packages(components.__path__, "components.")]
    assert "components.engines.vllm_engine" in names
    for name in [*names, "flows.evaluate"]:
        importlib.import_module(name)
    assert "vllm" not in sys.modules


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_missing_vllm_names_the_gpu_extra(bundle):
    from components.engines.vllm_engine import VLLMEngine

    with pytest.raises(ImportError, match=r"gpu extra"):
        VLLMEngine.from_pretrained(str(bundle))


# ------------------------------------------------------------------ a stand-in for vllm


@dataclass
class FakeSampling:
    temperature: float
    max_tokens: int
    stop_token_ids: list
    logprobs: int
    logit_bias: dict
    seed: int | None
    skip_special_tokens: bool


def fake_vllm_module(model, processor, calls: list) -> types.ModuleType:
    image_token_id = model.config.image_token_id

    class LLM:
        @torch.no_grad()
        def generate(self, prompts, samplings, use_tqdm=False):
            outs = []
            for prompt, sp in zip(prompts, samplings, strict=True):
                calls.append(prompt)
                ids = list(prompt["prompt_token_ids"])
                images = prompt["multi_modal_data"]["image"]
                enc = [
                    tokens.encode(
                        processor, "<|vision_start|><|image_pad|><|vision_end|>", [im], image_token_id
                    )
                    for im in images
                ]
                pixels = torch.cat([p for e in enc for p in e.pixel_values])
                grids = [g for e in enc for g in e.grids]
                assert tokens.image_runs(ids, image_token_id) == [g[1] * g[2] // 4 for g in grids]
                new, lps = [], []
                for _ in range(sp.max_tokens):
                    seq = ids + new
                    out = model(
                        input_ids=torch.tensor([seq]),
                        position_ids=rope_positions(model, seq, grids).unsqueeze(1),
                        pixel_values=pixels,
                        image_grid_thw=torch.tensor(grids),
                        use_cache=False,
                    )
                    logits = out.logits[0, -1].float().clone()
                    for token, bias in sp.logit_bias.items():  # as vLLM's logit_bias processor does
                        logits[token] += bias
                    logp = torch.log_softmax(logits, -1)
                    t = int(logp.argmax())
                    new.append(t)
                    lps.append({t: types.SimpleNamespace(logprob=float(logp[t]))})
                    if t in sp.stop_token_ids:
                        break
                stop = bool(new) and new[-1] in sp.stop_token_ids
                text = processor.tokenizer.decode(new, skip_special_tokens=True)
                outs.append(
                    types.SimpleNamespace(
                        outputs=[
                            types.SimpleNamespace(
                                token_ids=new,
                                logprobs=lps,
                                text=text,
                                finish_reason="stop" if stop else "length",
                            )
                        ]
                    )
                )
            return outs

    mod = types.ModuleType("vllm")
    mod.LLM = LLM
    mod.SamplingParams = FakeSampling
    mod.TokensPrompt = dict
    return mod


class ForceBox(Engine):
    """Replace turn 1's text by a valid box so the random model still gets a crop turn (ids stay
    as sampled: the episode reads the text, the engine's context holds the ids)."""

    def __init__(self, inner):
        self.inner = inner

    def generate(self, episodes, params):
        gens = self.inner.generate(episodes, params)
        for ep, g in zip(episodes, gens, strict=True):
            if ep.model_turns == 0 and ep.mode == "mgpo":
                g.text = render_box(T, (2, 2, 40, 40), "ring")
        return gens

    def reset(self):
        self.inner.reset()


def run_all(engine, records, params, mode):
    view = (params.model.min_pixels, params.model.max_pixels)
    eps = [Episode(r, params.episode, T, mode, view) for r in records]
    return run_episodes(ForceBox(engine), eps, SamplingParams(max_new_tokens=8), batch_size=3)


@pytest.mark.parametrize("mode", ["mgpo", "oracle", "direct"])
def test_vllm_requests_match_the_transformers_engine(bundle, records, params, monkeypatch, mode):
    from components.engines.vllm_engine import VLLMEngine

    reference = TransformersEngine.from_pretrained(str(bundle))
    calls: list = []
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm_module(reference.model, reference.processor, calls))
    engine = VLLMEngine(sys.modules["vllm"].LLM(), reference.processor)

    # the sampler rule of the transformers engine, as vLLM's logit_bias
    assert engine.logit_bias == dict.fromkeys(reference.vision_ids, -100.0) and len(reference.vision_ids) == 4
    expected = run_all(reference, records, params, mode)
    got = run_all(engine, records, params, mode)
    turns = {"mgpo": 2, "oracle": 1, "direct": 1}[mode]
    assert len(calls) == len(records) * turns
    for e, g in zip(expected, got, strict=True):
        assert [t.text for t in g.turns] == [t.text for t in e.turns]
        assert g.prompt_ids == e.prompt_ids and g.response_ids == e.response_ids
        assert g.response_mask == e.response_mask
        assert g.response_logprobs == pytest.approx(e.response_logprobs, abs=1e-4)
        assert [im.size for im in g.images] == [im.size for im in e.images]
    if mode == "mgpo":
        # Turn 2's request is the whole context: prompt, turn-1 ids as sampled, the crop turn.
        first, second = calls[0], calls[len(records)]
        assert second["prompt_token_ids"][: len(first["prompt_token_ids"])] == first["prompt_token_ids"]
        assert len(second["multi_modal_data"]["image"]) == 2
        ctx = got[0].prompt_ids + got[0].response_ids
        assert ctx[: len(second["prompt_token_ids"])] == second["prompt_token_ids"]


@pytest.mark.gpu
@pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None
    or not torch.cuda.is_available()
    or shutil.which("nvidia-smi") is None,
    reason="needs vllm (the gpu extra) and a CUDA GPU",
)
def test_real_vllm_runs_an_mgpo_episode(bundle, records, params):
    from components.engines.vllm_engine import VLLMEngine

    engine = VLLMEngine.from_pretrained(str(bundle), gpu_memory_utilization=0.3, max_model_len=4096)
    results = run_all(engine, records, params, "mgpo")
    assert all(len(r.turns) == 2 and sum(r.response_mask) > 0 for r in results)
