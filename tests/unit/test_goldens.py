"""Every file in rulesets/ is produced by a golden test: nothing there goes stale unchecked.

The expected set is the union of `GOLDENS` over the unit test modules (tests/unit/goldens.py),
so the check does not depend on which tests ran before it.
"""

from __future__ import annotations

import importlib
import pkgutil

from tests import unit
from tests.unit import goldens


def produced() -> dict[str, str]:
    """Golden file name -> the test module that renders it."""
    out: dict[str, str] = {}
    for info in pkgutil.iter_modules(unit.__path__):
        if not info.name.startswith("test_") or info.name == __name__.rsplit(".", 1)[-1]:
            continue
        module = importlib.import_module(f"{unit.__name__}.{info.name}")
        for name in getattr(module, "GOLDENS", {}):
            assert name not in out, (
                f"rulesets/{name} is produced by {out.get(name)} and {info.name}"
            )
            out[name] = info.name
    return out


def test_every_golden_file_is_produced_by_a_test() -> None:
    expected = produced()
    assert len(expected) >= 14  # 3 per example (4 examples), 3 per tc mode
    files = {p.name for p in goldens.RULESETS.iterdir() if p.is_file()}
    orphans = sorted(files - set(expected))
    assert not orphans, (
        f"no golden test produces {', '.join(f'rulesets/{n}' for n in orphans)}: delete the "
        "file(s) or add them to the GOLDENS of a test module"
    )
    missing = sorted(set(expected) - files)
    assert not missing, f"golden files not written yet: {missing} (VIPCTL_UPDATE_GOLDEN=1)"
