"""End to end: `dvc repro` in a temporary copy of the repository with the smallest params.

Everything is real: the tiny model, synthetic data, SFT, RL, evaluation, promotion, DVC, MLflow
(sqlite in the copy), Prefect (ephemeral). It runs the chain build_model -> prepare -> sft -> rl
-> evaluate -> promote up to the first stage dvc.yaml does not have yet, so it tests what exists;
the registry checks need the whole chain. Then a second `dvc repro` must run no stage.
Each stage's wall time (from its MLflow run) and the no-op rerun's are printed.
"""

from __future__ import annotations

import json
import re
import time

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from components import lineage
from flows.pipeline import apply_overrides_to_params_file

CHAIN = ["build_model", "prepare", "sft", "rl", "evaluate", "promote"]

# The smallest settings that still exercise every code path of every stage.
SMALLEST = [
    "model.text.hidden_size=64",
    "model.text.num_layers=1",
    "model.text.mrope_section=[2,3,3]",
    "model.vision.hidden_size=32",
    "model.vision.depth=1",
    "model.vocab_size=400",
    "prepare.synthetic.width=1024",
    "prepare.synthetic.height=768",
    "prepare.synthetic.train=8",
    "prepare.synthetic.val=2",
    "prepare.synthetic.test=4",
    "prepare.synthetic.scale_sweep.sizes=[0.08,0.2]",
    "prepare.synthetic.scale_sweep.per_size=1",
    "prepare.synthetic.split_4k.count=1",
    "episode.max_new_tokens=12",
    "sft.max_steps=2",
    "sft.samples_per_micro_batch=2",
    "sft.warmup_steps=0",
    "rl.max_steps=1",
    "rl.prompts_per_step=2",
    "rl.rollouts_per_prompt=2",
    "rl.prompts_per_mini_batch=2",
    "rl.val_every=1",
    "rl.val_samples=2",
    "rl.rollout_batch_size=4",
    "evaluate.max_samples=4",
    "evaluate.batch_size=4",
    "evaluate.report_cards=2",
    # After 2 SFT steps and 1 RL step the tiny model is likely to tie its SFT parent on 4
    # questions, and a tie is never promoted; this run opts out of the parent comparison so
    # that it exercises the promotion and its lineage (the parent rule: test_promote.py,
    # test_registry.py).
    "promote.parent=''",
]


def stages_present(repo) -> list[str]:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    present = []
    for name in CHAIN:
        if name not in stages:
            break
        present.append(name)
    return present


def applicable(repo, overrides: list[str]) -> list[str]:
    """Overrides whose key exists in this copy's params.yaml (sections still being built may lack some)."""
    data = yaml.safe_load((repo / "params.yaml").read_text())
    out = []
    for item in overrides:
        node = data
        keys = item.split("=", 1)[0].split(".")
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if node is not None:
            out.append(item)
    return out


@pytest.mark.slow
@pytest.mark.timeout(3000)
def test_dvc_repro_end_to_end(repo_copy, run):
    present = stages_present(repo_copy)
    assert present[:2] == ["build_model", "prepare"], present
    apply_overrides_to_params_file(repo_copy / "params.yaml", applicable(repo_copy, SMALLEST))
    target = present[-1]

    start = time.perf_counter()
    first = run(repo_copy, "dvc", "repro", target, timeout=1800)
    total = time.perf_counter() - start
    ran = re.findall(r"Running stage '(\w+)'", first.stdout)
    assert ran == present, first.stdout[-3000:]

    mlflow.set_tracking_uri(f"sqlite:///{repo_copy / 'mlflow.db'}")
    runs = {
        r.data.tags["mgpo.stage"]: r
        for r in mlflow.search_runs(experiment_names=["mgpo"], output_format="list")
    }
    assert set(runs) == set(present)
    lock = lineage.read_lock(repo_copy)
    for stage in present:
        tags = runs[stage].data.tags
        assert tags[lineage.MANAGED_TAG] == "true" and tags[lineage.STAGE_TAG] == stage
        assert tags[lineage.DIGEST_TAG] == lineage.lock_digest(lock[stage]), stage
        seconds = (runs[stage].info.end_time - runs[stage].info.start_time) / 1000
        print(f"stage {stage:<12} MLflow run {seconds:7.1f} s")
    print(f"dvc repro {target}: {total:.1f} s for {len(present)} stages")

    if present == CHAIN:
        client = MlflowClient()
        champion = client.get_model_version_by_alias("mgpo-embedded", "champion")
        assert champion.tags["mgpo.promotion.outcome"] == "no_champion"
        info = lineage.describe("models:/mgpo-embedded@champion")
        assert info["stage"] == "rl" and info["inputs"] and info["git_commit"]
        assert info["outputs"]["models/rl"] == lock["rl"]["outs"]["models/rl"]  # finalized by promote
        # Every stage before promote got its output hashes from dvc.lock (promote's own run is
        # finalized by the pipeline flow or the next promote).
        client_runs = {
            r.data.tags["mgpo.stage"]: r
            for r in mlflow.search_runs(experiment_names=["mgpo"], output_format="list")
        }
        for stage in CHAIN[:-1]:
            assert client_runs[stage].data.tags.get(lineage.FINALIZED_TAG) == "true", stage
        assert (repo_copy / "results/promotion.json").is_file()

    start = time.perf_counter()
    again = run(repo_copy, "dvc", "repro", target, timeout=600)
    noop = time.perf_counter() - start
    assert "Running stage" not in again.stdout, again.stdout
    assert len(mlflow.search_runs(experiment_names=["mgpo"], output_format="list")) == len(present)
    print(f"no-op dvc repro {target}: {noop:.1f} s")

    if present == CHAIN:
        # A param change re-runs only the stages that read it; `dvc exp show` lists the experiment.
        exp = run(repo_copy, "dvc", "exp", "run", "-S", "promote.min_improvement=0.5", timeout=900)
        assert re.findall(r"Running stage '(\w+)'", exp.stdout) == ["promote"], exp.stdout
        decision = json.loads((repo_copy / "results/promotion.json").read_text())
        assert (decision["promoted"], decision["outcome"]) == (0, "already_champion")
        show = run(repo_copy, "dvc", "exp", "show", "--json", timeout=300)
        assert "min_improvement" in show.stdout and "promoted" in show.stdout
