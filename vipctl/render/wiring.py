"""Kernel facts a ruleset embeds, as plain data (pure): read by host/links.py, used by
every renderer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

NO_MAC = "00:00:00:00:00:00"  # a member that is down and whose MAC is not known


@dataclass(frozen=True)
class Wiring:
    """Each port's ifindex and each member's MAC."""

    ifindex: Mapping[str, int]  # port name -> ifindex
    macs: Mapping[str, str]  # member name -> MAC
