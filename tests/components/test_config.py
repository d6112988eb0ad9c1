"""The typed params loader: defaults validate; bad keys, types and values name the key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.config import ParamsError, apply_overrides, load_params, parse_override, validate_params

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_repo_params_validate():
    params = load_params(ROOT / "params.yaml")
    assert params.rl.rollouts_per_prompt >= 2
    assert params.model.source == "tiny"
    assert params.promote.gate_benchmark in params.evaluate.benchmarks


def test_every_params_key_is_documented_in_the_schema():
    from components.config import Params

    def walk(model):
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)
            else:
                assert field.description, f"{model.__name__}.{name} has no one-line doc"

    walk(Params)


def test_unknown_key_is_named(raw):
    raw["rl"]["rollouts"] = 8
    with pytest.raises(ParamsError, match=r"rl\.rollouts: unknown key"):
        validate_params(raw)


def test_unknown_section_is_named(raw):
    raw["trainer"] = {}
    with pytest.raises(ParamsError, match=r"trainer: unknown key"):
        validate_params(raw)


def test_wrong_type_is_named(raw):
    raw["sft"]["max_steps"] = "many"
    with pytest.raises(ParamsError, match=r"sft\.max_steps: .*integer"):
        validate_params(raw)


def test_impossible_value_gives_the_reason(raw):
    raw["rl"]["rollouts_per_prompt"] = 1
    with pytest.raises(
        ParamsError, match=r"rl\.rollouts_per_prompt: rollouts per prompt must be >= 2 for GRPO"
    ):
        validate_params(raw)


@pytest.mark.parametrize(
    ("key", "value", "pattern"),
    [
        ("model.text.mrope_section", [1, 2, 3], r"model\.text: mrope_section must be 3 numbers summing to"),
        ("model.min_pixels", 10**9, r"model: min_pixels must not exceed max_pixels"),
        ("episode.invalid_box", "shrink", r"episode\.invalid_box: Input should be 'reject' or 'clip'"),
        ("prepare.synthetic.num_options", 7, r"prepare\.synthetic\.num_options: .*less than or equal to 5"),
        (
            "rl.prompts_per_mini_batch",
            3,
            r"rl: prompts_per_step must be a multiple of prompts_per_mini_batch",
        ),
        ("promote.gate_benchmark", "nope", r"promote\.gate_benchmark 'nope' is not one of"),
        (
            "promote.parent",
            "nope",
            r"promote\.parent 'nope' is not one of evaluate\.models .*promote\.parent to ''",
        ),
        ("promote.parent", "rl", r"promote\.parent 'rl' is the candidate itself"),
    ],
)
def test_cross_field_rules(raw, key, value, pattern):
    with pytest.raises(ParamsError, match=pattern):
        validate_params(
            apply_overrides(raw, [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"])
        )


@pytest.mark.parametrize(
    ("text", "keys", "value"),
    [
        ("rl.max_steps=5", ["rl", "max_steps"], 5),
        ("rl.lr=1e-5", ["rl", "lr"], 1e-5),
        ("rl.norm_adv_by_std=false", ["rl", "norm_adv_by_std"], False),
        ("evaluate.modes=[direct, mgpo]", ["evaluate", "modes"], ["direct", "mgpo"]),
        ("tracking.uri=http://host:5000", ["tracking", "uri"], "http://host:5000"),
        ("model.source=Qwen/Qwen2.5-VL-7B-Instruct", ["model", "source"], "Qwen/Qwen2.5-VL-7B-Instruct"),
        ("sft.schedule=", ["sft", "schedule"], ""),
    ],
)
def test_parse_override(text, keys, value):
    assert parse_override(text) == (keys, value)


@pytest.mark.parametrize("text", ["rl.max_steps", "=5", "rl..lr=1", "rl.lr=[unclosed"])
def test_bad_override_syntax(text):
    with pytest.raises(ParamsError, match="override"):
        parse_override(text)


def test_override_unknown_key_and_non_section(raw):
    with pytest.raises(ParamsError, match=r"unknown key rl\.nope"):
        apply_overrides(raw, ["rl.nope=1"])
    with pytest.raises(ParamsError, match=r"rl\.lr is not a section"):
        apply_overrides(raw, ["rl.lr.x=1"])


def test_overrides_validate_like_the_file(tmp_path):
    with pytest.raises(ParamsError, match=r"rl\.rollouts_per_prompt: rollouts per prompt"):
        load_params(ROOT / "params.yaml", ["rl.rollouts_per_prompt=1"])
    params = load_params(ROOT / "params.yaml", ["rl.max_steps=3", "evaluate.models.extra=models/x"])
    assert params.rl.max_steps == 3
    assert params.evaluate.models["extra"] == "models/x"


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rl: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a list")
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        load_params(bad)


def test_sections_are_frozen():
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(Exception, match="frozen"):
        params.rl.lr = 1.0
