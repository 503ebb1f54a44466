"""Kernel facts a ruleset embeds, as plain data (pure): read by host/links.py, used by
every renderer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

NO_MAC = "00:00:00:00:00:00"  # a member that is down and whose MAC is not known


@dataclass(frozen=True)
class Wiring:
    """Each port's ifindex, each member's MAC and the uplink's own MAC."""

    ifindex: Mapping[str, int]  # port name -> ifindex
    macs: Mapping[str, str]  # member name -> MAC
    # the tc backend matches it at the uplink (only frames addressed to this router);
    # None where no renderer needs it (nftables checks `meta pkttype host` instead)
    uplink_mac: str | None = None
