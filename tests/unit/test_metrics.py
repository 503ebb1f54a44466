"""The metrics collector without a kernel: the cluster info metric (fingerprint), and
pinned-flow counts taken at most once per max_age however many scrapes overlap."""

from __future__ import annotations

import threading
import time
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from vipctl.service.metrics import ClusterCollector, PinCounts


def report(name: str) -> dict[str, Any]:
    return {
        "cluster": name,
        "backend": "nftables",
        "generation": 3,
        "fingerprint": "0123456789abcdef",
        "members": [
            {
                "name": "web1",
                "port": "m1",
                "packets": 5,
                "bytes": 500,
                "buckets": 128,
                "target": 0.5,
                "healthy": True,
            },
            {
                "name": "web2",
                "port": "m2",
                "packets": 0,
                "bytes": 0,
                "buckets": 128,
                "target": 0.5,
                "healthy": False,
            },
        ],
    }


class SlowCount:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, cluster: str) -> dict[str, int]:
        with self.lock:
            self.calls += 1
        time.sleep(self.seconds)
        return {"web1": 7, "web2": 1}


def scrape(pins: PinCounts) -> str:
    registry = CollectorRegistry()
    registry.register(ClusterCollector(lambda: ["web"], report, None, pins))
    return generate_latest(registry).decode()


def test_info_metric_carries_the_fingerprint() -> None:
    text = scrape(PinCounts(SlowCount(0.0)))
    assert (
        'vipctl_cluster_info{backend="nftables",cluster="web",fingerprint="0123456789abcdef"} 1.0'
        in text
    )
    assert 'vipctl_member_pinned_flows{cluster="web",member="web1"} 7.0' in text
    assert "vipctl_cluster_pinned_flows_age_seconds" in text


def test_overlapping_scrapes_count_pins_once() -> None:
    count = SlowCount(0.3)
    pins = PinCounts(count, max_age=60.0, wait=2.0)
    out: list[str] = []
    threads = [threading.Thread(target=lambda: out.append(scrape(pins))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count.calls == 1 and len(out) == 8
    assert all('member="web1"} 7.0' in text for text in out)
    scrape(pins)
    assert count.calls == 1  # fresh enough: no new listing


def test_a_slow_count_does_not_hold_the_scrape() -> None:
    count = SlowCount(1.0)
    pins = PinCounts(count, max_age=0.0, wait=0.05)
    started = time.monotonic()
    text = scrape(pins)
    assert time.monotonic() - started < 0.5
    assert "vipctl_member_pinned_flows{" not in text  # nothing counted yet: no stale zero
    time.sleep(1.1)
    got = pins.get("web")
    assert got is not None and got[0] == {"web1": 7, "web2": 1}
