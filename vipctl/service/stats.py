"""What only a running daemon knows, for the metrics endpoint (no prometheus import here:
the daemon loads prometheus_client only when --metrics is given)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

# the metrics endpoint counts pinned flows (a listing of every pin map) at most this often;
# here, not in metrics.py, so that `vipctl metrics --pins-max-age` shows it without
# importing prometheus_client
PIN_MAX_AGE_S = 15.0


@dataclass
class DaemonStats:
    """What only a running daemon knows; it updates these, scrapes read them."""

    swaps: int = 0
    last_swap_seconds: float = 0.0
    failovers: int = 0
    repairs: int = 0  # applies that found the kernel differing from the desired state
    probe_latency: dict[str, float] = field(default_factory=dict)
    # the daemon's own trouble: it cannot fully do its job while any of these is set
    probe_local_errors: dict[str, int] = field(default_factory=dict)  # cause -> count
    unprobed: int = 0  # members whose probes fail locally (their health is frozen)
    state_write_failing: bool = False  # the kernel is ahead of the state file
    state_write_failures: int = 0
    reload_failures: int = 0
    announced: bool | None = None  # bgp: are the VIPs announced (None: no bgp section)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def degraded(self) -> bool:
        return self.unprobed > 0 or self.state_write_failing
