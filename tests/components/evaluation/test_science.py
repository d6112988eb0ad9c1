"""The science sweep's statistics (Wilson, pooling over seeds, Newcombe's difference), its
summary, its plan of params per seed and arm, and the params/science.yaml overlay."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.config import load_params
from components.evaluation import science
from components.evaluation.metrics import wilson_interval

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("right", "n", "low", "high"),
    [  # textbook Wilson score intervals at 95%
        (8, 10, 0.4902, 0.9433),
        (0, 10, 0.0, 0.2775),
        (50, 100, 0.4038, 0.5962),
        (10, 10, 0.7225, 1.0),
    ],
)
def test_wilson_interval_known_values(right, n, low, high):
    got = science.proportion(right / n, n)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((low, high), abs=1e-4)
    assert (got["ci_low"], got["ci_high"]) == wilson_interval(right, n)


def test_pooling_over_seeds():
    per_seed = {
        "0": science.proportion(0.5, 10),
        "1": science.proportion(0.7, 10),
        "2": science.proportion(0.9, 20),
    }
    p = science.pooled(per_seed)
    assert p["n"] == 40 and p["accuracy"] == pytest.approx(30 / 40)  # 5 + 7 + 18 right of 40
    assert (p["ci_low"], p["ci_high"]) == pytest.approx(wilson_interval(30, 40))
    assert p["seed_mean"] == pytest.approx(0.7) and p["seed_std"] == pytest.approx(0.2)  # sample std
    assert p["seeds"] == 3
    one = science.pooled({"0": science.proportion(0.25, 8)})
    assert one["seed_std"] is None and one["accuracy"] == 0.25 and one["n"] == 8


def test_newcombe_difference_and_overlap():
    # Newcombe (1998), method 10: 56/70 - 48/80 = 0.2, 95% interval 0.0524 to 0.3339
    d = science.difference(science.proportion(56 / 70, 70), science.proportion(48 / 80, 80))
    assert d["difference"] == pytest.approx(0.2)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert d["intervals_overlap"]  # [0.69, 0.88] and [0.49, 0.70]
    apart = science.difference(science.proportion(0.9, 100), science.proportion(0.3, 100))
    assert not apart["intervals_overlap"] and apart["ci_low"] > 0


def _metrics(arm: str, mgpo: float, direct: float, n: int = 10) -> dict:
    return {
        arm: {"synthetic_test": {"mgpo": {"accuracy": mgpo, "n": n}, "direct": {"accuracy": direct, "n": n}}}
    }


def test_summary_per_seed_pooled_and_mgpo_minus_direct():
    metrics = {
        (0, "mgpo"): _metrics("mgpo", 0.8, 0.3),
        (1, "mgpo"): _metrics("mgpo", 0.6, 0.1),
        (0, "direct"): _metrics("direct", 0.4, 0.3),
        (1, "direct"): _metrics("direct", 0.2, 0.5),
    }
    s = science.summarize(metrics, [0, 1], ["mgpo", "direct"], ["mgpo", "direct"], ["synthetic_test"])
    bench = s["benchmarks"]["synthetic_test"]
    cell = bench["arms"]["mgpo"]["mgpo"]
    assert cell["per_seed"]["1"]["accuracy"] == 0.6 and cell["per_seed"]["1"]["n"] == 10
    assert cell["pooled"]["accuracy"] == pytest.approx(0.7) and cell["pooled"]["n"] == 20
    own = bench["comparisons"]["own_protocol"]  # MGPO arm in mgpo mode vs direct arm in direct mode
    assert (own["mgpo_arm_mode"], own["direct_arm_mode"]) == ("mgpo", "direct")
    assert own["mgpo"] == pytest.approx(0.7) and own["direct"] == pytest.approx(0.4)
    assert own["difference"] == pytest.approx(0.3)
    assert own["per_seed_difference"] == pytest.approx({"0": 0.5, "1": 0.1})
    assert own["intervals_overlap"] == (
        cell["pooled"]["ci_low"] <= bench["arms"]["direct"]["direct"]["pooled"]["ci_high"]
    )
    assert bench["comparisons"]["mgpo_protocol"]["difference"] == pytest.approx(0.7 - 0.3)
    md = science.to_markdown(s, {"rl.max_steps": 30})
    assert "## synthetic_test" in md and "`rl.max_steps=30`" in md
    assert "| mgpo | mgpo | 80.0 [" in md and "| own protocol | mgpo 70.0 | direct 40.0 | 30.0 [" in md
    figures = science.flat_figures(s)
    assert figures["synthetic_test.mgpo_minus_direct.own_protocol"] == pytest.approx(0.3)
    # one arm only: no comparison
    solo = science.summarize(
        {k: v for k, v in metrics.items() if k[1] == "mgpo"}, [0, 1], ["mgpo"], ["mgpo"], ["synthetic_test"]
    )
    assert solo["benchmarks"]["synthetic_test"]["comparisons"] == {}


def test_the_plan_sets_seeds_modes_and_separate_folders(tmp_path):
    params = load_params(ROOT / "params.yaml", [f"science.out_dir={tmp_path}"])
    seeded = science.seed_params(params, 2)
    assert (seeded.sft.seed, seeded.rl.seed) == (2, 2)
    assert seeded.paths.sft_model == str(tmp_path / "seed_2/sft/model")
    arms = {arm: science.arm_params(seeded, 2, arm) for arm in ("mgpo", "direct")}
    assert arms["direct"].rl.mode == "direct" and arms["mgpo"].rl.mode == "mgpo"
    assert arms["direct"].paths.sft_model == seeded.paths.sft_model  # both arms start from it
    assert arms["direct"].evaluate.models == {"direct": str(tmp_path / "seed_2/direct/model")}
    assert arms["direct"].evaluate.modes == ["mgpo", "direct"]
    assert arms["mgpo"].rl.max_steps == arms["direct"].rl.max_steps  # equal budget
    assert arms["mgpo"].evaluate.seed == params.evaluate.seed  # paired questions
    assert len({a.paths.rl_model for a in arms.values()} | {a.paths.eval_dir for a in arms.values()}) == 4
    fp = science.sft_fingerprint(seeded)
    assert (
        fp
        == science.sft_fingerprint(science.seed_params(params, 2))
        != science.sft_fingerprint(science.seed_params(params, 3))
    )
    assert science.arm_fingerprint(arms["mgpo"], fp) != science.arm_fingerprint(arms["direct"], fp)
    assert science.is_done(tmp_path, fp) is None
    science.mark_done(tmp_path, fp, seconds=1.0)
    assert science.is_done(tmp_path, fp)["seconds"] == 1.0
    assert science.is_done(tmp_path, "other") is None
    assert science.is_done(tmp_path, fp, [tmp_path / "absent"]) is None


def test_science_preset_is_a_partial_overlay_of_differing_keys():
    overlay = yaml.safe_load((ROOT / "params/science.yaml").read_text())
    base = yaml.safe_load((ROOT / "params.yaml").read_text())

    def leaves(node, prefix=()):
        for k, v in node.items():
            yield from leaves(v, (*prefix, k)) if isinstance(v, dict) else [((*prefix, k), v)]

    for path, value in leaves(overlay):
        node = base
        for k in path:
            assert k in node, f"params/science.yaml sets {'.'.join(path)}, which params.yaml lacks"
            node = node[k]
        assert node != value, f"params/science.yaml repeats params.yaml's {'.'.join(path)}"
    params = load_params([ROOT / "params.yaml", ROOT / "params/science.yaml"])
    assert params.science.seeds == [0, 1, 2] and params.science.modes == ["mgpo", "direct"]
    assert params.sft.direct_share > 0  # both protocols trained: direct is a fair baseline
