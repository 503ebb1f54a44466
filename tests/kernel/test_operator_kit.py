"""The operator's kit against a real daemon: every metric and label that the shipped alert
rules (contrib/prometheus/vipctl.rules.yml) and Grafana dashboard (contrib/grafana/
vipctl.json) query is in the scrape of `vipctl daemon SPEC --metrics` running in a lab."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests import promql
from tests.kernel.helpers import vipctl, vipctl_spawn, write_spec
from tests.kernel.test_metrics import scrape_text
from vipctl.lab.topology import Lab

LISTEN = "127.0.0.1:9480"


def test_every_name_the_rules_and_dashboard_query_is_exported(
    lab: Callable[..., Lab], tmp_path: Path
) -> None:
    topo = lab(members=2)
    ns = topo.router_ns
    state = tmp_path / "state"
    spec = topo.spec("web", vips=[topo.vip4])
    spec["health"] = {"probe": {"kind": "tcp", "port": topo.echo_port}, "interval_ms": 100}
    path = write_spec(tmp_path / "web.json", spec)
    queries = promql.rule_queries() + promql.dashboard_queries()
    used = {m for q in queries for m in promql.names(q.expr).metrics} - set(promql.SYNTHETIC)
    daemon = vipctl_spawn(
        ns,
        "daemon",
        str(path),
        "--state-dir",
        str(state),
        "--metrics",
        LISTEN,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # until every metric the kit uses is there (probe latency needs a probe, pinned
        # flows their first count), or 20 s
        deadline = time.monotonic() + 20
        exported: dict[str, frozenset[str]] = {}
        while time.monotonic() < deadline and daemon.poll() is None:
            with contextlib.suppress(subprocess.CalledProcessError):  # not listening yet
                exported = promql.exported_names(scrape_text(ns, f"http://{LISTEN}/metrics"))
            if used <= exported.keys():
                break
            time.sleep(0.2)
        assert daemon.poll() is None, daemon.communicate(timeout=10)[1]
        assert exported, "the daemon's exporter never answered"
        assert promql.unknown_names(queries, exported) == []
        # what the names are checked against is the daemon's: its own counters are there
        assert {"vipctl_daemon_degraded", "vipctl_cluster_failovers_total"} <= exported.keys()
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)
        vipctl(ns, "down", "web", "--state-dir", str(state))
