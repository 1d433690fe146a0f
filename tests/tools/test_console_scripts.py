"""Every console script in pyproject.toml names a tool's main function, and every tool has a console script."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_console_scripts_cover_the_tools() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    modules = set()
    for target in scripts.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), target
        modules.add(module.rsplit(".", 1)[-1])
    tools = {p.stem for p in (REPO / "paddlemix" / "tools").glob("*.py") if p.stem != "__init__"}
    assert modules == tools
