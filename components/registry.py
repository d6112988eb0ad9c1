"""The promotion gate: compare the candidate with its parent and the champion; move `champion`.

`decide` is a pure function of gate figures (value of the gate metric, questions evaluated and
expected) and the margin. The candidate is promoted only when its evaluation is complete and it
beats, by at least `min_improvement` and strictly (a tie is not better), both
- its parent: the model it was trained from (the SFT model), scored in the same evaluation, and
- the champion, scored on the same gate (with no champion yet, this comparison is skipped).
So a first run no longer promotes an RL model that scores below its own SFT model. Every
decision, with every figure, both comparisons and the reason, is written as tags on the
candidate's model version and as a JSON file (the DVC metrics file `paths.promotion`).

History lives in version tags: the promoted version records `mgpo.promotion.previous_champion`,
so `rollback` moves `champion` back along that chain and marks the version it left as rolled
back (a rolled-back version is never promoted again automatically).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CHAMPION = "champion"
CANDIDATE = "candidate"
TAG = "mgpo.promotion."
PREVIOUS_TAG = TAG + "previous_champion"
ROLLED_BACK_TAG = TAG + "rolled_back_at"
# A tolerance for "at least the margin": 0.6 - 0.5 is 0.09999999999999998 in floats.
EPS = 1e-9


class RegistryError(RuntimeError):
    """The registry is not in a state the operation needs; the message names model and alias."""


@dataclass(frozen=True)
class GateFigure:
    """The gate metric of one model: its value and how much of the gate benchmark it covers."""

    value: float | None
    evaluated: int
    expected: int
    version: str | None = None
    source: str = ""
    model: str = ""
    """The evaluation's name for the model (rl, sft, champion)."""

    @property
    def complete(self) -> bool:
        return (
            self.value is not None
            and not math.isnan(self.value)
            and self.expected > 0
            and self.evaluated >= self.expected
        )


@dataclass(frozen=True)
class Decision:
    promote: bool
    outcome: str
    """no_champion | better | worse | within_margin | worse_than_parent | within_margin_of_parent |
    incomplete | already_champion | rolled_back"""
    reason: str
    candidate: GateFigure | None
    champion: GateFigure | None
    min_improvement: float
    parent: GateFigure | None = None
    """The model the candidate was trained from, or None when the gate does not compare with it."""

    @property
    def delta(self) -> float | None:
        """Candidate minus champion."""
        return _delta(self.candidate, self.champion)

    @property
    def parent_delta(self) -> float | None:
        """Candidate minus parent."""
        return _delta(self.candidate, self.parent)


def _delta(a: GateFigure | None, b: GateFigure | None) -> float | None:
    if a is None or b is None or a.value is None or b.value is None:
        return None
    return a.value - b.value


def beats(candidate: GateFigure, other: GateFigure, min_improvement: float) -> bool:
    """Better by at least the margin, and strictly: a tie never beats (also with margin 0)."""
    delta = candidate.value - other.value
    return delta > 0 and delta >= min_improvement - EPS


def _fmt(fig: GateFigure) -> str:
    value = "n/a" if fig.value is None else f"{fig.value:.4f}"
    who = f"version {fig.version}" if fig.version else (fig.model or "model")
    return f"{who}: {value} on {fig.evaluated}/{fig.expected} questions"


def decide(
    candidate: GateFigure | None,
    champion: GateFigure | None,
    min_improvement: float,
    *,
    parent: GateFigure | None = None,
    candidate_rolled_back: bool = False,
) -> Decision:
    """Promote or keep. `champion` is None when no version holds the alias yet; `parent` is
    None when the gate does not compare with the model the candidate was trained from."""

    def out(promote: bool, outcome: str, reason: str) -> Decision:
        return Decision(promote, outcome, reason, candidate, champion, min_improvement, parent)

    if candidate is None:
        return out(False, "incomplete", "the candidate has no figure on the gate")
    if not candidate.complete:
        return out(False, "incomplete", f"the candidate's evaluation is incomplete ({_fmt(candidate)})")
    if champion is not None and candidate.version is not None and candidate.version == champion.version:
        return out(False, "already_champion", f"version {candidate.version} already holds {CHAMPION}")
    if candidate_rolled_back:
        return out(
            False,
            "rolled_back",
            f"version {candidate.version} was rolled back from {CHAMPION}; promote it by hand if wanted",
        )
    beat_parent = ""
    if parent is not None:
        if not parent.complete:
            return out(
                False, "incomplete", f"the parent's evaluation on the gate is incomplete ({_fmt(parent)})"
            )
        d = candidate.value - parent.value
        versus = f"candidate {_fmt(candidate)} vs its parent {_fmt(parent)}"
        if d < 0:
            return out(False, "worse_than_parent", f"{versus}: {d:.4f}")
        if not beats(candidate, parent, min_improvement):
            return out(
                False,
                "within_margin_of_parent",
                f"{versus}: {d:+.4f} does not beat margin {min_improvement} (a tie is not better)",
            )
        beat_parent = f"; it beats its parent {parent.model or 'model'} by {d:+.4f}"
    if champion is None:
        return out(
            True,
            "no_champion",
            f"no {CHAMPION} yet; the candidate is complete ({_fmt(candidate)}){beat_parent}",
        )
    if not champion.complete:
        return out(False, "incomplete", f"the champion's evaluation is incomplete ({_fmt(champion)})")
    delta = candidate.value - champion.value
    versus = f"candidate {_fmt(candidate)} vs champion {_fmt(champion)}"
    if beats(candidate, champion, min_improvement):
        return out(True, "better", f"{versus}: +{delta:.4f} >= margin {min_improvement}{beat_parent}")
    if delta < 0:
        return out(False, "worse", f"{versus}: {delta:.4f}")
    return out(False, "within_margin", f"{versus}: {delta:+.4f} does not beat margin {min_improvement}")


