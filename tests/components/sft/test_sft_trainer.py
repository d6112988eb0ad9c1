"""The local SFT trainer on a real (very small) Qwen2.5-VL: mask, learning, resume, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from sft_fixtures import two_turn, write_handmade

from components.config import SFTConfig
from components.models.loading import load_bundle
from components.sft import trainer as T
from components.sft.io import TrajectoryWriter, make_row


def cfg(**kw) -> SFTConfig:
    base = {
        "max_steps": 4,
        "samples_per_micro_batch": 2,
        "micro_batches_per_step": 2,
        "lr": 3e-3,
        "warmup_steps": 1,
        "checkpoint_every": 2,
    }
    return SFTConfig(**{**base, **kw})


@pytest.fixture
def bundle(tiny_bundle):
    return load_bundle(str(tiny_bundle))


def test_mask_covers_exactly_the_assistant_messages(bundle, handmade):
    _, processor = bundle
    data = T.TrajectoryData(handmade, processor)
    enc = data.encode(0)
    ids, mask = enc["input_ids"], enc["loss_mask"].bool()
    tok = processor.tokenizer
    # The masked-in tokens are the two assistant replies, each closed by <|im_end|>\n, nothing else.
    messages = data.rows[0]["messages"]
    expected = "".join(m["content"] + "<|im_end|>\n" for m in messages if m["role"] == "assistant")
    assert tok.decode(ids[mask]) == expected
    # No vision token (first view or the environment's crop) and no user/system text counts.
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert (ids == image_id).sum() > 0
    assert not mask[ids == image_id].any()
    user_text = tok.decode(ids[~mask])
    assert "Based on the provided coordinates" in user_text and "<|image_pad|>" in user_text
    assert "\\boxed" not in user_text.split("<|im_start|>assistant")[-1]


def test_loss_is_the_mean_over_assistant_tokens_only(bundle, handmade):
    model, processor = bundle
    data = T.TrajectoryData(handmade, processor)
    batch = T.collate([data.encode(0), data.encode(1)], processor.tokenizer.pad_token_id)
    with torch.no_grad():
        total = T.token_losses(model, batch, None)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    logp = torch.log_softmax(logits.float(), -1)
    manual, count = 0.0, 0
    for row in range(2):
        enc = data.encode(row)
        for pos in torch.nonzero(enc["loss_mask"]).flatten().tolist():
            manual -= logp[row, pos - 1, enc["input_ids"][pos]].item()
            count += 1
    assert count == int((batch["labels"] != -100).sum())
    assert math.isclose(total.item(), manual, rel_tol=1e-4)
    # Changing a label outside the mask (a user token) does not change the loss.
    labels = batch["labels"].clone()
    assert (labels[0] == -100).sum() > 100


def test_verl_reads_the_same_tokens_and_mask(bundle, handmade):
    """verl's MultiTurnSFTDataset (the GPU path) sees the same ids and the same loss mask."""
    from omegaconf import OmegaConf
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    _, processor = bundle
    ours = T.TrajectoryData(handmade, processor).encode(3)
    ds = MultiTurnSFTDataset(
        str(handmade),
        processor.tokenizer,
        OmegaConf.create({"max_length": 2048, "pad_mode": "no_padding", "truncation": "error"}),
        processor=processor,
    )
    theirs = ds[3]
    assert torch.equal(theirs["input_ids"], ours["input_ids"])
    assert torch.equal(theirs["loss_mask"].long(), ours["loss_mask"])
    assert torch.equal(theirs["multi_modal_inputs"]["pixel_values"], ours["pixel_values"])


def test_training_sees_the_positions_generation_uses(bundle, handmade):
    """The trainer's forward gives the prompt the logits generation gives it (same M-RoPE).

    Regression: without mm_token_type_ids transformers falls back to 1-D positions, so a model
    trained that way met other positions at inference and generated no valid box.
    """
    model, processor = bundle
    data = T.TrajectoryData(handmade, processor)
    row = data.rows[0]
    messages = row["messages"]
    first_answer = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    chat, n_images = T.to_chat_messages(messages[:first_answer])
    prompt = processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    images = [T.load_original(img["bytes"], name="test") for img in row["images"]]
    inference = processor(text=[prompt], images=images[:n_images], return_tensors="pt")
    length = inference["input_ids"].shape[1]
    # Right-padded beside a longer trajectory, as in training.
    batch = T.collate([data.encode(0), data.encode(1)], processor.tokenizer.pad_token_id)
    assert torch.equal(batch["input_ids"][0, :length], inference["input_ids"][0])
    with torch.no_grad():
        trained = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0, length - 1]
        generated = model(**inference).logits[0, -1]
        fallback = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            image_grid_thw=batch["image_grid_thw"],
        ).logits[0, length - 1]
    assert torch.allclose(trained, generated, atol=1e-4)
    assert not torch.allclose(fallback, generated, atol=1e-4)  # the test can tell the two apart


