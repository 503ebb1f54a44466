"""Prometheus metrics, read from the kernel at every scrape (shell).

Names follow the Prometheus conventions (base units, `_total` for counters):

  vipctl_member_packets_total{cluster,member,port}    packets delivered to the member
  vipctl_member_bytes_total{cluster,member,port}      bytes delivered to the member
  vipctl_member_buckets{cluster,member}               buckets the member owns now
  vipctl_member_target_share{cluster,member}          share the weights ask for (0..1)
  vipctl_member_healthy{cluster,member}               1 up, 0 down
  vipctl_member_pinned_flows{cluster,member}          live pinned flows on the member
  vipctl_member_probe_latency_seconds{cluster,member} last successful probe (daemon only)
  vipctl_cluster_generation{cluster}                  generation of the live table
  vipctl_cluster_swaps_total{cluster}                 ruleset swaps done (daemon only)
  vipctl_cluster_last_swap_seconds{cluster}           duration of the last swap (daemon)
  vipctl_cluster_failovers_total{cluster}             members declared down (daemon only)
  vipctl_daemon_degraded{cluster}                     1 while the daemon cannot fully do its
                                                      job (probes failing locally, state
                                                      not written)
  vipctl_daemon_members_unprobed{cluster}             members the prober cannot probe now
  vipctl_daemon_probe_local_errors_total{cluster,cause}  probes that failed on this router
                                                      (cause: EMFILE, ENOBUFS, EPERM, bug)
  vipctl_daemon_state_write_failing{cluster}          1 while the state file is behind
  vipctl_daemon_state_write_failures_total{cluster}   state writes that failed
  vipctl_daemon_reload_failures_total{cluster}        SIGHUP reloads rejected or failed
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from vipctl.errors import UsageError, VipctlError
from vipctl.service.stats import DaemonStats


class ClusterCollector(Collector):
    def __init__(
        self,
        clusters: Callable[[], list[str]],
        status: Callable[[str], Mapping[str, Any]],
        stats: Mapping[str, DaemonStats] | None = None,
    ) -> None:
        self._clusters = clusters
        self._status = status
        self._stats = stats or {}

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
            for m in report["members"]:
                key = [name, m["name"]]
                packets.add_metric([*key, m["port"]], float(m["packets"]))
                nbytes.add_metric([*key, m["port"]], float(m["bytes"]))
                buckets.add_metric(key, float(m["buckets"]))
                target.add_metric(key, float(m["target"]))
                healthy.add_metric(key, 1.0 if m["healthy"] else 0.0)
                pinned.add_metric(key, float(m.get("pinned", 0)))
        yield from (packets, nbytes, buckets, target, healthy, pinned, latency, generation)
        yield from (swaps, last_swap, failovers)
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
) -> Any:
    """Start the exporter in a background thread; returns the server (call .shutdown())."""
    from prometheus_client import start_http_server

    from vipctl import controller

    addr, port = parse_listen(listen)
    registry = CollectorRegistry()
    registry.register(
        ClusterCollector(
            (lambda: list(clusters)) if clusters else (lambda: controller.clusters(directory)),
            lambda name: controller.status(name, directory),
            stats,
        )
    )
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
