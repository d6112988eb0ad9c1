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


# --- overlays: --params BASE --params OVERLAY ... ----------------------------------------------


def _yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_one_file_loads_as_before_and_as_a_list_of_one():
    assert load_params([ROOT / "params.yaml"]) == load_params(ROOT / "params.yaml") == load_params()


def test_overlays_deep_merge_then_overrides_apply(tmp_path):
    base = load_params(ROOT / "params.yaml")
    first = _yaml(
        tmp_path / "a.yaml",
        {
            "rl": {"max_steps": 3, "mode": "direct"},
            "model": {"text": {"mrope_section": [16, 8, 8]}},  # a list replaces
            "evaluate": {"benchmarks": {"extra": "x.parquet"}},  # a mapping merges
        },
    )
    second = _yaml(tmp_path / "b.yaml", {"rl": {"max_steps": 7}})
    params = load_params([ROOT / "params.yaml", first, second], ["rl.lr=0.5"])
    assert (params.rl.max_steps, params.rl.mode, params.rl.lr) == (7, "direct", 0.5)  # later wins
    assert params.rl.rollouts_per_prompt == base.rl.rollouts_per_prompt  # untouched keys stay
    assert params.model.text.mrope_section == [16, 8, 8]
    assert params.model.text.hidden_size == base.model.text.hidden_size
    assert params.evaluate.benchmarks == {**base.evaluate.benchmarks, "extra": "x.parquet"}
    # -S comes after every overlay
    assert load_params([ROOT / "params.yaml", second], ["rl.max_steps=9"]).rl.max_steps == 9


def test_merge_into_replaces_lists_and_scalars_and_merges_mappings():
    from components.config import merge_into

    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2, "c": {"z": 1}}
    origin: dict = {}
    merge_into(base, {"a": {"y": [3]}, "b": {"new": 1}, "c": 5}, origin, "o.yaml")
    assert base == {"a": {"x": 1, "y": [3]}, "b": {"new": 1}, "c": 5}
    assert origin == {("a", "y"): "o.yaml", ("b",): "o.yaml", ("c",): "o.yaml"}


def test_overlay_errors_name_the_file_and_the_key(tmp_path):
    bogus = _yaml(tmp_path / "bogus.yaml", {"rl": {"bogus": 1}})
    with pytest.raises(ParamsError, match=rf"rl\.bogus: unknown key \(set in {bogus}\)") as exc:
        load_params([ROOT / "params.yaml", bogus])
    assert f"params.yaml + {bogus}" in str(exc.value)  # the whole source in the first line
    typed = _yaml(tmp_path / "typed.yaml", {"sft": {"max_steps": "many"}})
    with pytest.raises(ParamsError, match=rf"sft\.max_steps: .*integer.* \(set in {typed}\)"):
        load_params([ROOT / "params.yaml", typed])
    with pytest.raises(
        ParamsError, match=r"rl\.rollouts_per_prompt: .* \(set in -S rl\.rollouts_per_prompt=1\)"
    ):
        load_params([ROOT / "params.yaml", typed], ["rl.rollouts_per_prompt=1", "sft.max_steps=2"])
    with pytest.raises(ParamsError, match=rf"params file {tmp_path / 'none.yaml'} not found"):
        load_params([ROOT / "params.yaml", tmp_path / "none.yaml"])
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n")
    with pytest.raises(ParamsError, match=rf"params file {listed}: top level must be a mapping"):
        load_params([ROOT / "params.yaml", listed])
    # an error in the base file itself has no origin note, as before overlays
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["rl"]["zzz"] = 1
    base = _yaml(tmp_path / "params.yaml", raw)
    with pytest.raises(ParamsError) as exc:
        load_params([base, _yaml(tmp_path / "ok.yaml", {"rl": {"max_steps": 2}})])
    assert "  rl.zzz: unknown key" in str(exc.value).splitlines()
