"""Tests that run INSIDE the QEMU guest of tests/vm/run (Debian's 6.1 kernel with
cls_flower, act_pedit, act_gact). Elsewhere they are skipped: the host kernel lacks those."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("VIPCTL_IN_VM") == "1":
        return
    skip = pytest.mark.skip(reason="runs inside the QEMU guest only: use tests/vm/run")
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(skip)
