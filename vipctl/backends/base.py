"""The Backend protocol: what the controller asks of the code that speaks to the kernel.

One implementation per `spec.backend` (backends/nft.py, backends/tc.py), chosen in one
place (`backend_for`). The controller runs the same apply for every backend:

    refuse(spec)                       what this backend cannot express: SpecError (78)
    observe(spec)                      what is live for the cluster (cheap: no elements)
    live_table(spec, live)             the bucket table packets meet now, read back
    render(spec, layout, wiring, gen)  the ruleset as text and its digest (pure)
    plan(spec, layout, wiring, gen, live, recorded)   render, plus the batch that turns
                                       what is live into it (`recorded`: the spec the
                                       state says is live, when the state is trusted)
    check(plan) / commit(plan) / verify(plan, whole)   kernel check mode, atomic commit,
                                       read-back
    assumed(plan)                      what observe() returns right after `plan` was
                                       committed (None: the backend cannot say)
    down(spec, cluster)                remove the cluster's kernel objects, nothing else
    clusters(known)                    the clusters this backend has installed (`known`:
                                       the specs in the state directory, for backends
                                       whose kernel objects do not carry the name)
    counters(spec, live)               packets and bytes per member, where the backend
                                       counts them
    pinned(spec)                       pinned flows per member and (bucket, member) of each
    flow_buckets(spec)                 buckets that still hold a recorded flow (settling)
    pin_counts(spec)                   pinned flows per member only (cheaper: no flow list)
    measure(spec, window, sleep)       (packets, bytes) per bucket over a window, counted
                                       in the kernel only while measuring (--auto)
    offload(live)                      how many rules the hardware holds (None: not
                                       applicable)
    ruleset_generation()               a number that changes whenever anyone commits rules
                                       in this namespace (None: the backend has none; the
                                       daemon then reads its rules back on a timer)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from vipctl.core.partition import Layout, Table
from vipctl.core.spec import Spec
from vipctl.core.transition import Moving
from vipctl.render.wiring import Wiring


@dataclass(frozen=True)
class Live:
    """What the kernel holds for one cluster. `detail` is the backend's own description
    (opaque to the controller). `complete` says the description came from a full read
    (counters included), not the cheap structure-only one."""

    backend: str
    generation: int | None
    detail: Any
    complete: bool = False


@dataclass(frozen=True)
class Plan:
    """A rendered ruleset ready for the kernel. `digest` identifies the ruleset independent
    of its generation (and of the tc slot it lands in): two plans with equal digests send
    every packet the same way. `text` is the human-readable ruleset (for --dry-run and
    --diff), `payload` what `commit` sends."""

    spec: Spec
    layout: Layout
    wiring: Wiring
    generation: int
    digest: str
    text: str
    payload: Any = None
    meta: Mapping[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str
    transitions: bool  # keeps per-flow state for buckets in transition

    def refuse(self, spec: Spec) -> None: ...

    def observe(self, spec: Spec, *, complete: bool = False) -> Live | None: ...

    def live_table(
        self, spec: Spec, live: Live | None = None
    ) -> tuple[Table, dict[int, Table]] | None: ...

    def render(
        self,
        spec: Spec,
        layout: Layout,
        wiring: Wiring,
        generation: int,
        moving: Moving | None = None,
        measuring: bool = False,
    ) -> Plan: ...

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
    ) -> Plan: ...

    def flow_buckets(self, spec: Spec) -> set[int] | None: ...

    def assumed(self, plan: Plan) -> Live | None: ...

    def check(self, plan: Plan) -> None: ...

    def commit(self, plan: Plan) -> None: ...

    def verify(self, plan: Plan, *, whole: bool) -> None: ...

    def down(self, spec: Spec | None, cluster: str) -> bool: ...

    def clusters(self, known: list[Spec]) -> list[str]: ...

    def counters(self, spec: Spec, live: Live) -> dict[str, tuple[int, int]]: ...

    def pinned(self, spec: Spec) -> tuple[dict[str, int], list[tuple[int | None, str | None]]]: ...

    def pin_counts(self, spec: Spec) -> dict[str, int]: ...

    def read_load(self, spec: Spec) -> list[tuple[int, int]] | None: ...

    def offload(self, live: Live) -> dict[str, int] | None: ...

    def ruleset_generation(self) -> int | None: ...


def text_digest(lines: Iterable[str]) -> str:
    """A short, stable hash of a ruleset's significant lines."""
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
