"""The controller's decisions over a fake backend and a fake host (no root, no kernel).

The fake backend renders with the real, pure renderers (render/nft.py or render/tc.py) and
keeps "the kernel" in memory: what is committed, in which generation, and the table. So
these tests check what apply decides (adopt, the digest shortcut, the write order, the
restore on a refusal, a backend switch), the same for nftables and tc.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest

from vipctl import controller, statefile
from vipctl.backends.base import Backend, Live, Plan, text_digest
from vipctl.core.partition import Layout, Table
from vipctl.core.spec import Spec, parse_spec
from vipctl.core.transition import Moving
from vipctl.errors import KernelError, SpecError, StateError
from vipctl.host.doctor import Finding
from vipctl.render import nft as render_nft
from vipctl.render import tc as render_tc
from vipctl.render.wiring import Wiring

PORTS = {"up0": 1, "m1": 11, "m2": 12, "m3": 13}
UPLINK_MAC = "02:00:00:00:00:01"
MACS = {"web1": "02:00:00:00:01:02", "web2": "02:00:00:00:02:02", "web3": "02:00:00:00:03:02"}


def make_spec(backend: str = "nftables", **over: Any) -> Spec:
    data: dict[str, Any] = {
        "cluster": "web",
        "backend": backend,
        "vips": ["198.51.100.253"],
        "uplink": "up0",
        "mode": "broadcast",
        "partition": {"key": "mask", "bits": 4},
        "members": [
            {"name": f"web{i}", "port": f"m{i}", "address": f"198.51.100.{8 * i + 2}"}
            for i in (1, 2, 3)
        ],
    }
    data.update(over)
    return parse_spec(data)


@dataclasses.dataclass
class Installed:
    generation: int
    digest: str
    table: Table
    spec: Spec


class FakeKernel:
    """What the fake backends share: the tables installed, by backend name."""

    def __init__(self) -> None:
        self.tables: dict[str, Installed] = {}
        self.calls: list[str] = []
        self.phases: list[list[str]] = []  # phases of the moving buckets, per commit


class FakeBackend:
    def __init__(self, name: str, kernel: FakeKernel, state_dir: Path) -> None:
        self.name = name
        self.transitions = name == "nftables"
        self.flows: set[int] | None = set()  # buckets with a recorded flow
        self.kernel = kernel
        self.state_dir = state_dir
        self.refuse_commit = False
        self.state_at_commit: dict[str, Any] | None = None

    def refuse(self, spec: Spec) -> None:
        if self.name == "tc":
            render_tc.check_spec(spec)

    def observe(self, spec: Spec, *, complete: bool = False) -> Live | None:
        self.kernel.calls.append(f"{self.name}.observe(complete={complete})")
        got = self.kernel.tables.get(self.name)
        return Live(self.name, got.generation, got, complete=complete) if got else None

    def live_table(self, spec: Spec, live: Live | None = None) -> tuple[Table, dict[int, Table]]:
        got = self.kernel.tables[self.name]
        return got.table, {4: got.table}

    def render(
        self,
        spec: Spec,
        layout: Layout,
        wiring: Wiring,
        generation: int,
        moving: Moving | None = None,
        measuring: bool = False,
    ) -> Plan:
        if self.name == "tc":
            ruleset = render_tc.build_ruleset(spec, layout, wiring, generation, slot=1)
            text = render_tc.render_text(ruleset)
            digest = text_digest(ln for ln in text.splitlines() if not ln.startswith("#"))
        else:
            table = render_nft.build_table(spec, layout, wiring, generation, moving, measuring)
            text = render_nft.render_table(table)
            digest = render_nft.digest(table, text)
        return Plan(spec, layout, wiring, generation, digest, text, meta={"moving": moving})

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
        self.kernel.calls.append(f"{self.name}.flow_buckets")
        return self.flows

    def assumed(self, plan: Plan) -> Live | None:
        got = Installed(plan.generation, plan.digest, plan.layout.table, plan.spec)
        return Live(self.name, plan.generation, got)

    def check(self, plan: Plan) -> None:
        self.kernel.calls.append(f"{self.name}.check")

    def commit(self, plan: Plan) -> None:
        self.kernel.calls.append(f"{self.name}.commit({plan.generation})")
        moving = plan.meta.get("moving") or {}
        self.kernel.phases.append(sorted({m.phase for m in moving.values()}))
        path = self.state_dir / f"{plan.spec.cluster}.json"
        self.state_at_commit = json.loads(path.read_text()) if path.exists() else None
        if self.refuse_commit:
            raise KernelError("the kernel refused the ruleset, nothing changed: EINVAL")
        self.kernel.tables[self.name] = Installed(
            plan.generation, plan.digest, plan.layout.table, plan.spec
        )

    def verify(self, plan: Plan, *, whole: bool) -> None:
        self.kernel.calls.append(f"{self.name}.verify(whole={whole})")
        assert self.kernel.tables[self.name].generation == plan.generation

    def down(self, spec: Spec | None, cluster: str) -> bool:
        self.kernel.calls.append(f"{self.name}.down")
        return self.kernel.tables.pop(self.name, None) is not None

    def clusters(self, known: list[Spec]) -> list[str]:
        return ["web"] if self.name in self.kernel.tables else []

    def counters(self, spec: Spec, live: Live) -> dict[str, tuple[int, int]]:
        return {m.name: (7, 700) for m in spec.members}

    def pinned(self, spec: Spec) -> tuple[dict[str, int], list[tuple[int | None, str | None]]]:
        return {}, []

    def pin_counts(self, spec: Spec) -> dict[str, int]:
        return {}

    def offload(self, live: Live) -> dict[str, int] | None:
        return {"rules": 3, "in_hw": 0} if self.name == "tc" else None

    def read_load(self, spec: Spec) -> list[tuple[int, int]] | None:
        return None

    def ruleset_generation(self) -> int | None:
        return None


_TYPED: type[Backend] = FakeBackend  # mypy: the fake implements the whole protocol


class FakeBox:
    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.announced: list[tuple[str, bool | None]] = []
        self.ifindex = dict(PORTS)
        self.announce_refusal: str | None = None

    def announce_check(self, spec: Spec) -> None:
        if spec.announce_vips and self.announce_refusal:
            raise KernelError(self.announce_refusal)

    def wiring(self, spec: Spec, optional: Collection[str]) -> Wiring:
        return Wiring(ifindex=dict(self.ifindex), macs=dict(MACS), uplink_mac=UPLINK_MAC)

    def preflight(self, spec: Spec, down: Collection[str]) -> list[Finding]:
        return list(self.findings)

    def announce(self, spec: Spec, enabled: bool | None = None) -> list[str]:
        self.announced.append((spec.cluster, enabled))
        return []


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "state"
        self.kernel = FakeKernel()
        self.box = FakeBox()
        self.backends = {n: FakeBackend(n, self.kernel, self.dir) for n in ("nftables", "tc")}
        self.now = 1000.0
        self.slept: list[float] = []

    def pick(self, spec: Spec | str) -> FakeBackend:
        return self.backends[spec if isinstance(spec, str) else spec.backend]

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def env(self, cache: controller.Cache | None = None) -> controller.Env:
        return controller.Env(
            backends=self.pick, box=self.box, cache=cache, clock=lambda: self.now, sleep=self.sleep
        )

    def apply(
        self, spec: Spec, cache: controller.Cache | None = None, **kw: Any
    ) -> controller.ApplyResult:
        return controller.apply(spec, self.dir, controller.ApplyOptions(**kw), self.env(cache))

    def state_bytes(self) -> bytes | None:
        path = self.dir / "web.json"
        return path.read_bytes() if path.exists() else None

    def commits(self) -> list[str]:
        return [c for c in self.kernel.calls if ".commit" in c]


BACKENDS = ["nftables", "tc"]


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_apply_commits_writes_state_and_announces(rig: Rig, backend: str) -> None:
    spec = make_spec(backend)
    result = rig.apply(spec)
    assert result.changed and result.generation == 1 and result.backend == backend
    assert rig.commits() == [f"{backend}.commit(1)"]
    st = statefile.load(rig.dir, "web")
    assert st is not None and st.generation == 1
    assert st.digest == rig.kernel.tables[backend].digest
    assert rig.box.announced == [("web", None)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_state_is_written_before_the_commit(rig: Rig, backend: str) -> None:
    spec = make_spec(backend)
    rig.apply(spec)
    assert rig.pick(spec).state_at_commit is not None
    assert rig.pick(spec).state_at_commit["generation"] == 1  # type: ignore[index]


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_spec_again_is_up_to_date_without_a_commit(rig: Rig, backend: str) -> None:
    spec = make_spec(backend)
    rig.apply(spec)
    before = rig.state_bytes()
    result = rig.apply(spec)
    assert not result.changed and result.generation == 1
    assert rig.commits() == [f"{backend}.commit(1)"]
    assert rig.state_bytes() == before
    assert len(rig.box.announced) == 2  # the announcement converges on every apply


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_new_vip_and_a_new_mode_reach_the_kernel(rig: Rig, backend: str) -> None:
    rig.apply(make_spec(backend))
    spec = make_spec(backend, vips=["198.51.100.253", "198.51.100.254"], mode="steer")
    result = rig.apply(spec)
    assert result.changed and result.moved == 0
    assert rig.commits() == [f"{backend}.commit(1)", f"{backend}.commit(2)"]
    assert rig.kernel.tables[backend].spec.mode == "steer"
    assert "198.51.100.254" in result.diff


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refused_commit_puts_the_old_state_back(rig: Rig, backend: str) -> None:
    spec = make_spec(backend)
    rig.apply(spec)
    before = rig.state_bytes()
    rig.pick(spec).refuse_commit = True
    with pytest.raises(KernelError):
        rig.apply(make_spec(backend, mode="steer"))
    assert rig.state_bytes() == before
    assert rig.kernel.tables[backend].generation == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_refused_first_commit_leaves_no_state(rig: Rig, backend: str) -> None:
    spec = make_spec(backend)
    rig.pick(spec).refuse_commit = True
    with pytest.raises(KernelError):
        rig.apply(spec)
    assert rig.state_bytes() is None and backend not in rig.kernel.tables


@pytest.mark.parametrize("backend", BACKENDS)
def test_preflight_errors_change_nothing(rig: Rig, backend: str) -> None:
    rig.box.findings = [Finding("link:m2", "error", "port 'm2' is down", "ip link set m2 up")]
    with pytest.raises(KernelError, match="link:m2"):
        rig.apply(make_spec(backend), preflight=True)
    assert rig.commits() == [] and rig.state_bytes() is None
    assert rig.box.announced == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_dry_run_checks_and_changes_nothing(rig: Rig, backend: str) -> None:
    rig.apply(make_spec(backend))
    before = rig.state_bytes()
    result = rig.apply(make_spec(backend, mode="steer"), dry_run=True)
    assert result.dry_run and result.changed and result.generation == 1
    assert f"{backend}.check" in rig.kernel.calls
    assert rig.commits() == [f"{backend}.commit(1)"] and rig.state_bytes() == before
    assert "fwd to" in result.ruleset or "redirect" in result.ruleset


@pytest.mark.parametrize("backend", BACKENDS)
def test_adopts_the_kernels_table_when_there_is_no_state(rig: Rig, backend: str) -> None:
    spec = make_spec(backend)
    rig.apply(spec)
    table = rig.kernel.tables[backend].table
    (rig.dir / "web.json").unlink()
    result = rig.apply(make_spec(backend, members=[*spec.model_dump(mode="json")["members"]]))
    assert result.layout.table == table and result.moved == 0
    assert result.generation == 2
    assert f"{backend}.observe(complete=True)" in rig.kernel.calls


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_kernel_ahead_of_the_state_is_adopted(rig: Rig, backend: str) -> None:
    spec = make_spec(backend)
    rig.apply(spec)
    # another router's (or a lost) state: the kernel holds generation 9 with another table
    live = rig.kernel.tables[backend]
    other = tuple(reversed(live.table))
    rig.kernel.tables[backend] = dataclasses.replace(live, generation=9, table=other)
    result = rig.apply(spec)
    assert result.generation == 10 and result.layout.table == other and result.moved == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_health_reasons_are_recorded(rig: Rig, backend: str) -> None:
    spec = make_spec(backend)
    rig.apply(spec, down={"web2"}, reasons={"web2": "down since 10:00: refused"})
    st = statefile.load(rig.dir, "web")
    assert st is not None and st.reasons == {"web2": "down since 10:00: refused"}
    assert "web2" not in st.layout.table and st.layout.down == ("web2",)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_spec_change_outside_the_ruleset_is_recorded(rig: Rig, backend: str) -> None:
    spec = make_spec(backend)
    rig.apply(spec)
    changed = make_spec(backend, health={"interval_ms": 250})
    result = rig.apply(changed)
    assert not result.changed and rig.commits() == [f"{backend}.commit(1)"]
    st = statefile.load(rig.dir, "web")
    assert st is not None and st.spec is not None and st.generation == 1
    assert st.spec["health"]["interval_ms"] == 250


def test_moved_ports_are_not_trusted(rig: Rig) -> None:
    spec = make_spec("nftables")
    rig.apply(spec)
    rig.box.ifindex["m2"] = 99  # a port re-created: the ruleset embeds ifindexes
    result = rig.apply(spec)
    assert result.changed and rig.commits()[-1] == "nftables.commit(2)"
    assert "nftables.verify(whole=True)" in rig.kernel.calls


def test_switching_backend_installs_the_new_then_removes_the_old(rig: Rig) -> None:
    rig.apply(make_spec("nftables"))
    result = rig.apply(make_spec("tc"))
    assert result.changed and result.backend == "tc"
    calls = [c for c in rig.kernel.calls if "commit" in c or "down" in c]
    assert calls == ["nftables.commit(1)", "tc.commit(2)", "nftables.down"]
    assert set(rig.kernel.tables) == {"tc"}


def test_tc_refuses_the_hash_key_before_anything(rig: Rig) -> None:
    spec = make_spec("tc").model_dump(mode="json")
    spec["backend"] = "nftables"
    spec["partition"]["key"] = "hash"
    hashed = parse_spec(spec)
    tc_hashed = hashed.model_copy(update={"backend": "tc"})
    with pytest.raises(SpecError):
        rig.apply(tc_hashed)
    assert rig.kernel.calls == [] and rig.state_bytes() is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_down_removes_rules_announcement_and_state(rig: Rig, backend: str) -> None:
    rig.apply(make_spec(backend))
    assert controller.down("web", rig.dir, box=rig.box, backends=rig.pick)
    assert rig.kernel.tables == {} and rig.state_bytes() is None
    assert rig.box.announced[-1] == ("web", False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_status_and_clusters_list_every_backend(rig: Rig, backend: str) -> None:
    rig.apply(make_spec(backend))
    assert controller.clusters(rig.dir, backends=rig.pick) == ["web"]
    report = controller.status("web", rig.dir, backends=rig.pick)
    assert report["backend"] == backend and report["in_sync"]
    assert sum(m["buckets"] for m in report["members"]) == 16
    assert ("offload" in report) == (backend == "tc")


def test_status_of_an_unknown_cluster(rig: Rig) -> None:
    with pytest.raises(KernelError, match="not installed"):
        controller.status("nope", rig.dir, backends=rig.pick)


# --------------------------------------------------------------------------------------
# Transitions (pinning: moving)
# --------------------------------------------------------------------------------------


def test_a_rebalance_records_then_moves(rig: Rig) -> None:
    rig.apply(make_spec())
    spec = make_spec(
        members=[
            {"name": "web1", "port": "m1", "address": "198.51.100.10", "weight": 3},
            {"name": "web2", "port": "m2", "address": "198.51.100.18"},
            {"name": "web3", "port": "m3", "address": "198.51.100.26"},
        ]
    )
    result = rig.apply(spec)
    assert result.changed and result.moved > 0 and result.moving == result.moved
    # one commit records (old owners still deliver), one commit moves
    assert rig.commits() == ["nftables.commit(1)", "nftables.commit(2)", "nftables.commit(3)"]
    assert rig.kernel.phases == [[], ["record"], ["move"]]
    assert rig.slept == [1.0] and result.recorded_s == 1.0 and result.generation == 3
    st = statefile.load(rig.dir, "web")
    assert st is not None and len(st.moving) == result.moved and st.generation == 3
    assert {m.phase for m in st.moving.values()} == {"move"}
    for bucket, m in st.moving.items():
        assert m.new == st.layout.table[bucket] != m.old


def test_a_failover_moves_at_once_with_no_transition(rig: Rig) -> None:
    rig.apply(make_spec())
    result = rig.apply(make_spec(), down={"web2"})
    assert result.changed and result.moved > 0 and result.moving == 0
    assert rig.slept == [] and rig.commits()[-1] == "nftables.commit(2)"


def test_restoration_goes_through_the_transition(rig: Rig) -> None:
    rig.apply(make_spec())
    rig.apply(make_spec(), down={"web2"})
    result = rig.apply(make_spec(), down=set())
    assert result.moving == result.moved > 0 and rig.slept == [1.0]


def test_a_member_that_dies_in_transition_takes_its_transitions_along(rig: Rig) -> None:
    rig.apply(make_spec())
    rig.apply(make_spec(), down={"web2"})
    rig.apply(make_spec(), down=set())  # web2's buckets come back from web1 and web3
    st = statefile.load(rig.dir, "web")
    assert st is not None and {m.old for m in st.moving.values()} == {"web1", "web3"}
    rig.apply(make_spec(), down={"web1"})
    st = statefile.load(rig.dir, "web")
    assert st is not None and st.moving and "web1" not in {m.old for m in st.moving.values()}
    assert rig.slept == [1.0]  # the failover itself recorded nothing


def test_transitions_settle_once_idle_and_flowless(rig: Rig) -> None:
    rig.apply(make_spec())
    rig.apply(make_spec(), down={"web2"})
    rig.apply(make_spec(), down=set())
    moving = statefile.load(rig.dir, "web").moving  # type: ignore[union-attr]
    some = sorted(moving)[:2]
    rig.pick("nftables").flows = set(some)
    rig.now += 590  # not yet due: nothing is read, nothing settles
    assert not rig.apply(make_spec()).changed
    assert "nftables.flow_buckets" not in rig.kernel.calls
    rig.now += 20
    result = rig.apply(make_spec())
    assert result.changed and result.moving == len(some) and result.moved == 0
    st = statefile.load(rig.dir, "web")
    assert st is not None and sorted(st.moving) == some
    rig.pick("nftables").flows = set()
    assert rig.apply(make_spec()).moving == 0
    rig.pick("nftables").flows = None  # unknown (unreadable): nothing settles
    assert rig.slept == [1.0]


def test_no_transitions_for_pinning_off_always_or_tc(rig: Rig) -> None:
    for spec in (
        make_spec(pinning={"mode": "off"}),
        make_spec(pinning={"mode": "always"}),
        make_spec("tc"),
    ):
        sub = Rig(rig.dir.parent / spec.pinning.mode / spec.backend)
        sub.apply(spec)
        sub.apply(spec, down={"web2"})
        assert sub.apply(spec, down=set()).moving == 0 and sub.slept == []


def test_dry_run_shows_the_transition_without_waiting(rig: Rig) -> None:
    rig.apply(make_spec())
    rig.apply(make_spec(), down={"web2"})
    result = rig.apply(make_spec(), down=set(), dry_run=True)
    assert result.moving > 0 and rig.slept == [] and "mv4_" in result.ruleset


def test_the_daemons_cache_skips_the_reads_of_a_failover(rig: Rig) -> None:
    cache = controller.Cache()
    spec = make_spec()
    rig.apply(spec, cache=cache)
    wired: list[str] = []

    def wiring(spec: Spec, optional: Collection[str]) -> Wiring:
        wired.append("w")
        return Wiring(ifindex=dict(PORTS), macs=dict(MACS))

    rig.box.wiring = wiring  # type: ignore[method-assign]
    rig.kernel.calls.clear()
    result = rig.apply(spec, down={"web2"}, cache=cache, check_drift=False)
    assert result.changed and rig.commits() == ["nftables.commit(2)"]
    # no observe, no wiring, no read-back before the answer ...
    assert not [c for c in rig.kernel.calls if "observe" in c or "verify" in c] and not wired
    controller.verify_live(cache, backends=rig.pick)  # ... the read-back comes after
    assert rig.kernel.calls[-1] == "nftables.verify(whole=False)"
    # a commit by someone else (the CLI) makes the cache stale: the next apply reads
    rig.apply(spec, down=set())
    rig.kernel.calls.clear()
    rig.apply(spec, down={"web3"}, cache=cache, check_drift=False)
    assert "nftables.observe(complete=False)" in rig.kernel.calls and wired


# -- a state file that cannot be written (full or read-only disk) ------------------------


class ReadOnlyDisk:
    """statefile.save fails as on a read-only remount (EROFS) while `on`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.on = True
        real = statefile.save

        def save(directory: Path, state: statefile.ClusterState) -> None:
            if self.on:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS))
            real(directory, state)

        monkeypatch.setattr(statefile, "save", save)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_cli_refuses_when_the_state_cannot_be_written(
    rig: Rig, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(backend)
    rig.apply(spec)
    before = rig.state_bytes()
    ReadOnlyDisk(monkeypatch)
    with pytest.raises(StateError, match="Read-only file system; nothing changed"):
        rig.apply(spec, down={"web2"})
    assert rig.commits() == [f"{backend}.commit(1)"] and rig.state_bytes() == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_daemon_fails_over_and_restores_exactly_without_a_writable_state(
    rig: Rig, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """state_write_failure="continue": the commit happens, the state is kept in memory
    (`unsaved`) and stands for the file: restoration is the exact undo, and the state
    catches up once the disk is writable; a restart after that moves no bucket."""
    spec = make_spec(backend)
    base = rig.apply(spec).layout.table
    on_disk = rig.state_bytes()
    disk = ReadOnlyDisk(monkeypatch)
    kw: dict[str, Any] = {"state_write_failure": "continue"}
    r2 = rig.apply(spec, down={"web2"}, **kw)
    assert r2.changed and r2.generation == 2 and "web2" not in rig.kernel.tables[backend].table
    assert r2.state_error is not None and "Read-only file system" in r2.state_error
    assert r2.state is not None and r2.state.generation == 2
    r3 = rig.apply(spec, down={"web2", "web3"}, unsaved=r2.state, **kw)
    assert set(r3.layout.table) == {"web1"} and r3.state is not None
    r4 = rig.apply(spec, down={"web3"}, unsaved=r3.state, **kw)
    r5 = rig.apply(spec, down=set(), unsaved=r4.state, **kw)
    assert r5.layout.table == base, "restoration is not the exact undo of the failovers"
    assert rig.state_bytes() == on_disk  # nothing could be written all along
    disk.on = False
    r6 = rig.apply(spec, down=set(), unsaved=r5.state, **kw)
    assert not r6.changed and r6.state_error is None
    st = statefile.load(rig.dir, "web")
    # nftables: the restorations went through transitions (record, then move)
    assert st is not None and st.generation == r5.generation >= 5
    assert st.layout == r5.layout
    commits = rig.commits()
    restarted = rig.apply(spec, **kw)  # a restart: no `unsaved`, the file is current
    assert not restarted.changed and restarted.layout.table == base
    assert rig.commits() == commits


def test_a_restart_before_the_state_caught_up_adopts_the_live_table(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec("nftables")
    rig.apply(spec)
    disk = ReadOnlyDisk(monkeypatch)
    failed = rig.apply(spec, down={"web2"}, state_write_failure="continue")
    disk.on = False
    # the daemon died with its state in memory: the file says generation 1, the kernel 2
    restarted = rig.apply(spec, state_write_failure="continue")
    assert restarted.layout.table == failed.layout.table and restarted.moved == 0


def test_an_address_change_alone_is_recorded(rig: Rig) -> None:
    spec = make_spec("nftables")
    rig.apply(spec)
    data = spec.model_dump(mode="json")
    data["members"][0]["address"] = "198.51.100.99"
    result = rig.apply(parse_spec(data))
    assert not result.changed and rig.commits() == ["nftables.commit(1)"]
    st = statefile.load(rig.dir, "web")
    assert st is not None and st.spec is not None
    assert st.spec["members"][0]["address"] == "198.51.100.99"


def test_down_of_an_unknown_cluster_is_not_installed_as_for_status(rig: Rig) -> None:
    with pytest.raises(KernelError, match="not installed") as down_info:
        controller.down("nope", rig.dir, box=rig.box, backends=rig.pick)
    with pytest.raises(KernelError, match="not installed") as status_info:
        controller.status("nope", rig.dir, backends=rig.pick)
    assert down_info.value.exit_code == status_info.value.exit_code == 1
    assert not rig.dir.exists() or list(rig.dir.iterdir()) == []  # and no lock file left


def test_a_held_lock_makes_apply_busy_and_changes_nothing(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from vipctl.errors import BusyError

    rig.apply(make_spec("nftables"))
    before = rig.state_bytes()
    monkeypatch.setattr(statefile, "LOCK_WAIT_S", 0.2)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with statefile.locked(rig.dir, "web"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder, daemon=True)
    t.start()
    assert held.wait(5)
    try:
        with pytest.raises(BusyError):
            rig.apply(make_spec("nftables", mode="steer"))
    finally:
        release.set()
        t.join(5)
    assert rig.commits() == ["nftables.commit(1)"] and rig.state_bytes() == before


def test_an_announcement_that_cannot_be_made_refuses_before_the_commit(rig: Rig) -> None:
    """Under ProtectKernelTunables the uplink sysctls are read-only: apply used to commit
    the ruleset and then exit 1 on the sysctl write."""
    rig.apply(make_spec("nftables"))
    before = rig.state_bytes()
    rig.box.announce_refusal = "cannot announce the VIPs: read-only"
    with pytest.raises(KernelError, match="read-only"):
        rig.apply(make_spec("nftables", announce_vips=True, mode="steer"))
    assert rig.commits() == ["nftables.commit(1)"] and rig.state_bytes() == before


# -- the desired state: weights in force, failover at once, drift repaired ----------------


def _owners_up_kept(before: Table, after: Table, down: set[str]) -> bool:
    return all(a == b for b, a in zip(before, after, strict=True) if b not in down)


def test_weights_set_by_rebalance_stay_in_force_through_failover_and_restore(rig: Rig) -> None:
    spec = make_spec()
    rig.apply(spec)
    res = rig.apply(spec, weights={"web1": 3})  # `rebalance --weights web1=3`
    assert res.changed and res.recorded_s == 1.0  # a rebalance records its UDP flows first
    rebalanced = res.layout.table
    assert rebalanced.count("web1") in (9, 10)  # 16 * 3/5, floor or ceil
    st = statefile.load(rig.dir, "web")
    assert st is not None and st.intent is not None and st.intent.source == "rebalance"
    slept = list(rig.slept)
    failed = rig.apply(spec, down={"web2"})  # the daemon's failover: the spec's own weights
    assert failed.failover and failed.recorded_s == 0 and rig.slept == slept  # no record step
    assert _owners_up_kept(rebalanced, failed.layout.table, {"web2"})
    assert dict(failed.layout.weights)["web1"] == 3
    restored = rig.apply(spec, down=set())
    assert restored.layout.table == rebalanced  # exactly the table in force before
    again = rig.apply(spec)  # a restarted daemon, or a reload of the unchanged spec
    assert not again.changed and again.layout.table == rebalanced


def test_a_spec_with_other_weights_replaces_the_weights_in_force(rig: Rig) -> None:
    rig.apply(make_spec())
    rig.apply(make_spec(), weights={"web1": 3})
    members = [
        {"name": f"web{i}", "port": f"m{i}", "address": f"198.51.100.{8 * i + 2}", "weight": w}
        for i, w in ((1, 1), (2, 2), (3, 1))
    ]
    res = rig.apply(make_spec(members=members))
    assert dict(res.layout.weights) == {"web1": 1, "web2": 2, "web3": 1}
    st = statefile.load(rig.dir, "web")
    assert st is not None and st.intent is None


def test_weights_equal_to_the_spec_leave_no_intent(rig: Rig) -> None:
    rig.apply(make_spec())
    rig.apply(make_spec(), weights={"web1": 3})
    rig.apply(make_spec(), weights={"web1": 1})
    st = statefile.load(rig.dir, "web")
    assert st is not None and st.intent is None


def test_status_shows_the_weights_in_force_and_the_specs(rig: Rig) -> None:
    rig.apply(make_spec())
    rig.apply(make_spec(), weights={"web1": 3})
    report = controller.status("web", rig.dir, backends=rig.pick)
    web1 = report["members"][0]
    assert (web1["weight"], web1["spec_weight"], report["weights_from"]) == (3, 1, "rebalance")


@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_repairs_a_table_changed_behind_its_back(rig: Rig, backend: str) -> None:
    spec = make_spec(backend)
    first = rig.apply(spec)
    installed = rig.kernel.tables[backend]
    broken = list(installed.table)
    broken[7] = None  # `nft delete element ... owners4_m4 { 0.0.0.7 }`
    installed.table = tuple(broken)
    assert not rig.apply(spec, check_drift=False).changed  # the daemon's failover path trusts
    res = rig.apply(spec)
    assert res.changed and res.repaired and "bucket 7" in res.repaired[0]
    assert rig.kernel.tables[backend].table == first.layout.table
    assert not rig.apply(spec).changed  # and then it is in sync


def test_apply_reinstalls_a_flushed_table(rig: Rig) -> None:
    spec = make_spec()
    first = rig.apply(spec)
    del rig.kernel.tables["nftables"]  # `nft flush ruleset`
    res = rig.apply(spec)
    assert res.changed and rig.kernel.tables["nftables"].table == first.layout.table
    assert res.layout.table == first.layout.table  # not a single bucket moved
