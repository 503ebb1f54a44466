"""The XDP backend's shell (`backend: xdp`, mode steer): load, update, read and remove the
program of vipctl/backends/bpf/steer.bpf.c for one cluster.

- The program is built from source by scripts/build-bpf (clang -target bpf, Debian's
  libbpf-dev headers): in the package build and before the tests, never committed.
- bpftool loads it (`prog loadall`, maps pinned under a bpffs) and attaches it to the
  uplink in native (driver) mode; a driver without native XDP is refused with a message
  that names the nftables backend. The ICMP-error copier (`vipctl_icmp`) goes on the
  uplink's tc ingress with iproute2's `tc ... bpf object-pinned`.
- The tables are written through libbpf's map API (backends/bpfmap.py): a whole
  generation into the half of each double-buffered map the program does not read, then
  one 4-byte update of `active` flips every packet to it at once.

Pins live under $VIPCTL_BPFFS (default /sys/fs/bpf; it must be a bpffs mount) in
vipctl/<network namespace inode>/<cluster>: `ip netns exec` remounts /sys, so a lab or
test that runs vipctl that way points VIPCTL_BPFFS at a bpffs mounted elsewhere (/tmp).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vipctl.backends.base import Live, Plan, text_digest
from vipctl.backends.bpfmap import BpfError, Map, prog_id
from vipctl.core.partition import Layout, Table, bucket_of
from vipctl.core.spec import Spec
from vipctl.core.transition import Moving
from vipctl.errors import KernelError, SpecError
from vipctl.host.netlink import netns_inode
from vipctl.render import xdp as rx
from vipctl.render.wiring import Wiring

OBJECT = Path(__file__).resolve().parent / "bpf" / "steer.bpf.o"
XDP_PROG = "vipctl_xdp"
ICMP_PROG = "vipctl_icmp"
PASS_PROG = "vipctl_pass"
TC_PREF = 24301  # the uplink's tc ingress filter that copies ICMP errors (0x5eed)
CLSACT_MARK = "clsact-created"  # in the pin directory: this cluster added the clsact qdisc
NOT_NATIVE = (
    "the driver of {dev} has no native XDP ({why}); use backend: nftables, which runs on "
    "every driver"
)


def object_path() -> Path:
    path = Path(os.environ.get("VIPCTL_BPF_OBJECT", str(OBJECT)))
    if not path.is_file():
        raise KernelError(
            f"the XDP program is not built ({path} is missing): run scripts/build-bpf "
            "(needs clang and libbpf-dev)"
        )
    return path


def _bpffs_mounts() -> set[str]:
    out = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            if fields[sep + 1] == "bpf":
                out.add(fields[4].replace("\\040", " "))
    return out


def bpffs_root() -> Path:
    root = os.environ.get("VIPCTL_BPFFS", "/sys/fs/bpf")
    if root not in _bpffs_mounts():
        raise KernelError(
            f"{root} is not a bpffs mount (the XDP backend pins its maps there): "
            f"mount -t bpf bpf {root}, or point VIPCTL_BPFFS at one"
        )
    return Path(root)


def pin_dir(cluster: str, root: Path | None = None) -> Path:
    return (root or bpffs_root()) / "vipctl" / str(netns_inode()) / cluster


def _run(argv: list[str], what: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        raise KernelError(
            f"{what}: {argv[0]} is missing (apt-get install bpftool iproute2)"
        ) from None
    if proc.returncode != 0:
        raise KernelError(f"{what}: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return proc.stdout


def attached_id(dev: str) -> tuple[int, str] | None:
    """(program id, mode) of the XDP program on `dev`; None: none attached."""
    try:
        out = _run(["ip", "-j", "-d", "link", "show", "dev", dev], f"read {dev}")
    except KernelError:
        return None
    for link in json.loads(out or "[]"):
        xdp = link.get("xdp")
        if xdp and "prog" in xdp:
            return int(xdp["prog"]["id"]), str(xdp.get("mode", ""))
    return None


@dataclass(frozen=True)
class XdpLive:
    """What the kernel holds for a cluster: the live half and its config."""

    half: int
    generation: int
    digest: str
    attached: bool
    names: tuple[str, ...]  # member names by slot, as the live half has them
    bits: int


class _Maps:
    """The cluster's pinned maps, opened once per operation."""

    def __init__(self, d: Path):
        m = d / "maps"
        self.active = Map(str(m / "active"), 4, 4)
        self.config = Map(str(m / "config"), 4, rx.CONFIG.size)
        self.buckets = Map(str(m / "buckets"), 4, rx.BUCKET.size)
        self.members = Map(str(m / "members"), 4, rx.MEMBER.size)
        self.ports = Map(str(m / "ports"), 4, 4)
        self.flows = Map(str(m / "flows"), rx.FLOW_KEY.size, rx.FLOW.size)
        self.counters = Map(str(m / "counters"), 4, rx.COUNT.size, percpu=True)
        self.load = Map(str(m / "load"), 4, rx.COUNT.size, percpu=True)

    def close(self) -> None:
        for v in vars(self).values():
            if isinstance(v, Map):
                v.close()

    def __enter__(self) -> _Maps:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def half(self) -> int:
        raw = self.active.lookup(rx.U32.pack(0))
        return rx.U32.unpack(raw[:4])[0] & 1 if raw else 0

    def config_of(self, half: int) -> tuple[int, ...]:
        """generation, digest, timeout_ns, bits, seed, hash, measuring, members"""
        raw = self.config.lookup(rx.U32.pack(half))
        return rx.CONFIG_HEAD.unpack(raw[: rx.CONFIG_HEAD.size]) if raw else (0,) * 8

    def names(self, half: int, n: int) -> tuple[str, ...]:
        out = []
        for i in range(n):
            raw = self.members.lookup(rx.U32.pack(half * rx.MAX_MEMBERS + i))
            name = rx.MEMBER.unpack(raw[: rx.MEMBER.size])[3] if raw else b""
            out.append(name.rstrip(b"\0").decode())
        return tuple(out)

    def table(self, half: int, bits: int) -> list[tuple[int, int, int]]:
        raw = self.buckets.lookup_range(half << rx.TABLE_SHIFT, 1 << bits)
        return [(phase, owner, nxt) for owner, nxt, phase in rx.BUCKET.iter_unpack(raw)]


