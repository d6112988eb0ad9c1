"""The GPU install pins: constraints/gpu.txt and pyproject's gpu extra hold what verl 0.9.1 pins."""

from __future__ import annotations

import re
from importlib.metadata import requires
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;#]+)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def verl_pin(name: str) -> str:
    """The version verl's own metadata pins for `name` in its GPU (torch 2.11) extras."""
    found = {pins([r.split(";")[0]]).get(name) for r in requires("verl") or [] if r.lower().startswith(name)}
    found.discard(None)
    assert len(found) == 1, found
    return found.pop()


def test_flash_attn_is_pinned_to_verls_version_in_both_places():
    """Unpinned, pip built flash-attn from source under build isolation (no torch there)."""
    want = verl_pin("flash-attn")
    assert want == "2.8.3"
    constraints = pins((ROOT / "constraints" / "gpu.txt").read_text().splitlines())
    extra = pins(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    )
    assert constraints.get("flash-attn") == want
    assert extra.get("flash-attn") == want
    # the rest of the GPU set is verl's too
    for name in ("torch", "vllm", "transformers"):
        assert constraints[name] == verl_pin(name), name


def test_the_documented_install_builds_flash_attn_without_isolation():
    doc = (ROOT / "docs" / "scale-out.md").read_text()
    assert "--no-build-isolation" in doc and "flash-attn==2.8.3" in doc
    assert "pip install -c constraints/gpu.txt -e '.[gpu]'" in doc
