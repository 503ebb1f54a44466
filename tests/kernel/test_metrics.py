"""The Prometheus endpoint, scraped during traffic: per-member packets match what was sent."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.kernel.helpers import expected_owners, vipctl, vipctl_spawn, write_spec
from vipctl.lab import traffic
from vipctl.lab.topology import Lab


def scrape_text(ns: str, url: str) -> str:
    """The exposition the endpoint inside namespace `ns` answers."""
    code = (
        f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
    )
    return subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def scrape(ns: str, url: str) -> dict[tuple[str, str], float]:
    """(metric, member label or "") -> value, from the endpoint inside namespace `ns`."""
    text = scrape_text(ns, url)
    values: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("#") or "{" not in line:
            continue
        name, rest = line.split("{", 1)
        labels, value = rest.rsplit("} ", 1)
        member = next(
            (p.split("=")[1].strip('"') for p in labels.split(",") if p.startswith("member=")), ""
        )
        values[(name, member)] = float(value)
    return values


def test_metrics_count_what_was_sent(topo: Lab, tmp_path: Path) -> None:
    ns = topo.router_ns
    state = str(tmp_path / "state")
    spec = topo.spec("web", mode="broadcast", key="mask", vips=[topo.vip4])
    path = write_spec(tmp_path / "web.json", spec)
    vipctl(ns, "apply", str(path), "--state-dir", state, check=True)
    exporter = vipctl_spawn(
        ns,
        "metrics",
        "web",
        "--listen",
        "127.0.0.1:9477",
        "--pins-max-age",
        "0",
        "--state-dir",
        state,
        stdout=subprocess.DEVNULL,
    )
    url = "http://127.0.0.1:9477/metrics"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                before = scrape(ns, url)
                break
            except subprocess.CalledProcessError:
                assert time.monotonic() < deadline and exporter.poll() is None
                time.sleep(0.2)
        sent: Counter[str] = Counter()
        for batch in range(3):  # traffic and scrapes interleaved
            sources = traffic.expand(f"10.99.{10 + batch}.0/24")
            owners = expected_owners(topo, spec, sources)
            got = traffic.probe(topo, topo.vip4, sources)
            assert all(got[s] == [owners[s]] for s in sources)
            sent.update(str(owners[s]) for s in sources)
            now = scrape(ns, url)
            for member in topo.member_names:
                key = ("vipctl_member_packets_total", member)
                assert now[key] - before.get(key, 0.0) == sent[member], (member, batch)
        assert now[("vipctl_member_buckets", "web1")] == 86
        assert now[("vipctl_member_healthy", "web2")] == 1
        assert now[("vipctl_cluster_generation", "")] == 1
        # pinning moving: no per-flow state in steady state
        assert sum(now[("vipctl_member_pinned_flows", m)] for m in topo.member_names) == 0
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)
        vipctl(ns, "down", "web", "--state-dir", state)
