"""verl 0.9.1's RLHFDataset reads the canonical parquet as is, with the model bundle's
processor, and yields every row (a broken processor makes verl silently filter every image
row away: "filter dataset len: 0", see STACK.md)."""

from __future__ import annotations

import itertools
from pathlib import Path

import benchfiles as bf
import pytest

from components.config import ModelConfig, SyntheticConfig
from components.data.loaders import load_benchmark
from components.data.parquet import write_records
from components.data.record import Record
from components.data.synthetic import generate_split, split_specs

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """models/base when `dvc repro build_model` has built it, else the same bundle built here."""
    if (ROOT / "models/base/preprocessor_config.json").is_file() or (
        ROOT / "models/base/processor_config.json"
    ).is_file():
        return ROOT / "models/base"
    from components.models.tiny import build_tiny_bundle

    out = tmp_path_factory.mktemp("bundle")
    build_tiny_bundle(ModelConfig(), out, ROOT / "components/templates.yaml")
    return out


def test_rlhf_dataset_yields_every_row(tmp_path, monkeypatch, bundle):
    import datasets
    from omegaconf import OmegaConf
    from transformers import AutoProcessor
    from verl.utils.dataset.rl_dataset import RLHFDataset

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))
    synthetic = SyntheticConfig()  # the defaults of params.yaml: 2048x1536 images
    spec = next(s for s in split_specs(synthetic) if s.name == "test")
    records = list(itertools.islice(generate_split(synthetic, 0, spec), 4))
    hr = bf.hrbench_parquet(tmp_path / "hr.parquet")
    records += [
        r
        for r in load_benchmark("hrbench", str(hr), "hrbench", "test", tmp_path, 10**8)
        if isinstance(r, Record)
    ][:2]
    path = tmp_path / "mixed.parquet"
    write_records(path, records, rows_per_group=4)

    processor = AutoProcessor.from_pretrained(bundle)
    config = OmegaConf.create(
        {
            "max_prompt_length": 1024,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": 1,
            "cache_dir": str(tmp_path / "verl_cache"),
        }
    )
    ds = RLHFDataset(str(path), processor.tokenizer, config, processor)
    assert len(ds) == len(records) == 6

    for i, record in enumerate(records):
        row = ds[i]
        assert row["extra_info"]["id"] == record.id and row["index"] == i
        assert row["reward_model"]["ground_truth"] == record.answer and row["agent_name"] == "mgpo_agent"
        content = row["raw_prompt"][0]["content"]
        assert [c["type"] for c in content] == ["image", "text"] and content[1]["text"] == record.question
        assert content[0]["image"].size == (record.width, record.height)

    # the first view the processor builds for a 2048x1536 original: 252x168 -> 9x6 merged tokens
    messages = ds[0]["raw_prompt"]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    images, _, _ = RLHFDataset._process_multi_modal_info(messages, ds.image_patch_size, config)
    inputs = processor(text=[text], images=images, return_tensors="pt")
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_token).sum()) == 54
