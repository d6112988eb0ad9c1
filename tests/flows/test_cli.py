"""The `mgpo` command: help for every subcommand, clear refusals, validated overrides."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.cli import STAGES, build_parser, main

MGPO = str(Path(sys.executable).parent / "mgpo")


def test_console_script_help():
    out = subprocess.run([MGPO, "--help"], capture_output=True, text=True, check=True).stdout
    for name in STAGES:
        assert name in out


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([name, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--params" in out and "-S KEY.PATH=VALUE" in out


def test_bad_override_fails_before_any_work(capsys):
    assert main(["build-model", "-S", "model.bogus=1"]) == 2
    assert "unknown key model.bogus" in capsys.readouterr().err


def test_invalid_value_names_the_key(capsys):
    assert main(["build-model", "-S", "rl.rollouts_per_prompt=1"]) == 2
    assert "rl.rollouts_per_prompt: rollouts per prompt must be >= 2 for GRPO" in capsys.readouterr().err


def test_missing_params_file(capsys, tmp_path):
    assert main(["build-model", "--params", str(tmp_path / "none.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_unbuilt_stage_says_so(monkeypatch, capsys):
    monkeypatch.setitem(STAGES, "rl", ("flows.does_not_exist", "x"))
    assert main(["rl"]) == 2
    assert "not built yet" in capsys.readouterr().err
