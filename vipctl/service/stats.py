"""What only a running daemon knows, for the metrics endpoint (no prometheus import here:
the daemon loads prometheus_client only when --metrics is given)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class DaemonStats:
    """What only a running daemon knows; it updates these, scrapes read them."""

    swaps: int = 0
    last_swap_seconds: float = 0.0
    failovers: int = 0
    probe_latency: dict[str, float] = field(default_factory=dict)
    announced: bool | None = None  # bgp: are the VIPs announced (None: no bgp section)
    lock: threading.Lock = field(default_factory=threading.Lock)