def _open(cluster: str) -> _Maps | None:
    d = pin_dir(cluster)
    if not (d / "prog" / XDP_PROG).exists():
        return None
    try:
        return _Maps(d)
    except BpfError as exc:
        raise KernelError(f"cluster {cluster}: cannot open its XDP maps: {exc}") from None


def observe(spec: Spec) -> XdpLive | None:
    maps = _open(spec.cluster)
    if maps is None:
        return None
    with maps:
        half = maps.half()
        gen, digest, _t, bits, _s, _h, _m, n = maps.config_of(half)
        if gen == 0:
            return None  # loaded but never filled (a crash in the first install)
        names = maps.names(half, n)
    live = attached_id(spec.uplink)
    ours = prog_id(str(pin_dir(spec.cluster) / "prog" / XDP_PROG))
    return XdpLive(half, gen, f"{digest:016x}", live is not None and live[0] == ours, names, bits)


def _load(spec: Spec, d: Path) -> None:
    """bpftool: the flows map sized by the spec, then every program and map of the object,
    pinned under `d` (nothing attached yet)."""
    obj = object_path()
    d.mkdir(parents=True, exist_ok=True)
    flows = d / "flows"  # pinmaps pins it once more under maps/, with the others
    _run(
        [
            *("bpftool", "map", "create", str(flows), "type", "lru_hash"),
            *("key", str(rx.FLOW_KEY.size), "value", str(rx.FLOW.size)),
            *("entries", str(spec.pinning.max_flows), "name", "flows"),
        ],
        f"cluster {spec.cluster}: create the flows map",
    )
    _run(
        [
            *("bpftool", "prog", "loadall", str(obj), str(d / "prog")),
            *("map", "name", "flows", "pinned", str(flows), "pinmaps", str(d / "maps")),
        ],
        f"cluster {spec.cluster}: load {obj.name}",
    )


