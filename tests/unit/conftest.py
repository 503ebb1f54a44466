"""Unit tests write nothing outside their temporary directories: the daemon's status
file falls back to the runtime directory (/run/vipctl) when the state directory is not
writable; here that is a temporary directory too."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _runtime_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    from vipctl.service import daemonstatus

    runtime = tmp_path_factory.mktemp("run")
    monkeypatch.setattr(daemonstatus, "RUNTIME_DIR", runtime)
    return runtime
