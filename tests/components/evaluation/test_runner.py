"""The runner on the real tiny model: three modes, bad input, resume after a kill, Ray vs serial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from components.data.parquet import read_records, write_records
from components.evaluation.metrics import strip_timing
from components.evaluation.predictions import read_predictions
from components.evaluation.session import EvaluationError, evaluate

from .conftest import ROOT, episode_cfg, eval_cfg

TIMING = {"seconds"}


def comparable(rows: list[dict]) -> dict[str, dict]:
    return {r["key"]: {k: v for k, v in r.items() if k not in TIMING} for r in rows}


def test_three_modes_on_the_tiny_model(eval_bundle, eval_benchmarks, tmp_path):
    cfg = eval_cfg(eval_bundle, eval_benchmarks)
    res = evaluate(cfg, episode_cfg(), tmp_path, progress=lambda s: None)
    rows = res.rows
    assert len(rows) == 2 * 3 * 4  # benchmarks x modes x questions
    by_mode = {
        m: [r for r in rows if r["mode"] == m and r["benchmark"] == "test"]
        for m in ("direct", "mgpo", "oracle")
    }
    for r in by_mode["direct"]:
        assert r["num_turns"] == 1 and r["box_valid"] is None and len(r["turns"]) == 1
        assert "Question:" in r["turns"][0]["prompt"] and "(A)" in r["turns"][0]["prompt"]
    for r in by_mode["mgpo"]:
        assert r["num_turns"] == 2 and len(r["turns"]) == 2 and isinstance(r["box_valid"], bool)
        assert "Out the coordinates" in r["turns"][0]["prompt"]  # the paper's turn-1 prompt
        assert r["iou"] is not None and r["crop_hit"] is not None  # synthetic records have targets
        assert [b["turn"] for b in r["boxes"]] == [1] and r["boxes"][0]["valid"] == r["box_valid"]
    for r in by_mode["oracle"]:
        # The environment writes turn 1 from the true box: always valid, the crop holds the target.
        assert r["num_turns"] == 1 and r["box_valid"] is True and r["crop_hit"] is True and r["iou"] > 0
        assert len(r["boxes"]) == 1 and r["boxes"][0]["by_env"] is True
    for r in rows:
        assert r["correct"] == (r["prediction"] == r["answer"])
        assert r["correct"] or r["reason"]  # every wrong answer says why
        assert r["tokens"] > 0 and r["error"] is None
    m = res.metrics["tiny"]["test"]
    assert set(m) == {"direct", "mgpo", "oracle"}
    assert m["mgpo"]["mean_turns"] == 2 and m["oracle"]["valid_box_ratio"] == 1.0
    assert (
        m["direct"]["n"] == 4 and 0 <= m["direct"]["accuracy_ci_low"] <= m["direct"]["accuracy_ci_high"] <= 1
    )
    assert json.loads((tmp_path / "metrics.json").read_text()) == res.metrics
    assert (tmp_path / "report.html").read_text().count('class="card ') == 2 * 3 * 4  # report_cards=4
    assert (tmp_path / "plots" / "accuracy_vs_target_size.png").stat().st_size > 5000
    sweep = [r for r in rows if r["benchmark"] == "sweep"]
    assert sorted({r["target_size"] for r in sweep}) == [0.06, 0.2]


def test_bad_input_is_scored_wrong_with_the_reason(eval_bundle, eval_benchmarks, tmp_path):
    records = list(read_records(eval_benchmarks["test"], limit=2))
    records[1].image_bytes = b"\xff\xd8 this is not a JPEG"
    write_records(tmp_path / "bad.parquet", records)
    cfg = eval_cfg(eval_bundle, {"bad": str(tmp_path / "bad.parquet")}, modes=["direct", "mgpo"])
    res = evaluate(cfg, episode_cfg(), tmp_path / "out", progress=lambda s: None)
    bad = [r for r in res.rows if r["id"] == records[1].id]
    assert len(bad) == 2 and all(not r["correct"] for r in bad)
    assert all(records[1].id in r["error"] and "cannot" in r["error"] for r in bad)
    good = [r for r in res.rows if r["id"] == records[0].id]
    assert all(r["error"] is None and r["tokens"] > 0 for r in good)
    assert res.metrics["tiny"]["bad"]["mgpo"]["errors"] == 1
    report = (tmp_path / "out" / "report.html").read_text()
    assert "original image unavailable" in report and "cannot be read as an image" in report


def test_missing_inputs_name_the_key(eval_bundle, eval_benchmarks, tmp_path):
    with pytest.raises(EvaluationError, match=r"evaluate\.benchmarks\.nope"):
        evaluate(eval_cfg(eval_bundle, {"nope": str(tmp_path / "x.parquet")}), episode_cfg(), tmp_path)
    with pytest.raises(EvaluationError, match=r"evaluate\.models has no model"):
        evaluate(eval_cfg(eval_bundle, eval_benchmarks), episode_cfg(), tmp_path, only_models=["ghost"])
    cfg = eval_cfg(
        eval_bundle, eval_benchmarks, models={"tiny": str(eval_bundle), "later": str(tmp_path / "m/sft")}
    )
    with pytest.raises(EvaluationError, match=r"evaluate\.models\.later"):
        evaluate(cfg, episode_cfg(), tmp_path, only_models=["later"])


RUNNER = """
import sys, json
from components.config import EvaluateConfig, EpisodeConfig
from components.evaluation.session import evaluate
cfg = EvaluateConfig.model_validate_json(sys.argv[1])
ep = EpisodeConfig.model_validate_json(sys.argv[2])
evaluate(cfg, ep, sys.argv[3])
"""


def test_resume_after_a_kill_gives_identical_metrics(eval_bundle, eval_benchmarks, tmp_path):
    cfg = eval_cfg(eval_bundle, {"test": eval_benchmarks["test"]}, modes=["direct", "mgpo"], batch_size=1)
    ep = episode_cfg()
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, cfg.model_dump_json(), ep.model_dump_json(), str(killed)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    preds = killed / "predictions.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and len(read_predictions(preds)) < 3:
        assert proc.poll() is None, "the evaluation ended before it could be killed"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_predictions(preds)
    assert 3 <= len(before) < 8 and preds.read_bytes().endswith(b"\n")

    resumed = evaluate(cfg, ep, killed, progress=lambda s: None)
    assert sum(g.views_done_before for g in resumed.groups) == len(before)
    assert sum(g.views_run for g in resumed.groups) == 8 - len(before)
    fresh = evaluate(cfg, ep, tmp_path / "fresh", progress=lambda s: None)
    assert strip_timing(resumed.metrics) == strip_timing(fresh.metrics)
    assert comparable(resumed.rows) == comparable(fresh.rows)
    # A third run has nothing left to do and changes nothing.
    again = evaluate(cfg, ep, killed, progress=lambda s: None)
    assert sum(g.views_run for g in again.groups) == 0
    assert strip_timing(again.metrics) == strip_timing(fresh.metrics)


def test_changed_params_invalidate_old_predictions(eval_bundle, eval_benchmarks, tmp_path):
    cfg = eval_cfg(eval_bundle, {"test": eval_benchmarks["test"]}, modes=["direct"], max_samples=2)
    evaluate(cfg, episode_cfg(), tmp_path, progress=lambda s: None)
    other = evaluate(cfg.model_copy(update={"seed": 1}), episode_cfg(), tmp_path, progress=lambda s: None)
    assert sum(g.views_run for g in other.groups) == 2  # new option orders: nothing reused
    fewer = evaluate(
        cfg.model_copy(update={"seed": 1, "max_samples": 1}), episode_cfg(), tmp_path, progress=lambda s: None
    )
    assert (
        sum(g.views_run for g in fewer.groups) == 0
        and len(read_predictions(tmp_path / "predictions.jsonl")) == 1
    )


@pytest.mark.slow
def test_ray_parallel_matches_serial(eval_bundle, eval_benchmarks, tmp_path):
    import ray

    cfg = eval_cfg(eval_bundle, {"test": eval_benchmarks["test"]}, modes=["direct", "mgpo"])
    serial = evaluate(cfg, episode_cfg(), tmp_path / "serial", progress=lambda s: None)
    try:
        parallel = evaluate(
            cfg.model_copy(update={"workers": 2}), episode_cfg(), tmp_path / "ray", progress=print
        )
    finally:
        ray.shutdown()
    assert comparable(parallel.rows) == comparable(serial.rows)
    assert strip_timing(parallel.metrics) == strip_timing(serial.metrics)
    for name, res in (("serial", serial), ("ray x2", parallel)):
        views = sum(g.views_run for g in res.groups)
        wall = sum(g.wall_seconds for g in res.groups)
        print(f"{name}: {views} views in {wall:.1f}s = {views / wall:.2f} samples/s")


def test_repeated_sampling_reports_mean_and_std(eval_bundle, eval_benchmarks, tmp_path):
    cfg = eval_cfg(
        eval_bundle,
        {"test": eval_benchmarks["test"]},
        modes=["direct"],
        samples=3,
        temperature=1.0,
        max_samples=2,
    )
    res = evaluate(cfg, episode_cfg(), tmp_path, progress=lambda s: None)
    assert len(res.rows) == 6 and sorted({r["repeat"] for r in res.rows}) == [0, 1, 2]
    m = res.metrics["tiny"]["test"]["direct"]
    assert m["repeats"] == 3 and m["n"] == 2 and m["accuracy_std"] >= 0
    # Sampling at temperature 1 from a random model: the repeats of a question differ.
    texts = {r["id"]: set() for r in res.rows}
    for r in res.rows:
        texts[r["id"]].add(r["turns"][0]["response"])
    assert all(len(t) > 1 for t in texts.values())


def test_a_sampled_vision_token_is_an_invalid_turn_not_a_crash(eval_bundle, eval_benchmarks):
    """vLLM's sampler is not ours: a sampled `<|image_pad|>` in turn 1 would make the next
    turn's request carry more image slots than images. The runner's episodes end on it as an
    invalid turn (scored wrong, named in the row) instead of raising or running turn 2."""
    from components.config import EpisodeConfig
    from components.data.parquet import read_records
    from components.engines.base import Engine
    from components.episode import Generation
    from components.evaluation.runner import Chunk, WorkerSettings, first_view_budget, run_chunk
    from components.evaluation.views import views_of
    from components.models.loading import load_bundle
    from components.prompts import load_templates

    _, processor = load_bundle(str(eval_bundle))

    class SamplesAPad(Engine):
        def __init__(self):
            self.processor, self.calls = processor, 0

        def generate(self, episodes, params):
            self.calls += 1
            pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
            return [
                Generation(
                    text="\\boxed{A}", token_ids=[pad, 5], logprobs=[-1.0, -1.0], prompt_delta_ids=[1, 2]
                )
                for _ in episodes
            ]

        def reset(self):
            pass

    records = list(read_records(eval_benchmarks["test"]))[:2]
    views = tuple(v for r in records for v in views_of(r, 0, False, False, 1))
    chunk = Chunk("m", "test", "mgpo", "fp", views, 0)
    engine = SamplesAPad()
    settings = WorkerSettings(EpisodeConfig(), temperature=0.0)
    templates = load_templates("components/templates.yaml", "paper")
    rows = run_chunk(engine, first_view_budget(processor), chunk, settings, templates)
    assert engine.calls == 1  # no second turn
    assert all(r["invalid_turn"] == "sampled_vision_token" and not r["correct"] for r in rows), rows
    assert all("error" not in r or not r["error"] for r in rows)