def _unpin(d: Path) -> None:
    shutil.rmtree(d, ignore_errors=True)
    with contextlib.suppress(OSError):  # the namespace's directory, once it holds nothing
        d.parent.rmdir()


def _attach(spec: Spec, d: Path) -> None:
    """Native XDP on the uplink, then the ICMP copier on its tc ingress."""
    dev = spec.uplink
    live = attached_id(dev)
    ours = prog_id(str(d / "prog" / XDP_PROG))
    if live is not None and live[0] != ours:
        raise KernelError(
            f"{dev} already runs another XDP program (id {live[0]}): one XDP cluster per "
            "uplink, and vipctl does not replace a program it did not attach. Nothing changed."
        )
    if live is None:
        try:
            _run(
                ["bpftool", "net", "attach", "xdpdrv", "pinned", str(d / "prog" / XDP_PROG),
                 "dev", dev],
                f"attach XDP to {dev}",
            )  # fmt: skip
        except KernelError as exc:
            if "not supported" in str(exc).lower():
                raise KernelError(NOT_NATIVE.format(dev=dev, why=str(exc))) from None
            raise
    try:
        _run(["tc", "qdisc", "add", "dev", dev, "clsact"], f"clsact on {dev}")
    except KernelError:
        pass  # exists already (ours or another user's)
    else:
        # ours: `down` removes it when nothing else uses it (a directory: a bpffs holds
        # no regular files)
        (d / CLSACT_MARK).mkdir(exist_ok=True)
    _run(
        [
            *("tc", "filter", "replace", "dev", dev, "ingress", "pref", str(TC_PREF)),
            *("handle", "1", "bpf", "direct-action", "object-pinned"),
            str(d / "prog" / ICMP_PROG),
        ],
        f"attach the ICMP copier to {dev}",
    )


def _detach(spec: Spec, d: Path) -> None:
    dev = spec.uplink
    live = attached_id(dev)
    with contextlib.suppress(BpfError, KernelError):
        if live is not None and live[0] == prog_id(str(d / "prog" / XDP_PROG)):
            _run(["bpftool", "net", "detach", "xdpdrv", "dev", dev], f"detach XDP from {dev}")
    with contextlib.suppress(KernelError, BpfError):  # gone with the device, or not ours
        shown = _run(["tc", "filter", "show", "dev", dev, "ingress", "pref", str(TC_PREF)], "")
        found = re.search(r" id (\d+) ", shown)
        # only our own copier: a refused cluster on another's uplink must leave its filter
        if found and int(found.group(1)) == prog_id(str(d / "prog" / ICMP_PROG)):
            _run(
                ["tc", "filter", "del", "dev", dev, "ingress", "pref", str(TC_PREF)],
                f"remove the ICMP copier from {dev}",
            )
    if (d / CLSACT_MARK).exists():
        with contextlib.suppress(KernelError):
            left = _run(["tc", "filter", "show", "dev", dev, "ingress"], "")
            left += _run(["tc", "filter", "show", "dev", dev, "egress"], "")
            if not left.strip():
                _run(["tc", "qdisc", "del", "dev", dev, "clsact"], f"clsact on {dev}")


def write(table: rx.XdpTable, digest: str, cluster: str) -> None:
    """The new generation into the half packets do not read, then one flip.

    A packet reads `active` once and then only that half. One that read it just before the
    flip finishes within microseconds (XDP runs to completion in the driver's poll); the
    half it reads is written again only by the next swap, a new commit at least
    milliseconds later (tests/kernel/test_xdp.py: 200 back-to-back swaps, 0 lost or
    duplicated)."""
    d = pin_dir(cluster)
    with _Maps(d) as maps:
        half = maps.half()
        live_gen = maps.config_of(half)[0]
        nxt = 1 - half if live_gen else half ^ 1
        key = rx.U32.pack
        for i, mb in enumerate(table.member_bytes()):
            slot = nxt * rx.MAX_MEMBERS + i
            maps.members.update(key(slot), mb)
            ifindex = table.members[i].ifindex
            if ifindex:
                maps.ports.update(key(slot), key(ifindex))
            else:
                maps.ports.delete(key(slot))
        n = len(table.buckets)
        base = nxt << rx.TABLE_SHIFT
        keys = b"".join(key(base | b) for b in range(n))
        maps.buckets.update_batch(keys, table.bucket_bytes(), n)
        maps.config.update(key(nxt), table.config(digest))  # with the VIPs
        maps.active.update(key(0), key(nxt))  # the flip: every packet after it meets `nxt`


