"""The embedded tiny Qwen2.5-VL bundle: deterministic, reloads offline, runs, templates right."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from components.config import load_params
from components.models.tiny import build_tiny_bundle

ROOT = Path(__file__).resolve().parents[3]


def small_cfg():
    # Smaller than the default so the test is quick; the architecture is the same.
    return load_params(
        ROOT / "params.yaml",
        [
            "model.text.hidden_size=64",
            "model.text.num_layers=1",
            "model.text.mrope_section=[2, 3, 3]",
            "model.vision.hidden_size=32",
            "model.vision.depth=1",
            "model.vocab_size=400",
        ],
    ).model


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "a"
    build_tiny_bundle(small_cfg(), out, ROOT / "components" / "templates.yaml")
    return out


def digest(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def test_same_seed_same_bytes(bundle, tmp_path):
    build_tiny_bundle(small_cfg(), tmp_path / "b", ROOT / "components" / "templates.yaml")
    assert digest(bundle) == digest(tmp_path / "b")


def test_other_seed_other_weights(bundle, tmp_path):
    cfg = small_cfg().model_copy(update={"seed": 1})
    build_tiny_bundle(cfg, tmp_path / "c", ROOT / "components" / "templates.yaml")
    assert digest(bundle)["model.safetensors"] != digest(tmp_path / "c")["model.safetensors"]


def conversation() -> list[dict]:
    return [
        {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Question: where is the red square?"}],
        },
        {
            "role": "assistant",
            "content": [
                {
                    "type": "text",
                    "text": '```json\n[{"bbox_2d": [10, 20, 90, 100], "label": "red square"}]\n```',
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Based on the provided coordinates, return the sub-image:"},
                {"type": "image"},
                {"type": "text", "text": "(A) red\n(B) blue"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "It is red. \\boxed{A}"}]},
    ]


def test_reloads_offline_and_templates_two_images(bundle, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(bundle)
    model = AutoModelForImageTextToText.from_pretrained(bundle)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    text = processor.apply_chat_template(conversation(), tokenize=False)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert text.count("<|im_start|>assistant\n") == 2
    images = [Image.new("RGB", (1024, 768), (200, 40, 40)), Image.new("RGB", (224, 224), (40, 40, 200))]
    batch = processor(text=[text], images=images, return_tensors="pt")
    merge = processor.image_processor.merge_size
    expected = int((batch["image_grid_thw"].prod(-1) // merge**2).sum())
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((batch["input_ids"] == pad).sum()) == expected
    # The seen frame fits the first-view budget from params.
    cfg = small_cfg()
    for thw in batch["image_grid_thw"]:
        pixels = int(thw[1] * thw[2]) * cfg.vision.patch_size**2
        assert cfg.min_pixels <= pixels <= cfg.max_pixels
    # Decoding the ids gives the text back (the tokenizer round-trips the template).
    assert processor.tokenizer.decode(batch["input_ids"][0]).replace("<|image_pad|>", "") == text.replace(
        "<|image_pad|>", ""
    )
    out = model(**batch, labels=batch["input_ids"])
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_generate_on_image_and_text(bundle):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(bundle)
    model = AutoModelForImageTextToText.from_pretrained(bundle).eval()
    text = processor.apply_chat_template(conversation()[:2], tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[Image.new("RGB", (640, 480), (0, 128, 0))], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=5, do_sample=False)
    assert (
        out.shape[1] == batch["input_ids"].shape[1] + 5 or out[0, -1] in model.generation_config.eos_token_id
    )


def test_verl_loads_the_bundle(bundle):
    from verl.utils import hf_processor, hf_tokenizer

    assert type(hf_tokenizer(str(bundle))).__name__ == "Qwen2Tokenizer"
    assert type(hf_processor(str(bundle))).__name__ == "Qwen2_5_VLProcessor"


def test_tokenizer_keeps_digits_single_and_specials_whole(bundle):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bundle)
    pieces = tok.tokenize("[112, 56] <|im_end|>")
    assert "1" in pieces and "112" not in pieces
    assert "<|im_end|>" in pieces


def test_rope_theta_comes_from_params(tmp_path):
    """`model.text.rope_theta` and `mrope_section` reach the built model's rotary config."""
    small = small_cfg()
    cfg = small.model_copy(
        update={"text": small.text.model_copy(update={"rope_theta": 100.0, "mrope_section": [2, 2, 4]})}
    )
    build_tiny_bundle(cfg, tmp_path, ROOT / "components" / "templates.yaml")
    rope = json.loads((tmp_path / "config.json").read_text())["text_config"]["rope_parameters"]
    assert rope["rope_theta"] == 100.0 and rope["mrope_section"] == [2, 2, 4]
