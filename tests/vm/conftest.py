"""tests/vm: the tc backend in a QEMU guest. See tests/vm/run and scripts/install-vm-deps."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "vm: boots a QEMU guest (Debian 6.1 kernel with flower) and runs tests there"
    )
