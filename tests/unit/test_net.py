from __future__ import annotations

import pytest

from vipctl.core.net import family, mac_bytes


def test_family() -> None:
    assert family("198.51.100.253") == 4 and family("198.51.100.0/24") == 4
    assert family("2001:db8::1") == 6 and family("2001:db8::/64") == 6


def test_mac_bytes() -> None:
    assert mac_bytes("02:00:00:00:01:0a") == b"\x02\x00\x00\x00\x01\x0a"
    with pytest.raises(ValueError):
        mac_bytes("02:00:00")
