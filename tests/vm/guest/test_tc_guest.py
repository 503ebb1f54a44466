"""The tc backend with real packets, in the guest (see tests/vm/run).

Everything runs in this one process, because starting Python under TCG costs seconds:
the test thread enters the lab's namespaces with setns(2) (a socket belongs to the
namespace it was created in), the members' UDP echo runs in a thread, and tcpdump
captures the numbered packets on every member.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import pytest

from vipctl.backends import tc as tc_backend
from vipctl.core import partition
from vipctl.core.partition import Layout, bucket_of
from vipctl.core.spec import Spec, parse_spec
from vipctl.host import links
from vipctl.lab import echo, traffic
from vipctl.lab import topology as labmod
from vipctl.lab.topology import Lab
from vipctl.render.tc import rules_per_port
from vipctl.render.wiring import Wiring

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
FLIPS = 52


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Move the calling thread into namespace `name`, and back afterwards."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        _libc.setns(home, CLONE_NEWNET)
        os.close(fd)
        os.close(home)


def _serve(sel: selectors.BaseSelector, stop: threading.Event) -> None:
    while not stop.is_set():
        for key, _ in sel.select(0.2):
            echo._udp_drain(key.fileobj, key.data)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def topo() -> Iterator[Lab]:
    prefix = "vm1"
    lab = labmod.build(prefix, 3, echo=False)
    sel = selectors.DefaultSelector()
    for m in lab.members:
        with netns(m.ns):
            for s in echo.udp_sockets(lab.echo_port):
                sel.register(s, selectors.EVENT_READ, m.name.encode() + b" ")
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(sel, stop), daemon=True)
    thread.start()
    try:
        yield lab
    finally:
        stop.set()
        thread.join()
        labmod.destroy(prefix)


def tc_spec(topo: Lab, mode: str) -> Spec:
    data: dict[str, Any] = topo.spec("web", mode=mode, key="mask", bits=8)
    data["backend"] = "tc"
    data["offload"] = "none"
    for m, member in zip(data["members"], topo.members, strict=True):
        m["mac"] = member.mac
    return parse_spec(data)


def wiring(spec: Spec) -> Wiring:
    return Wiring(
        ifindex={m.port: socket.if_nametoindex(m.port) for m in spec.members},
        macs={m.name: str(m.mac) for m in spec.members},
        uplink_mac=links.hwaddr(spec.uplink),
    )


def layout(spec: Spec, weights: dict[str, Fraction] | None = None) -> Layout:
    w = tuple((m.name, (weights or {}).get(m.name, m.exact_weight)) for m in spec.members)
    return partition.compute(spec.partition.bits, w)


def _is_prefix(mask: int, width: int = 32) -> bool:
    ones = bin(mask).count("1")
    return mask == ((1 << ones) - 1) << (width - ones)


def tc_show(topo: Lab, dev: str, hook: str) -> str:
    out = labmod.run_in(topo.router_ns, ["tc", "filter", "show", "dev", dev, hook])
    return str(out.stdout)


@pytest.mark.parametrize(
    ("mode", "classifier"),
    [("broadcast", "flower"), ("steer", "flower"), ("steer", "u32")],
)
def test_exactly_once_for_1024_sources(topo: Lab, mode: str, classifier: Any) -> None:
    spec = tc_spec(topo, mode)
    lay = layout(spec)
    with netns(topo.router_ns):
        result = tc_backend.apply(spec, lay, wiring(spec), 1, classifier=classifier)
        problems = tc_backend.verify(result.ruleset)
        live = tc_backend.observe(spec)
    try:
        assert result.classifier == classifier
        assert problems == []  # rules read back == rules rendered (dispatcher included)
        assert live is not None and live.generation == 1
        # rules per port == the partition's entries, once per VIP family
        entries = {s.name: len(s.entries) for s in partition.shares(lay)}
        assert rules_per_port(result.ruleset) == {m.port: 2 * entries[m.name] for m in topo.members}
        # low-bit masks such as 0.0.0.254 are not address prefixes: tc(8) refuses them
        masks = {e.mask for s in partition.shares(lay) for e in s.entries}
        assert masks and not any(_is_prefix(m) for m in masks), masks
        for vip, cidr in ((topo.vip4, topo.sources4), (topo.vip6, topo.sources6)):
            sources = traffic.expand(cidr, 1024)
            with netns(topo.client_ns):
                got = traffic.probe_here(vip, sources, topo.echo_port, timeout=3.0)
            want = {s: lay.table[bucket_of(s, "mask", 8, 0)] for s in sources}
            bad = {s: (got[s], want[s]) for s in sources if got[s] != [want[s]]}
            assert not bad, f"{len(bad)} of {len(sources)} wrong, e.g. {list(bad.items())[:5]}"
            assert set(want.values()) == set(topo.member_names)
    finally:
        with netns(topo.router_ns):
            assert tc_backend.delete(spec)
    for dev in (topo.uplink, *topo.ports):
        for hook in ("ingress", "egress"):
            assert tc_show(topo, dev, hook) == "", (dev, hook)


@pytest.mark.parametrize("mode", ["broadcast", "steer"])
def test_flip_under_traffic_is_exactly_once(topo: Lab, mode: str) -> None:
    spec = tc_spec(topo, mode)
    names = [m.name for m in spec.members]
    variants = [
        layout(spec),
        layout(spec, {n: Fraction(1 + 2 * (i % 2)) for i, n in enumerate(names)}),
    ]
    moved_per_flip = sum(a != b for a, b in zip(*(v.table for v in variants), strict=True))
    assert moved_per_flip > 0
    with netns(topo.router_ns):
        wire = wiring(spec)
        tc_backend.apply(spec, variants[0], wire, 1)
    sources = traffic.expand(topo.sources4, 1024)
    flips: list[float] = []
    try:
        cap = traffic.capture_start(topo)
        try:
            # the sender is its own process: no GIL shared with the flips, and it can stop
            sender = traffic.numbered_spawn(topo, topo.vip4, sources, 10_000_000, 3000)
            deadline = time.monotonic() + 60
            while not any(f.stat().st_size > 200 for f in cap.files.values()):
                assert time.monotonic() < deadline and sender.proc.poll() is None
                time.sleep(0.2)
            with netns(topo.router_ns):
                for n in range(FLIPS):
                    res = tc_backend.apply(spec, variants[(n + 1) % 2], wire, n + 2)
                    flips.append(res.flip_seconds)
                problems = tc_backend.verify(res.ruleset)
            time.sleep(0.5)
            sender.proc.terminate()
            sender.proc.wait(timeout=30)
            time.sleep(0.5)
        finally:
            seen = traffic.capture_stop(cap)
        assert problems == []
        total = max((max(v) for v in seen.values() if v), default=-1) + 1
        lost, duplicated = traffic.check_exactly_once(total, seen)
        print(
            f"\n{mode}: {total} numbered packets from 1024 sources over {len(flips)} flips "
            f"({moved_per_flip} buckets move per flip), median flip "
            f"{1000 * statistics.median(flips):.2f} ms: {len(lost)} lost, "
            f"{len(duplicated)} duplicated"
        )
        assert total > 20 * FLIPS, f"too little traffic during the flips ({total})"
        assert (len(lost), len(duplicated)) == (0, 0), (lost[:10], duplicated[:10])
    finally:
        with netns(topo.router_ns):
            tc_backend.delete(spec)


def _proxies(topo: Lab) -> str:
    return str(
        labmod.run_in(topo.router_ns, ["ip", "neigh", "show", "proxy", "dev", topo.uplink]).stdout
    )


def _probe_exactly_once(topo: Lab, spec: Spec, table: tuple[str | None, ...], ipv6: bool) -> None:
    vip, cidr = (topo.vip6, topo.sources6) if ipv6 else (topo.vip4, topo.sources4)
    sources = traffic.expand(cidr, 512)
    with netns(topo.client_ns):
        got = traffic.probe_here(vip, sources, topo.echo_port, timeout=3.0)
    p = spec.partition
    want = {s: table[bucket_of(s, p.key, p.bits, p.seed)] for s in sources}
    bad = {s: (got[s], want[s]) for s in sources if got[s] != [want[s]]}
    assert not bad, f"{len(bad)} of {len(sources)} wrong, e.g. {list(bad.items())[:5]}"


def test_one_apply_path_for_tc(topo: Lab, tmp_path: Any) -> None:
    """controller.apply with `backend: tc`, as `vipctl apply` runs it: preflight, the
    ARP/ND announcement, a change of VIP set and of mode reaching the kernel, status,
    clusters and metrics listing the tc cluster, and down removing all of it."""
    from vipctl import controller
    from vipctl.service.metrics import ClusterCollector

    state = tmp_path / "state"
    base = tc_spec(topo, "broadcast").model_dump(mode="json")
    base["vips"] = [topo.vip4]
    base["announce_vips"] = True
    one = parse_spec(base)
    two = parse_spec(base | {"vips": [topo.vip4, topo.vip6], "mode": "steer"})
    try:
        with netns(topo.router_ns):
            first = controller.apply(one, state, controller.ApplyOptions(preflight=True))
            again = controller.apply(one, state, controller.ApplyOptions(preflight=True))
        assert first.changed and first.backend == "tc" and first.generation == 1
        assert not again.changed and again.generation == 1
        assert topo.vip4 in _proxies(topo)  # the announcement is installed
        _probe_exactly_once(topo, one, first.layout.table, ipv6=False)

        with netns(topo.router_ns):
            second = controller.apply(two, state, controller.ApplyOptions(preflight=True))
            live = tc_backend.observe(two)
            table = controller.live_table(two)
        assert second.changed and second.generation == 2
        assert live is not None and live.generation == 2
        assert table is not None and table[0] == second.layout.table
        assert "redirect" in tc_show(topo, topo.uplink, "ingress") or live.filters
        assert topo.vip6 in _proxies(topo)
        for ipv6 in (False, True):
            _probe_exactly_once(topo, two, second.layout.table, ipv6=ipv6)

        with netns(topo.router_ns):
            names = controller.clusters(state)
            report = controller.status("web", state)
            collector = ClusterCollector(
                lambda: controller.clusters(state), lambda n: controller.status(n, state)
            )
            families = {f.name: f for f in collector.collect()}
        assert names == ["web"]
        assert report["backend"] == "tc" and report["mode"] == "steer" and report["in_sync"]
        assert sum(m["buckets"] for m in report["members"]) == 256
        assert report["offload"]["rules"] > 0 and report["offload"]["in_hw"] == 0
        buckets = {s.labels["member"]: s.value for s in families["vipctl_member_buckets"].samples}
        assert sum(buckets.values()) == 256 and set(buckets) == set(topo.member_names)
    finally:
        with netns(topo.router_ns):
            removed = controller.down("web", state)
    assert removed
    assert topo.vip4 not in _proxies(topo) and topo.vip6 not in _proxies(topo)
    for dev in (topo.uplink, *topo.ports):
        for hook in ("ingress", "egress"):
            assert tc_show(topo, dev, hook) == "", (dev, hook)


@pytest.mark.parametrize(
    ("mode", "classifier"),
    [("broadcast", "flower"), ("steer", "flower"), ("steer", "u32")],
)
def test_a_frame_for_another_mac_is_not_taken(topo: Lab, mode: str, classifier: Any) -> None:
    """Invariant 11 with tc: the client sends the VIP's packets in frames addressed to
    another router's MAC (what a switch that floods delivers): no member gets any; the
    same sources to this router's MAC are answered once each."""
    spec = tc_spec(topo, mode)
    lay = layout(spec)
    sources = traffic.expand(topo.sources4, 256)
    neigh = ["ip", "neigh", "replace", topo.router4, "dev", "eth0", "nud", "permanent"]
    with netns(topo.router_ns):
        tc_backend.apply(spec, lay, wiring(spec), 1, classifier=classifier)
    try:
        labmod.run_in(topo.client_ns, [*neigh, "lladdr", "02:00:00:00:ee:ee"])
        with netns(topo.client_ns):
            flooded = traffic.probe_here(topo.vip4, sources, topo.echo_port, timeout=1.0)
        labmod.run_in(topo.client_ns, [*neigh, "lladdr", topo.uplink_mac])
        with netns(topo.client_ns):
            mine = traffic.probe_here(topo.vip4, sources, topo.echo_port, timeout=3.0)
    finally:
        labmod.run_in(topo.client_ns, ["ip", "neigh", "del", topo.router4, "dev", "eth0"])
        with netns(topo.router_ns):
            assert tc_backend.delete(spec)
    assert not any(flooded.values()), traffic.summarize(flooded)
    assert all(len(v) == 1 for v in mine.values()), traffic.summarize(mine)