def test_sample_order_is_a_function_of_position():
    whole = T.sample_order(5, seed=3, start=0, count=12)
    assert sorted(whole[:5]) == list(range(5)) and sorted(whole[5:10]) == list(range(5))
    assert T.sample_order(5, seed=3, start=7, count=5) == whole[7:12]
    assert T.sample_order(5, seed=4, start=0, count=5) != whole[:5]


def test_loss_falls_and_parameters_change(tiny_bundle, tmp_path):
    model, processor = load_bundle(str(tiny_bundle))
    data = write_handmade(tmp_path / "t.parquet", n=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = T.train(
        cfg(
            max_steps=30,
            lr=5e-3,
            schedule="constant",
            checkpoint_every=100,
            micro_batches_per_step=1,
            samples_per_micro_batch=4,
        ),
        model,
        processor,
        data,
        tmp_path / "ckpt",
        progress=False,
    )
    losses = [h["loss"] for h in result.history]
    assert result.steps == 30 and len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:3]) / 3, losses
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("visual" in k for k in changed) and any("lm_head" in k for k in changed)
    assert all(h["tokens_per_s"] > 0 and h["grad_norm"] >= 0 for h in result.history)
    # warmup then constant lr
    assert result.history[0]["lr"] < result.history[5]["lr"] == pytest.approx(5e-3)


def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_bundle, tmp_path):
    data = write_handmade(tmp_path / "t.parquet", n=6)
    c = cfg(max_steps=6, checkpoint_every=2)

    model_a, processor = load_bundle(str(tiny_bundle))
    full = T.train(c, model_a, processor, data, tmp_path / "a", progress=False)

    class Interrupt(Exception):
        pass

    def stop_at_5(record):
        if record["step"] == 5:
            raise Interrupt

    model_b, _ = load_bundle(str(tiny_bundle))
    with pytest.raises(Interrupt):
        T.train(c, model_b, processor, data, tmp_path / "b", on_step=stop_at_5, progress=False)
    assert T.latest_checkpoint(tmp_path / "b").name == "step_000004"

    model_c, _ = load_bundle(str(tiny_bundle))
    resumed = T.train(c, model_c, processor, data, tmp_path / "b", resume=True, progress=False)
    assert resumed.resumed_from == 4 and resumed.steps == 6
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]
    assert [round(h["loss"], 5) for h in resumed.history] == [round(h["loss"], 5) for h in full.history]
    for (k, a), (_, b) in zip(model_a.state_dict().items(), model_c.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), k


def test_resume_refuses_other_data_or_batch(tiny_bundle, tmp_path):
    data = write_handmade(tmp_path / "t.parquet", n=4)
    model, processor = load_bundle(str(tiny_bundle))
    T.train(cfg(max_steps=2), model, processor, data, tmp_path / "ck", progress=False)
    with pytest.raises(ValueError, match="samples_per_micro_batch"):
        T.train(
            cfg(max_steps=4, samples_per_micro_batch=1),
            model,
            processor,
            data,
            tmp_path / "ck",
            resume=True,
            progress=False,
        )
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        T.train(cfg(), model, processor, data, tmp_path / "none", resume=True, progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_bundle, tmp_path):
    data = write_handmade(tmp_path / "t.parquet", n=4)
    model, processor = load_bundle(str(tiny_bundle))

    def poison(record):
        if record["step"] == 2:  # after step 2's checkpoint, break the weights
            with torch.no_grad():
                model.lm_head.weight.fill_(float("nan"))

    with pytest.raises(T.NonFiniteLoss, match=r"at step 3 .*step_000002 \(step 2\)"):
        T.train(cfg(max_steps=6), model, processor, data, tmp_path / "ck", on_step=poison, progress=False)
    state = T.load_checkpoint(T.latest_checkpoint(tmp_path / "ck"))
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_bad_rows_are_named(bundle, tmp_path):
    _, processor = bundle
    from PIL import Image

    path = tmp_path / "bad.parquet"
    with TrajectoryWriter(path) as w:
        # two placeholders, one image
        w.write(make_row("x0", "r0", "mgpo", two_turn("red", "A"), [Image.new("RGB", (56, 56))], 0))
    data = T.TrajectoryData(path, processor)
    with pytest.raises(
        T.TrajectoryFormatError, match=r"bad.parquet row 0: 2 <image> placeholders but 1 images"
    ):
        data.encode(0)
    with pytest.raises(FileNotFoundError, match=r"missing\.parquet"):
        T.TrajectoryData(tmp_path / "missing.parquet", processor)
