"""`mgpo science` end to end on a tiny budget: 2 seeds x (SFT, then MGPO and direct RL arms),
each arm evaluated in mgpo and direct modes; summary.json / summary.md, one MLflow parent run
with every run as its child, nothing registered; a rerun skips every finished run."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import yaml

from components.config import SyntheticConfig, load_params
from components.data.parquet import write_records
from components.data.synthetic import generate_split, split_specs
from components.models.tiny import build_tiny_bundle
from flows.cli import main

ROOT = Path(__file__).resolve().parents[2]

# A partial overlay on params.yaml, as params/science.yaml is: the tiniest sweep that runs.
OVERLAY = {
    "model": {"max_pixels": 12544},
    "episode": {"max_new_tokens": 6, "crop_max_pixels": 12544, "crop_min_pixels": 3136},
    "sft": {
        "max_steps": 1,
        "samples_per_micro_batch": 2,
        "warmup_steps": 0,
        "checkpoint_every": 1,
        "max_seq_len": 2048,
        "direct_share": 0.5,
    },
    "rl": {
        "max_steps": 1,
        "prompts_per_step": 2,
        "prompts_per_mini_batch": 1,
        "rollouts_per_prompt": 2,
        "val_samples": 2,
        "val_sampled_rollouts": 1,
        "checkpoint_every": 1,
    },
    "evaluate": {"max_samples": 3, "batch_size": 3, "report_cards": 1},
    "science": {"seeds": [0, 1], "out_dir": "results/sci"},
}


def test_mgpo_science_end_to_end_and_resume(tmp_path, monkeypatch, prefect_harness, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    small = load_params(
        ROOT / "params.yaml",
        [
            "model.text.hidden_size=64",
            "model.text.num_layers=1",
            "model.text.mrope_section=[2, 3, 3]",
            "model.vision.hidden_size=32",
            "model.vision.depth=1",
            "model.vocab_size=400",
            "model.max_pixels=12544",
        ],
    )
    build_tiny_bundle(small.model, tmp_path / "models/base", ROOT / "components/templates.yaml")
    cfg = SyntheticConfig(
        width=1024, height=768, train=4, val=2, test=3, scale_sweep={"sizes": [0.3], "per_size": 1}
    )
    for spec in split_specs(cfg):
        if spec.name in ("train", "val", "test", "scale_sweep"):
            write_records(
                tmp_path / f"data/processed/synthetic/{spec.name}.parquet", generate_split(cfg, 0, spec)
            )
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base["episode"]["templates"] = str(ROOT / "components/templates.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(OVERLAY, sort_keys=False))
    argv = ["science", "--params", "params.yaml", "--params", "overlay.yaml"]

    assert main(argv) == 0
    out = tmp_path / "results/sci"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["arms"] == ["mgpo", "direct"]
    bench = summary["benchmarks"]["synthetic_test"]
    for arm in ("mgpo", "direct"):
        for mode in ("mgpo", "direct"):
            cell = bench["arms"][arm][mode]
            assert set(cell["per_seed"]) == {"0", "1"} and cell["per_seed"]["0"]["n"] == 3
            assert (
                cell["pooled"]["n"] == 6 and 0 <= cell["pooled"]["ci_low"] <= cell["pooled"]["ci_high"] <= 1
            )
    own = bench["comparisons"]["own_protocol"]
    assert isinstance(own["intervals_overlap"], bool) and -1 <= own["difference"] <= 1
    assert summary["budget"]["rl.max_steps"] == 1 and summary["budget"]["sft.max_steps"] == 1
    md = (out / "summary.md").read_text()
    assert "## synthetic_test" in md and "| mgpo | mgpo |" in md and "| direct | direct |" in md
    for seed in (0, 1):  # separate folders; checkpoints gone once a run is done
        assert (out / f"seed_{seed}/sft/model/config.json").is_file()
        for arm in ("mgpo", "direct"):
            folder = out / f"seed_{seed}" / arm
            assert (folder / "model/config.json").is_file() and (folder / "eval/metrics.json").is_file()
            rl = json.loads((folder / "rl/metrics.json").read_text())
            assert rl["mode"] == arm and rl["steps"] == 1 and "val_sampled_mgpo_accuracy" in rl["val_after"]
            assert not (folder / "checkpoints").exists()

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["mgpo"], output_format="list")
    (parent,) = [r for r in runs if r.data.tags["mgpo.stage"] == "science"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    stages = sorted((r.data.tags["mgpo.stage"], r.data.tags.get("mgpo.science.arm", "")) for r in children)
    assert stages == sorted([("sft", "")] * 2 + [("rl", a) for a in ("mgpo", "direct")] * 2
                            + [("evaluate", a) for a in ("mgpo", "direct")] * 2)  # fmt: skip
    assert len(runs) == 1 + len(children)
    assert "synthetic_test.mgpo_minus_direct.own_protocol" in parent.data.metrics
    client = mlflow.MlflowClient()
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "science")} == {
        "science/summary.json",
        "science/summary.md",
    }
    rl_child = next(r for r in children if r.data.tags["mgpo.stage"] == "rl")
    assert [m.step for m in client.get_metric_history(rl_child.info.run_id, "val_sampled_mgpo_accuracy")] == [
        0,
        1,
    ]
    assert client.search_registered_models() == []  # the sweep leaves the registry alone

    # A rerun finds every run done with the same fingerprint: nothing trains, the summary is the same.
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("skipped") == 2 + 4 and "rl step" not in printed
    again = json.loads((out / "summary.json").read_text())
    assert again["benchmarks"] == summary["benchmarks"]
    runs = mlflow.search_runs(experiment_names=["mgpo"], output_format="list")
    assert len(runs) == 1 + len(children) + 1  # only the new parent run
