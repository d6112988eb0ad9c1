"""The embedded tiny Qwen2.5-VL: a real Qwen2.5-VL architecture, small enough for 2 CPU cores.

Everything is built offline and deterministically from `model.seed`:
- a byte-level BPE tokenizer trained with `tokenizers` on text the pipeline says (the prompt
  templates, JSON boxes, digits, `\\boxed{}`, letters, colours and shapes), loaded as
  transformers' `Qwen2Tokenizer` (so Qwen2's pre-tokenizer, single digits included) with every
  Qwen2.5-VL special token and a Qwen2-VL style chat template;
- the Qwen2.5-VL processor with the first-view pixel budget from params;
- `Qwen2_5_VLForConditionalGeneration` with random weights from the seed.
The bundle reloads with `AutoProcessor` / `AutoModelForImageTextToText` and verl's
`hf_tokenizer` / `hf_processor`, with `HF_HUB_OFFLINE=1`.

Departure from the paper: the paper starts from Qwen2.5-VL-7B-Instruct; this model knows
nothing and learns the task from SFT, which is why the synthetic data is designed for it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from components.config import ModelConfig

# The special tokens of Qwen2.5-VL, in its order; the vision ids are read back from the tokenizer.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL's chat template (system default, images as vision_start/image_pad/vision_end).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = (
    "red green blue yellow orange purple pink brown black white gray grey cyan magenta azure "
    "square circle triangle diamond star cross ring frame pattern checkered inside outside "
    "left right above below top bottom the a an of is in on to and or which what where colour "
    "color colours colors two make up object image question answer choices options relative "
    "position located side between small large detail key area region coordinates crop"
)


def tokenizer_corpus(templates_text: str, seed: int, lines: int = 4000) -> list[str]:
    """Text covering what the pipeline says, in a seeded order (BPE merges depend on it)."""
    rng = random.Random(seed)
    words = _WORDS.split()
    out = [templates_text] * 20 if templates_text else []
    for _ in range(lines):
        x1, y1 = rng.randrange(0, 900), rng.randrange(0, 900)
        x2, y2 = x1 + rng.randrange(28, 400), y1 + rng.randrange(28, 400)
        label = f"{rng.choice(words)} {rng.choice(words)}"
        letter = rng.choice("ABCDE")
        phrase = " ".join(rng.choice(words) for _ in range(rng.randrange(3, 12)))
        out.append(f'```json\n[{{"bbox_2d": [{x1}, {y1}, {x2}, {y2}], "label": "{label}"}}]\n```')
        out.append(f"{phrase.capitalize()}? The answer is \\boxed{{{letter}}}. ({letter}) {phrase}\n")
    return out


def train_tokenizer(cfg: ModelConfig, templates_text: str):
    """Train a byte-level BPE with Qwen2's pre-tokenizer and wrap it as a Qwen2Tokenizer."""
    from tokenizers import models, trainers
    from transformers import Qwen2Tokenizer

    # An empty Qwen2Tokenizer carries Qwen2's exact pre-tokenizer and byte-level decoder;
    # train a BPE under that same pre-tokenizer so the merges are consistent with it.
    probe = Qwen2Tokenizer(vocab={"<|endoftext|>": 0}, merges=[])
    backend = probe.backend_tokenizer
    backend.model = models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False)
    from tokenizers import pre_tokenizers

    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(tokenizer_corpus(templates_text, cfg.seed), trainer=trainer)
    model_state = json.loads(backend.to_str())["model"]
    # Re-index the learned vocab from 0; special tokens are appended after it, as in Qwen's.
    learned = sorted((i, k) for k, i in model_state["vocab"].items() if k not in SPECIAL_TOKENS)
    vocab = {k: n for n, (_, k) in enumerate(learned)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model_state["merges"]]
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, errors="replace")
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tok.chat_template = CHAT_TEMPLATE
    tok.model_max_length = cfg.text.max_position_embeddings
    return tok


def build_processor(cfg: ModelConfig, tokenizer):
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}
    image_processor = Qwen2VLImageProcessor(
        size=size,
        patch_size=cfg.vision.patch_size,
        merge_size=cfg.vision.spatial_merge_size,
    )
    video_processor = Qwen2VLVideoProcessor(
        size=size, patch_size=cfg.vision.patch_size, merge_size=cfg.vision.spatial_merge_size
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(cfg: ModelConfig, tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    t, v = cfg.text, cfg.vision
    ids = tokenizer.convert_tokens_to_ids
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size,
        "num_hidden_layers": t.num_layers,
        "num_attention_heads": t.num_heads,
        "num_key_value_heads": t.num_kv_heads,
        "max_position_embeddings": t.max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta, "mrope_section": t.mrope_section},
        "bos_token_id": ids("<|endoftext|>"),
        "eos_token_id": ids("<|im_end|>"),
        "pad_token_id": ids("<|endoftext|>"),
        "max_window_layers": t.num_layers,
    }
    vision_config = {
        "depth": v.depth,
        "hidden_size": v.hidden_size,
        "intermediate_size": v.intermediate_size,
        "num_heads": v.num_heads,
        "patch_size": v.patch_size,
        "spatial_merge_size": v.spatial_merge_size,
        "window_size": v.window_size,
        "out_hidden_size": t.hidden_size,
        # Full attention in the last block, as in Qwen2.5-VL's pattern of windowed blocks.
        "fullatt_block_indexes": [v.depth - 1],
    }
    config = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = [ids("<|im_end|>"), ids("<|endoftext|>")]
    model.generation_config.pad_token_id = ids("<|endoftext|>")
    model.generation_config.do_sample = False
    return model


def build_tiny_bundle(
    cfg: ModelConfig, out_dir: str | Path, templates_path: str | Path | None = None
) -> dict:
    """Build tokenizer, processor and random-weight model into `out_dir`; return a summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    templates_text = ""
    if templates_path and Path(templates_path).is_file():
        templates_text = Path(templates_path).read_text()
    tokenizer = train_tokenizer(cfg, templates_text)
    processor = build_processor(cfg, tokenizer)
    model = build_model(cfg, tokenizer)
    processor.save_pretrained(out_dir)
    model.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    size = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file())
    return {
        "source": "tiny",
        "parameters": n_params,
        "bundle_bytes": size,
        "vocab_size": len(tokenizer),
        "config": model.config.to_dict(),
    }
