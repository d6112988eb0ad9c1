"""Promotion gate on hand-made figures and metrics; alias moves and rollback on a real sqlite registry."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlflow import MlflowClient

from components import registry
from components.registry import Decision, GateFigure, decide, gate_figure

unit = st.floats(0, 1, allow_nan=False)


def fig(value, evaluated=64, expected=64, version=None):
    return GateFigure(value, evaluated, expected, version)


@pytest.mark.parametrize(
    ("candidate", "champion", "margin", "promote", "outcome"),
    [
        (fig(0.50, version="2"), None, 0.0, True, "no_champion"),
        (fig(0.60, version="2"), fig(0.50, version="1"), 0.0, True, "better"),
        (
            fig(0.60, version="2"),
            fig(0.50, version="1"),
            0.1,
            True,
            "better",
        ),  # exactly the margin (float noise)
        (fig(0.55, version="2"), fig(0.50, version="1"), 0.1, False, "within_margin"),
        (fig(0.50, version="2"), fig(0.50, version="1"), 0.0, False, "within_margin"),  # a tie keeps
        (fig(0.40, version="2"), fig(0.50, version="1"), 0.0, False, "worse"),
        (fig(0.90, 63, 64, "2"), fig(0.50, version="1"), 0.0, False, "incomplete"),
        (fig(0.90, 63, 64, "2"), None, 0.0, False, "incomplete"),
        (fig(None, 0, 64, "2"), None, 0.0, False, "incomplete"),
        (fig(0.90, 0, 0, "2"), None, 0.0, False, "incomplete"),  # an empty gate is never complete
        (fig(float("nan"), version="2"), None, 0.0, False, "incomplete"),
        (None, fig(0.5, version="1"), 0.0, False, "incomplete"),
        (fig(0.90, version="2"), fig(0.50, 10, 64, "1"), 0.0, False, "incomplete"),  # champion's eval partial
        (fig(0.90, version="2"), fig(0.90, version="2"), 0.0, False, "already_champion"),
    ],
)
def test_decide(candidate, champion, margin, promote, outcome):
    d = decide(candidate, champion, margin)
    assert (d.promote, d.outcome) == (promote, outcome)
    assert d.reason


@pytest.mark.parametrize(
    ("candidate", "parent", "champion", "margin", "promote", "outcome"),
    [
        # The case that was promoted: no champion yet, the RL model below its own SFT model.
        (fig(0.328, version="2"), fig(0.375), None, 0.0, False, "worse_than_parent"),
        (fig(0.50, version="2"), fig(0.50), None, 0.0, False, "within_margin_of_parent"),  # a tie
        (fig(0.55, version="2"), fig(0.50), None, 0.1, False, "within_margin_of_parent"),
        (fig(0.60, version="2"), fig(0.50), None, 0.1, True, "no_champion"),  # exactly the margin
        (fig(0.60, version="2"), fig(0.50), fig(0.55, version="1"), 0.0, True, "better"),
        (fig(0.60, version="2"), fig(0.70), fig(0.40, version="1"), 0.0, False, "worse_than_parent"),
        (fig(0.60, version="2"), fig(0.50), fig(0.60, version="1"), 0.0, False, "within_margin"),
        (fig(0.60, version="2"), fig(0.50), fig(0.65, version="1"), 0.0, False, "worse"),
        (fig(0.60, version="2"), fig(0.50, 60, 64), None, 0.0, False, "incomplete"),  # parent partial
        (fig(0.60, version="2"), fig(None, 0, 64), None, 0.0, False, "incomplete"),  # parent missing
    ],
)
def test_decide_with_the_parent(candidate, parent, champion, margin, promote, outcome):
    d = decide(candidate, champion, margin, parent=parent)
    assert (d.promote, d.outcome) == (promote, outcome), d.reason
    assert d.parent is parent


def test_both_comparisons_are_recorded():
    parent = GateFigure(0.375, 64, 64, None, "metrics.json", "sft")
    gate = {"benchmark": "b", "mode": "mgpo", "metric": "accuracy", "expected_questions": 64}
    d = decide(fig(0.328, version="2"), None, 0.0, parent=parent)
    assert "vs its parent sft: 0.3750" in d.reason
    record = registry.decision_record(d, gate, "2")
    assert record["promoted"] == 0 and record["outcome"] == "worse_than_parent"
    assert record["parent_value"] == 0.375 and record["parent_delta"] == pytest.approx(-0.047)
    assert record["comparisons"]["parent"] == {
        "model": "sft",
        "version": None,
        "value": 0.375,
        "delta": pytest.approx(-0.047),
        "beaten": False,
    }
    assert record["comparisons"]["champion"] is None  # no champion yet
    d = decide(fig(0.6, version="3"), fig(0.5, version="1"), 0.0, parent=parent)
    comparisons = registry.decision_record(d, gate, "3")["comparisons"]
    assert comparisons["parent"]["beaten"] is True and comparisons["champion"]["beaten"] is True
    assert comparisons["champion"]["version"] == "1" and "beats its parent sft by +0.2250" in d.reason


@given(unit, unit, unit, st.floats(0, 0.5, allow_nan=False), st.booleans())
def test_decide_with_parent_properties(cand, par, champ, margin, has_champion):
    champion = fig(champ, version="1") if has_champion else None
    d = decide(fig(cand, version="2"), champion, margin, parent=fig(par))
    beats_parent = cand - par > 0 and cand - par >= margin - registry.EPS
    beats_champion = not has_champion or (cand - champ > 0 and cand - champ >= margin - registry.EPS)
    assert d.promote == (beats_parent and beats_champion)


def test_reason_carries_both_figures():
    d = decide(fig(0.6, version="3"), fig(0.5, version="1"), 0.05)
    assert "version 3: 0.6000 on 64/64" in d.reason and "version 1: 0.5000" in d.reason
    assert d.delta == pytest.approx(0.1)


def test_rolled_back_candidate_is_not_promoted_again():
    d = decide(fig(0.9, version="3"), fig(0.5, version="1"), 0.0, candidate_rolled_back=True)
    assert (d.promote, d.outcome) == (False, "rolled_back")


@given(unit, unit, st.floats(0, 0.5, allow_nan=False), st.integers(0, 70))
def test_decide_properties(cand, champ, margin, evaluated):
    d = decide(fig(cand, evaluated, 64, "2"), fig(champ, version="1"), margin)
    complete = evaluated >= 64
    assert d.promote == (complete and cand - champ > 0 and cand - champ >= margin - registry.EPS)
    if not complete:
        assert d.outcome == "incomplete"
    elif cand < champ:
        assert d.outcome == "worse"


METRICS = {
    "rl": {
        "synthetic_test": {
            "mgpo": {"accuracy": 0.625, "n": 64, "errors": 0},
            "direct": {"accuracy": 0.4, "n": 64},
        }
    },
    "base": {"synthetic_test": {"mgpo": {"accuracy": 0.25, "n": 30}}},
}


def test_gate_figure_from_metrics():
    f = gate_figure(METRICS, "rl", "synthetic_test", "mgpo", "accuracy", 64, version="4")
    assert f == GateFigure(0.625, 64, 64, "4", "") and f.complete
    assert not gate_figure(METRICS, "base", "synthetic_test", "mgpo", "accuracy", 64).complete
    assert gate_figure(METRICS, "sft", "synthetic_test", "mgpo", "accuracy", 64) is None
    assert gate_figure(METRICS, "rl", "scale_sweep", "mgpo", "accuracy", 64) is None
    with pytest.raises(KeyError, match="metric 'mean_iou' not in the metrics of rl/synthetic_test/direct"):
        gate_figure(METRICS, "rl", "synthetic_test", "direct", "mean_iou", 64)


def test_decision_record_and_atomic_write(tmp_path):
    d = decide(fig(0.6, version="3"), fig(0.5, version="1"), 0.0)
    gate = {"benchmark": "synthetic_test", "mode": "mgpo", "metric": "accuracy", "expected_questions": 64}
    record = registry.decision_record(d, gate, "3")
    assert record["promoted"] == 1 and record["outcome"] == "better"
    assert record["candidate_value"] == 0.6 and record["champion_value"] == 0.5
    assert record["previous_champion_version"] == "1" and record["candidate"]["complete"] is True
    out = tmp_path / "results" / "promotion.json"
    registry.write_json_atomic(out, record)
    assert json.loads(out.read_text()) == record
    assert [p.name for p in out.parent.iterdir()] == ["promotion.json"]  # no temp file left

    class Boom:
        def __repr__(self):  # json.dump fails half-way: the old file must survive intact
            raise RuntimeError("boom")

    with pytest.raises(TypeError):
        registry.write_json_atomic(out, {"a": 1, "b": Boom()})
    assert json.loads(out.read_text()) == record
    assert [p.name for p in out.parent.iterdir()] == ["promotion.json"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating one costs seconds); each test has its own model."""
    import mlflow

    path = tmp_path_factory.mktemp("registry")
    mlflow.set_tracking_uri(f"sqlite:///{path / 'mlflow.db'}")
    return path


