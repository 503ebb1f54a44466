"""Golden files in rulesets/: compare exactly, or rewrite them after a reviewed change.

A test module with golden files declares them as `GOLDENS`, a dict from the file's name in
rulesets/ to a function that renders its content, and checks each with `check(name, text)`.
The orphan check (tests/unit/test_goldens.py) collects `GOLDENS` from every unit test module:
a file in rulesets/ that none of them names fails it.

Regenerate with `VIPCTL_UPDATE_GOLDEN=1 pytest tests/unit` and read `git diff rulesets/`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULESETS = ROOT / "rulesets"
UPDATE_ENV = "VIPCTL_UPDATE_GOLDEN"

Goldens = dict[str, Callable[[], str]]


def updating() -> bool:
    return bool(os.environ.get(UPDATE_ENV))


def check(name: str, text: str) -> None:
    """`text` must equal rulesets/`name`; with $VIPCTL_UPDATE_GOLDEN set, it becomes it."""
    path = RULESETS / name
    if updating():
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        return
    if not path.exists():
        pytest.fail(
            f"no golden file rulesets/{name}: review the rendered text and create it with "
            f"{UPDATE_ENV}=1 pytest tests/unit",
            pytrace=False,
        )
    want = path.read_text()
    if text == want:
        return
    diff = "".join(
        difflib.unified_diff(
            want.splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile=f"rulesets/{name} (golden)",
            tofile=f"{name} (rendered now)",
        )
    )
    pytest.fail(
        f"rendered text differs from rulesets/{name}; if the change is intended, review it "
        f"and rewrite the golden with {UPDATE_ENV}=1 pytest tests/unit\n{diff}",
        pytrace=False,
    )