def gate_figure(
    metrics: dict,
    model: str,
    benchmark: str,
    mode: str,
    metric: str,
    expected: int,
    *,
    version: str | None = None,
    source: str = "",
) -> GateFigure | None:
    """Read one figure from an evaluation's metrics.json (model -> benchmark -> mode -> metrics).

    `n` (questions evaluated) against `expected` tells whether the evaluation is complete.
    None when the entry is missing: the model was not evaluated on the gate at all.
    """
    entry = metrics.get(model, {}).get(benchmark, {}).get(mode)
    if entry is None:
        return None
    if metric not in entry:
        raise KeyError(f"metric {metric!r} not in the metrics of {model}/{benchmark}/{mode}: {sorted(entry)}")
    return GateFigure(
        value=float(entry[metric]),
        evaluated=int(entry.get("n", 0)),
        expected=int(expected),
        version=version,
        source=source,
    )


def decision_record(decision: Decision, gate: dict[str, Any], candidate_version: str | None) -> dict:
    """The JSON written to paths.promotion: numbers first (DVC metrics), then the words."""

    def fig(f: GateFigure | None) -> dict | None:
        return None if f is None else {**asdict(f), "complete": f.complete}

    def versus(other: GateFigure | None, delta: float | None) -> dict | None:
        """One comparison: the other figure, the difference, whether the candidate beats it."""
        if other is None:
            return None
        c = decision.candidate
        comparable = c is not None and c.complete and other.complete
        return {
            "model": other.model,
            "version": other.version,
            "value": other.value,
            "delta": delta,
            "beaten": bool(beats(c, other, decision.min_improvement)) if comparable else None,
        }

    return {
        "promoted": int(decision.promote),
        "candidate_value": None if decision.candidate is None else decision.candidate.value,
        "champion_value": None if decision.champion is None else decision.champion.value,
        "delta": decision.delta,  # candidate - champion
        "parent_value": None if decision.parent is None else decision.parent.value,
        "parent_delta": decision.parent_delta,  # candidate - parent
        "min_improvement": decision.min_improvement,
        "outcome": decision.outcome,
        "reason": decision.reason,
        "candidate_version": candidate_version,
        "previous_champion_version": None if decision.champion is None else decision.champion.version,
        "gate": gate,
        "candidate": fig(decision.candidate),
        "champion": fig(decision.champion),
        "parent": fig(decision.parent),
        # Both comparisons the gate makes; the candidate is promoted only when it beats each
        # that exists (no champion yet: that one is null).
        "comparisons": {
            "parent": versus(decision.parent, decision.parent_delta),
            "champion": versus(decision.champion, decision.delta),
        },
    }


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write JSON so that a crash never leaves a torn file DVC could take as the result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the registry (MLflow) ------------------------------------------------------------------


def alias_version(client, name: str, alias: str):
    """The ModelVersion holding `alias`, or None (also when the model is not registered).

    Note: its `.version` is an int with some stores and a str with others; compare as str.
    """
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def tag_decision(client, name: str, version: str, record: dict) -> None:
    """Decision, both figures and the reason as tags on the candidate version."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tags = {
        "decision": "promoted" if record["promoted"] else "kept",
        "outcome": record["outcome"],
        "reason": record["reason"],
        "candidate_value": record["candidate_value"],
        "champion_value": record["champion_value"],
        "champion_version": record["previous_champion_version"],
        "parent_model": (record.get("parent") or {}).get("model"),
        "parent_value": record.get("parent_value"),
        "parent_delta": record.get("parent_delta"),
        "champion_delta": record.get("delta"),
        "gate": "{benchmark}/{mode}/{metric}".format(**record["gate"]),
        "decided_at": stamp,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, TAG + key, "" if value is None else str(value))


def promote(client, name: str, version: str, previous: str | None) -> None:
    """Move `champion` to `version`, remembering who held it (the rollback chain)."""
    client.set_model_version_tag(name, version, PREVIOUS_TAG, previous or "")
    client.set_model_version_tag(
        name, version, TAG + "promoted_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    )
    client.set_registered_model_alias(name, CHAMPION, version)


def rollback(client, name: str) -> tuple[str, str]:
    """Move `champion` back to its previous holder; returns (left version, new champion)."""
    current = alias_version(client, name, CHAMPION)
    if current is None:
        raise RegistryError(f"registered model {name!r} has no {CHAMPION!r} alias to roll back")
    previous = current.tags.get(PREVIOUS_TAG, "")
    if not previous:
        raise RegistryError(
            f"{name!r} version {current.version} holds {CHAMPION!r} but records no previous champion"
        )
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    left = str(current.version)
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, left, ROLLED_BACK_TAG, stamp)
    client.set_model_version_tag(name, left, TAG + "rolled_back_to", previous)
    client.set_model_version_tag(name, previous, TAG + "restored_at", stamp)
    return left, previous