@pytest.fixture
def client(store, request):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    c = MlflowClient()
    name = request.node.name
    c.create_registered_model(name)
    for _ in range(4):
        c.create_model_version(name, source=str(store))
    return c, name


def test_promote_and_rollback_chain(client):
    client, m = client
    assert registry.alias_version(client, m, registry.CHAMPION) is None
    assert registry.alias_version(client, "no-such-model", registry.CHAMPION) is None
    with pytest.raises(registry.RegistryError, match="has no 'champion' alias"):
        registry.rollback(client, m)

    registry.promote(client, m, "1", None)
    registry.promote(client, m, "2", "1")
    registry.promote(client, m, "4", "2")
    assert str(registry.alias_version(client, m, registry.CHAMPION).version) == "4"

    assert registry.rollback(client, m) == ("4", "2")
    assert str(registry.alias_version(client, m, registry.CHAMPION).version) == "2"
    left = client.get_model_version(m, "4").tags
    assert registry.ROLLED_BACK_TAG in left and left["mgpo.promotion.rolled_back_to"] == "2"
    assert registry.rollback(client, m) == ("2", "1")
    with pytest.raises(registry.RegistryError, match="version 1 holds 'champion' but records no previous"):
        registry.rollback(client, m)


def test_tag_decision(client):
    client, m = client
    d: Decision = decide(fig(0.4, version="2"), fig(0.5, version="1"), 0.0)
    gate = {"benchmark": "b", "mode": "mgpo", "metric": "accuracy", "expected_questions": 64}
    registry.tag_decision(client, m, "2", registry.decision_record(d, gate, "2"))
    tags = client.get_model_version(m, "2").tags
    assert tags["mgpo.promotion.decision"] == "kept" and tags["mgpo.promotion.outcome"] == "worse"
    assert tags["mgpo.promotion.candidate_value"] == "0.4" and tags["mgpo.promotion.champion_value"] == "0.5"
    assert tags["mgpo.promotion.champion_version"] == "1" and tags["mgpo.promotion.gate"] == "b/mgpo/accuracy"
    assert "-0.1000" in tags["mgpo.promotion.reason"]