def _flows(spec: Spec) -> list[tuple[int, bytes, int]]:
    """Recorded flows that are not expired: (family, source address bytes, member slot)."""
    maps = _open(spec.cluster)
    if maps is None:
        return []
    now = time.monotonic_ns()  # bpf_ktime_get_ns is CLOCK_MONOTONIC
    timeout = spec.pinning.idle_timeout_s * 1_000_000_000
    out = []
    with maps:
        for k in list(maps.flows.keys()):
            raw = maps.flows.lookup(k)
            if raw is None:
                continue
            slot, _pad, seen = rx.FLOW.unpack(raw[: rx.FLOW.size])
            if now - seen >= timeout:
                continue
            saddr, _daddr, _ports, family = rx.FLOW_KEY.unpack(k)
            out.append((family, saddr[:4] if family == 4 else saddr, slot))
    return out


class XdpBackend:
    """Native XDP on the uplink, double-buffered tables flipped by one map update."""

    name = "xdp"
    transitions = True  # keeps per-flow state for buckets in transition

    def refuse(self, spec: Spec) -> None:
        problems = []
        if spec.mode != "steer":
            problems.append(
                "mode: the xdp backend serves mode: steer only (broadcast copies every "
                "packet to every member, which one XDP pass cannot do); use backend: nftables"
            )
        if spec.pinning.mode == "always":
            problems.append(
                "pinning.mode: the xdp backend keeps flows only for buckets in transition "
                "(moving or off); use backend: nftables for pinning: always"
            )
        if problems:
            raise SpecError("spec", problems)

    def observe(self, spec: Spec, *, complete: bool = False) -> Live | None:
        live = observe(spec)
        if live is None:
            return None
        return Live(self.name, live.generation, live, complete=True)

    def live_table(
        self, spec: Spec, live: Live | None = None
    ) -> tuple[Table, dict[int, Table]] | None:
        maps = _open(spec.cluster)
        if maps is None:
            return None
        with maps:
            half = maps.half()
            cfg = maps.config_of(half)
            if cfg[0] == 0:
                return None
            names = list(maps.names(half, cfg[7]))
            entries = maps.table(half, spec.partition.bits)
        table: Table = tuple(rx.owner_of(e, names) for e in entries)
        # one table for both families (the bucket is computed the same way for each)
        return table, {f: table for f in spec.vip_families}

    def render(
        self,
        spec: Spec,
        layout: Layout,
        wiring: Wiring,
        generation: int,
        moving: Moving | None = None,
        measuring: bool = False,
    ) -> Plan:
        table = rx.build(spec, layout, wiring, generation, moving, measuring)
        text = rx.render_text(table)
        digest = text_digest(ln for ln in text.splitlines() if not ln.startswith("#"))
        return Plan(spec, layout, wiring, generation, digest, text, table)

    def plan(
        self,
        spec: Spec,
        layout: Layout,
        wiring: Wiring,
        generation: int,
        live: Live | None,
        recorded: Spec | None = None,
        moving: Moving | None = None,
        measuring: bool = False,
    ) -> Plan:
        return self.render(spec, layout, wiring, generation, moving, measuring)

    def flow_buckets(self, spec: Spec) -> set[int] | None:
        p = spec.partition
        return {
            bucket_of(rx.ipaddress_of(family, saddr), p.key, p.bits, p.seed)
            for family, saddr, _slot in _flows(spec)
        }

    def assumed(self, plan: Plan) -> Live | None:
        return None  # observe() reads two small maps: cheap enough for a failover

    def check(self, plan: Plan) -> None:
        """What can be checked without a commit: the program is built, the bpffs is there,
        bpftool is installed."""
        object_path()
        bpffs_root()
        if shutil.which("bpftool") is None:
            raise KernelError("bpftool is missing (apt-get install bpftool)")

    def commit(self, plan: Plan) -> None:
        spec = plan.spec
        d = pin_dir(spec.cluster)
        fresh = not (d / "prog" / XDP_PROG).exists()
        try:
            if fresh:
                _unpin(d)  # what a crashed first install left
                _load(spec, d)
            write(plan.payload, plan.digest, spec.cluster)
            live = attached_id(spec.uplink)
            if fresh or live is None or live[0] != prog_id(str(d / "prog" / XDP_PROG)):
                _attach(spec, d)  # a swap of a live cluster attaches nothing
        except (KernelError, OSError) as exc:  # BpfError is an OSError
            if fresh:
                _detach(spec, d)
                _unpin(d)
            if not isinstance(exc, KernelError):
                raise KernelError(f"cluster {spec.cluster}: {exc}. Nothing changed.") from None
            raise

    def verify(self, plan: Plan, *, whole: bool) -> None:
        live = observe(plan.spec)
        if live is None or live.generation != plan.generation:
            raise KernelError(
                f"read-back: cluster {plan.spec.cluster} shows XDP generation "
                f"{live.generation if live else None}, {plan.generation} was committed"
            )
        if live.digest != plan.digest[:16] or not live.attached:
            raise KernelError(
                f"read-back: cluster {plan.spec.cluster}: "
                + ("the XDP program is not attached" if not live.attached else "digest differs")
            )
        if whole:
            table: rx.XdpTable = plan.payload
            with _Maps(pin_dir(plan.spec.cluster)) as maps:
                got = maps.table(live.half, table.bits)
            if got != list(table.buckets):
                wrong = sum(1 for a, b in zip(got, table.buckets, strict=True) if a != b)
                raise KernelError(f"read-back: {wrong} buckets differ from what was written")

    def down(self, spec: Spec | None, cluster: str) -> bool:
        if spec is None:
            return False
        try:
            d = pin_dir(cluster)
        except KernelError:
            return False
        if not d.exists():
            return False
        _detach(spec, d)
        _unpin(d)
        return True

    def clusters(self, known: list[Spec]) -> list[str]:
        return [s.cluster for s in known if s.backend == "xdp" and observe(s) is not None]

    def counters(self, spec: Spec, live: Live) -> dict[str, tuple[int, int]]:
        maps = _open(spec.cluster)
        if maps is None:
            return {}
        names = live.detail.names if isinstance(live.detail, XdpLive) else ()
        out: dict[str, tuple[int, int]] = {}
        with maps:
            for slot, name in enumerate(names):
                packets, nbytes = maps.counters.percpu_sum(rx.U32.pack(slot), 2)
                out[name] = (packets, nbytes)
        return out

    def pinned(self, spec: Spec) -> tuple[dict[str, int], list[tuple[int | None, str | None]]]:
        if not spec.pinning.enabled:
            return {}, []
        live = observe(spec)
        names = live.names if live else ()
        p = spec.partition
        per = {m.name: 0 for m in spec.members}
        flows: list[tuple[int | None, str | None]] = []
        for family, saddr, slot in _flows(spec):
            name = names[slot] if slot < len(names) else None
            if name in per:
                per[name] += 1
            flows.append((bucket_of(rx.ipaddress_of(family, saddr), p.key, p.bits, p.seed), name))
        return per, flows

    def pin_counts(self, spec: Spec) -> dict[str, int]:
        return self.pinned(spec)[0] if spec.pinning.enabled else {}

    def read_load(self, spec: Spec) -> list[tuple[int, int]] | None:
        maps = _open(spec.cluster)
        if maps is None:
            return None
        with maps:
            if not maps.config_of(maps.half())[6]:
                return None  # the live generation does not count (a failover replaced it)
            out: list[tuple[int, int]] = []
            for b in range(spec.partition.buckets):
                packets, nbytes = maps.load.percpu_sum(rx.U32.pack(b), 2)
                out.append((packets, nbytes))
        return out

    def offload(self, live: Live) -> dict[str, int] | None:
        return None

    def ruleset_generation(self) -> int | None:
        # (the Backend protocol on main after the desired-state work) no counter of every
        # commit in the namespace covers an XDP program: the daemon reads back on its timer
        return None
