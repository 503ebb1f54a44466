"""Prometheus metrics, read from the kernel at every scrape (shell).

Names follow the Prometheus conventions (base units, `_total` for counters):

  vipctl_member_packets_total{cluster,member,port}    packets delivered to the member
  vipctl_member_bytes_total{cluster,member,port}      bytes delivered to the member
  vipctl_member_buckets{cluster,member}               buckets the member owns now
  vipctl_member_target_share{cluster,member}          share the weights ask for (0..1)
  vipctl_member_healthy{cluster,member}               1 up, 0 down
  vipctl_member_pinned_flows{cluster,member}          live pinned flows on the member (as
                                                      counted ..._pinned_flows_age_seconds ago)
  vipctl_member_probe_latency_seconds{cluster,member} last successful probe (daemon only)
  vipctl_cluster_generation{cluster}                  generation of the live table
  vipctl_cluster_info{cluster,backend,fingerprint}    1; fingerprint of the live bucket table
  vipctl_cluster_pinned_flows_age_seconds{cluster}    age of the pinned-flow counts
  vipctl_cluster_swaps_total{cluster}                 ruleset swaps done (daemon only)
  vipctl_cluster_last_swap_seconds{cluster}           duration of the last swap (daemon)
  vipctl_cluster_failovers_total{cluster}             members declared down (daemon only)
  vipctl_cluster_repairs_total{cluster}               drift found and converged (daemon only)
  vipctl_daemon_degraded{cluster}                     1 while the daemon cannot fully do its
                                                      job (probes failing locally, state
                                                      not written)
  vipctl_daemon_members_unprobed{cluster}             members the prober cannot probe now
  vipctl_daemon_probe_local_errors_total{cluster,cause}  probes that failed on this router
                                                      (cause: EMFILE, ENOBUFS, EPERM, bug)
  vipctl_daemon_state_write_failing{cluster}          1 while the state file is behind
  vipctl_daemon_state_write_failures_total{cluster}   state writes that failed
  vipctl_daemon_reload_failures_total{cluster}        SIGHUP reloads rejected or failed

Concurrency: the HTTP server answers every scrape in a thread of its own; the kernel reads
under them serialize on the nftables backend's lock, and counting pinned flows (a listing
of every pin map, seconds with a million flows) runs in at most one thread per cluster at a
time, on its own clock (PinCounts), so overlapping scrapes neither repeat it nor wait
for it longer than `wait`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from vipctl.errors import UsageError, VipctlError
from vipctl.service.stats import PIN_MAX_AGE_S, DaemonStats

log = logging.getLogger("vipctl.metrics")


class PinCounts:
    """Pinned flows per member, counted at most once per `max_age` seconds per cluster.

    A scrape that finds the counts older than that starts one refresh (or joins the one
    running) and waits at most `wait` seconds for it; past that it gets the previous counts
    and their age, and the refresh finishes in the background."""

    def __init__(
        self,
        count: Callable[[str], Mapping[str, int]],
        max_age: float = PIN_MAX_AGE_S,
        wait: float = 1.0,
    ) -> None:
        self._count = count
        self._max_age = max_age
        self._wait = wait
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[float, dict[str, int]]] = {}  # cluster -> (when, counts)
        self._running: dict[str, threading.Event] = {}

    def get(self, cluster: str) -> tuple[dict[str, int], float] | None:
        """(counts, age in seconds), or None before the first count."""
        with self._lock:
            found = self._counts.get(cluster)
            done = self._running.get(cluster)
            if done is None and (found is None or time.monotonic() - found[0] >= self._max_age):
                done = self._running[cluster] = threading.Event()
                threading.Thread(
                    target=self._refresh, args=(cluster, done), name="vipctl-pins", daemon=True
                ).start()
        if done is not None:
            done.wait(self._wait)
        with self._lock:
            found = self._counts.get(cluster)
        return None if found is None else (found[1], time.monotonic() - found[0])

    def _refresh(self, cluster: str, done: threading.Event) -> None:
        started = time.monotonic()
        counts: dict[str, int] | None = None
        try:
            counts = dict(self._count(cluster))
        except VipctlError as exc:
            log.debug("counting pinned flows of %s: %s", cluster, exc)
        finally:
            with self._lock:
                if counts is not None:
                    self._counts[cluster] = (started, counts)
                self._running.pop(cluster, None)
            done.set()


class ClusterCollector(Collector):
    def __init__(
        self,
        clusters: Callable[[], list[str]],
        status: Callable[[str], Mapping[str, Any]],
        stats: Mapping[str, DaemonStats] | None = None,
        pins: PinCounts | None = None,
    ) -> None:
        self._clusters = clusters
        self._status = status  # without pinned counts: those come from `pins`
        self._stats = stats or {}
        self._pins = pins

    def collect(self) -> Iterator[Any]:
        labels = ["cluster", "member"]
        packets = CounterMetricFamily(
            "vipctl_member_packets", "Packets delivered to the member", labels=[*labels, "port"]
        )
        nbytes = CounterMetricFamily(
            "vipctl_member_bytes", "Bytes delivered to the member", labels=[*labels, "port"]
        )
        buckets = GaugeMetricFamily("vipctl_member_buckets", "Buckets owned", labels=labels)
        target = GaugeMetricFamily(
            "vipctl_member_target_share", "Share of buckets the weights ask for", labels=labels
        )
        healthy = GaugeMetricFamily("vipctl_member_healthy", "1 if up", labels=labels)
        pinned = GaugeMetricFamily("vipctl_member_pinned_flows", "Live pinned flows", labels=labels)
        latency = GaugeMetricFamily(
            "vipctl_member_probe_latency_seconds", "Last successful probe", labels=labels
        )
        generation = GaugeMetricFamily(
            "vipctl_cluster_generation", "Generation of the live table", labels=["cluster"]
        )
        swaps = CounterMetricFamily("vipctl_cluster_swaps", "Ruleset swaps", labels=["cluster"])
        last_swap = GaugeMetricFamily(
            "vipctl_cluster_last_swap_seconds", "Duration of the last swap", labels=["cluster"]
        )
        failovers = CounterMetricFamily(
            "vipctl_cluster_failovers", "Members declared down", labels=["cluster"]
        )
        repairs = CounterMetricFamily(
            "vipctl_cluster_repairs",
            "Times the kernel differed from the desired state and was converged back",
            labels=["cluster"],
        )
        info = GaugeMetricFamily(
            "vipctl_cluster_info",
            "1; fingerprint of the live bucket table",
            labels=["cluster", "backend", "fingerprint"],
        )
        pins_age = GaugeMetricFamily(
            "vipctl_cluster_pinned_flows_age_seconds",
            "Age of vipctl_member_pinned_flows",
            labels=["cluster"],
        )
        degraded = GaugeMetricFamily(
            "vipctl_daemon_degraded",
            "1 while the daemon cannot fully do its job",
            labels=["cluster"],
        )
        unprobed = GaugeMetricFamily(
            "vipctl_daemon_members_unprobed",
            "Members whose probes fail locally",
            labels=["cluster"],
        )
        local_errors = CounterMetricFamily(
            "vipctl_daemon_probe_local_errors",
            "Probes that failed on this router, not at the member",
            labels=["cluster", "cause"],
        )
        state_failing = GaugeMetricFamily(
            "vipctl_daemon_state_write_failing",
            "1 while the state file is behind",
            labels=["cluster"],
        )
        state_failures = CounterMetricFamily(
            "vipctl_daemon_state_write_failures", "State writes that failed", labels=["cluster"]
        )
        reload_failures = CounterMetricFamily(
            "vipctl_daemon_reload_failures", "Reloads rejected or failed", labels=["cluster"]
        )
        for name in self._clusters():
            st = self._stats.get(name)
            if st is not None:  # first: they must be there even when the kernel is not
                with st.lock:
                    swaps.add_metric([name], float(st.swaps))
                    last_swap.add_metric([name], st.last_swap_seconds)
                    failovers.add_metric([name], float(st.failovers))
                    repairs.add_metric([name], float(st.repairs))
                    for member, seconds in list(st.probe_latency.items()):
                        latency.add_metric([name, member], seconds)
                    degraded.add_metric([name], 1.0 if st.degraded else 0.0)
                    unprobed.add_metric([name], float(st.unprobed))
                    for cause, n in sorted(st.probe_local_errors.items()):
                        local_errors.add_metric([name, cause], float(n))
                    state_failing.add_metric([name], 1.0 if st.state_write_failing else 0.0)
                    state_failures.add_metric([name], float(st.state_write_failures))
                    reload_failures.add_metric([name], float(st.reload_failures))
            try:
                report = self._status(name)
            except (VipctlError, OSError):  # OSError: e.g. EMFILE, out of descriptors
                continue
            generation.add_metric([name], float(report.get("generation") or 0))
            info.add_metric(
                [name, str(report.get("backend", "")), str(report.get("fingerprint") or "")], 1.0
            )
            counted = self._pins.get(name) if self._pins is not None else None
            if counted is not None:
                pins_age.add_metric([name], round(counted[1], 3))
            for m in report["members"]:
                key = [name, m["name"]]
                packets.add_metric([*key, m["port"]], float(m["packets"]))
                nbytes.add_metric([*key, m["port"]], float(m["bytes"]))
                buckets.add_metric(key, float(m["buckets"]))
                target.add_metric(key, float(m["target"]))
                healthy.add_metric(key, 1.0 if m["healthy"] else 0.0)
                if counted is not None:
                    pinned.add_metric(key, float(counted[0].get(m["name"], 0)))
                elif "pinned" in m:
                    pinned.add_metric(key, float(m["pinned"]))
        yield from (packets, nbytes, buckets, target, healthy, pinned, latency, generation)
        yield from (swaps, last_swap, failovers, repairs, info, pins_age)
        yield from (degraded, unprobed, local_errors, state_failing, state_failures)
        yield reload_failures


def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT, [v6]:PORT or :PORT (all addresses)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--metrics: '{text}' is not ADDR:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(
    listen: str,
    directory: Path,
    clusters: list[str] | None = None,
    stats: Mapping[str, DaemonStats] | None = None,
    pin_max_age: float = PIN_MAX_AGE_S,
) -> Any:
    """Start the exporter in a background thread; returns the server (call .shutdown())."""
    from prometheus_client import start_http_server

    from vipctl import controller

    addr, port = parse_listen(listen)
    registry = CollectorRegistry()
    registry.register(
        ClusterCollector(
            (lambda: list(clusters)) if clusters else (lambda: controller.clusters(directory)),
            lambda name: controller.status(name, directory, pins=False),
            stats,
            PinCounts(lambda name: controller.pin_counts(name, directory), pin_max_age),
        )
    )
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
