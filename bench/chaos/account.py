"""The chaos run's accounting (pure): every connection, datagram and second judged against
the events that actually ran.

* A TCP connection is ``kept`` (open and answering from its first member at the end), or
  ``member_died`` (reset or closed while its member was failing: killed, hung, or cut from a
  router; allowed), or a VIOLATION: reset or closed for any other reason, an echo from
  another member, or a stall (no echo for 10 s: a black hole, where invariant 5 wants even a
  dead member's clients to get a quick reset).
* A connection that never opened counts as a connect failure; allowed while any member or
  router was failing (a SYN can meet a dead member or a router before BFD noticed), else a
  violation.
* A UDP datagram is lost (no echo) or duplicated (two or more); judged outside the failure
  windows (any member or router fault, from its start to ``grace`` seconds after its heal).
* Fingerprints: the seconds during which the routers that were up showed different
  fingerprints in ``vipctl status --json``.

Times in the input are wall-clock seconds; the report gives them relative to ``t0``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bench.chaos.schedule import MEMBER_FAULTS, ROUTER_FAULTS, Event

NEVER_OPENED = ("refused", "connect-timeout", "connect-error")


@dataclass(frozen=True)
class Ran:
    """An event as it ran: wall-clock start and heal (heal == start for instant events)."""

    event: Event
    start: float
    heal: float


@dataclass(frozen=True)
class Window:
    ran: Ran
    member: str | None  # the failing member (None: a router fault)
    start: float
    end: float

    def holds(self, t: float) -> bool:
        return self.start <= t <= self.end


def windows(ran: Sequence[Ran], grace: float) -> list[Window]:
    out = []
    for r in ran:
        kind = r.event.kind
        if kind in MEMBER_FAULTS:
            out.append(Window(r, r.event.member, r.start, r.heal + grace))
        elif kind in ROUTER_FAULTS:
            out.append(Window(r, None, r.start, r.heal + grace))
    return out


def coinciding(ran: Sequence[Ran], t: float, grace: float) -> Ran | None:
    """The event whose last action (start, or heal) came last at or before ``t``, among
    those running at ``t`` (start..heal+grace); else the last one started before ``t``."""

    def last_action(r: Ran) -> float:
        return r.heal if r.heal <= t else r.start

    live = [r for r in ran if r.start <= t <= r.heal + grace]
    if live:
        return max(live, key=last_action)
    before = [r for r in ran if r.start <= t]
    return max(before, key=lambda r: r.start) if before else None


def running(ran: Sequence[Ran], t: float, grace: float) -> list[str]:
    """Labels of every event running at ``t`` (start..heal+grace)."""
    return [r.event.label() for r in ran if r.start <= t <= r.heal + grace]


def nearest_sample(samples: Sequence[Mapping[str, Any]], t: float) -> Mapping[str, Any] | None:
    """The last router sample taken at or before ``t`` (the first one if none was)."""
    best = None
    for s in samples:
        if s["t"] <= t:
            best = s
        else:
            break
    return best if best is not None else (samples[0] if samples else None)


def judge_connection(rec: Mapping[str, Any], wins: Sequence[Window]) -> str:
    """``kept`` | ``unfinished`` | ``member_died`` | ``connect_allowed`` | ``violation``."""
    end = str(rec["end"])
    if end in ("kept", "unfinished"):  # unfinished: its SYN was sent as the run stopped
        return end
    if end in NEVER_OPENED:
        lo, hi = rec["t_start"], rec["t_end"]
        ok = any(w.start <= hi and lo <= w.end for w in wins)
        return "connect_allowed" if ok else "violation"
    if end in ("moved", "bad", "stall"):
        # a stall is a black hole: even a dead member's clients are owed a quick reset
        # (invariant 5), whatever the event order
        return "violation"
    t, member = rec["t_end"], rec.get("member")
    ok = any(
        w.member is not None and (member is None or w.member == member) and w.holds(t) for w in wins
    )
    return "member_died" if ok else "violation"


def fingerprint_split(
    samples: Sequence[Mapping[str, Any]], ran: Sequence[Ran], routers: Sequence[str]
) -> float:
    """Seconds during which the routers that were up reported different fingerprints."""
    total = 0.0
    for a, b in itertools.pairwise(samples):
        down = {
            routers[r.event.routers[0] - 1]
            for r in ran
            if r.event.kind in ROUTER_FAULTS and r.start <= a["t"] <= r.heal
        }
        fps = {
            v["fingerprint"]
            for name, v in a["routers"].items()
            if name not in down and v.get("fingerprint")
        }
        if len(fps) > 1:
            total += b["t"] - a["t"]
    return round(total, 1)


def account(
    *,
    t0: float,
    ran: Sequence[Ran],
    tcp: Sequence[Mapping[str, Any]],
    udp: Sequence[Mapping[str, Any]],
    samples: Sequence[Mapping[str, Any]],
    routers: Sequence[str],
    grace: float,
) -> dict[str, Any]:
    wins = windows(ran, grace)
    verdicts: Counter[str] = Counter()
    ends: Counter[str] = Counter()
    violations: list[dict[str, Any]] = []
    per_event: dict[int, Counter[str]] = {}
    conns = [r for r in tcp if not r.get("summary")]
    for rec in conns:
        v = judge_connection(rec, wins)
        verdicts[v] += 1
        ends[rec["end"]] += 1
        if v in ("kept", "unfinished"):
            continue
        ev = coinciding(ran, rec["t_end"], grace)
        if ev is not None:
            per_event.setdefault(ev.event.index, Counter())[v] += 1
        if v == "violation":
            sample = nearest_sample(samples, rec["t_end"])
            violations.append(
                {
                    "conn": rec["id"],
                    "src": rec["src"],
                    "member": rec.get("member"),
                    "end": rec["end"],
                    "why": rec.get("why", ""),
                    "t": round(rec["t_end"] - t0, 2),
                    "opened": round(rec["t_start"] - t0, 2),
                    "event": ev.event.label() if ev else None,
                    "event_t": round(ev.start - t0, 2) if ev else None,
                    "event_healed_t": round(ev.heal - t0, 2) if ev and ev.event.heals else None,
                    "running": running(ran, rec["t_end"], grace),
                    "routers": dict(sample["routers"]) if sample else None,
                    "sample_t": round(sample["t"] - t0, 2) if sample else None,
                }
            )
    sent = sum(r.get("sent", 0) for r in tcp if r.get("summary"))
    echoed = sum(r.get("echoed", 0) for r in tcp if r.get("summary"))

    udp_sent = sum(r.get("udp_sent", 0) for r in udp if r.get("summary"))
    lost_in = lost_out = dup_in = dup_out = 0
    udp_bad: list[dict[str, Any]] = []
    for r in udp:
        if "replies" not in r:
            continue
        inside = any(w.holds(r["t"]) for w in wins)
        if r["replies"] == 0:
            if inside:
                lost_in += 1
            else:
                lost_out += 1
        else:
            if inside:
                dup_in += 1
            else:
                dup_out += 1
        if not inside and len(udp_bad) < 50:
            ev = coinciding(ran, r["t"], grace)
            udp_bad.append(
                {**r, "t": round(r["t"] - t0, 2), "event": ev.event.label() if ev else None}
            )
    udp_moves = [r for r in udp if "from" in r]
    moved_live: Counter[str] = Counter()  # by the kind of the coinciding event
    for r in udp_moves:
        if any(w.member == r["from"] and w.holds(r["t"]) for w in wins):
            continue  # its member was failing
        ev = coinciding(ran, r["t"], grace)
        moved_live[ev.event.kind if ev else "none"] += 1

    events = []
    for e in ran:
        c = per_event.get(e.event.index, Counter())
        events.append(
            {
                **e.event.to_json(),
                "started": round(e.start - t0, 2),
                "healed": round(e.heal - t0, 2) if e.event.heals else None,
                "member_died": c["member_died"],
                "connect_allowed": c["connect_allowed"],
                "violations": c["violation"],
            }
        )
    by_kind: dict[str, dict[str, int]] = {}
    for ej in events:
        k = by_kind.setdefault(
            ej["kind"], {"events": 0, "member_died": 0, "connect_allowed": 0, "violations": 0}
        )
        k["events"] += 1
        for f in ("member_died", "connect_allowed", "violations"):
            k[f] += ej[f]
    return {
        "connections": {
            "total": len(conns),
            "kept": verdicts["kept"],
            "unfinished": verdicts["unfinished"],
            "member_died": verdicts["member_died"],
            "connect_failed_allowed": verdicts["connect_allowed"],
            "violations": verdicts["violation"],
            "ends": dict(sorted(ends.items())),
            "messages_sent": sent,
            "messages_echoed": echoed,
        },
        "udp": {
            "sent": udp_sent,
            "lost_outside_windows": lost_out,
            "duplicated_outside_windows": dup_out,
            "lost_in_windows": lost_in,
            "duplicated_in_windows": dup_in,
            "flows_changed_member": len(udp_moves),
            "flows_changed_member_alive": sum(moved_live.values()),
            "flows_changed_member_alive_by_event": dict(sorted(moved_live.items())),
            "outside_examples": udp_bad[:10],
        },
        "fingerprints_differed_s": fingerprint_split(samples, ran, routers),
        "by_kind": dict(sorted(by_kind.items())),
        "events": events,
        "violations": violations,
    }


def table(report: Mapping[str, Any]) -> str:
    """The human summary of ``account``'s report (plus the run's parameters)."""
    c, u = report["connections"], report["udp"]
    lines = [
        f"chaos run: seed {report['seed']}, {report['n_events']} events, "
        f"{report['routers']} routers, {report['members']} members, {report['duration_s']} s",
        "",
        f"TCP connections      {c['total']:>7}   (messages sent {c['messages_sent']}, "
        f"echoed {c['messages_echoed']})",
        f"  kept               {c['kept']:>7}",
        f"  member died        {c['member_died']:>7}   (allowed)",
        f"  connect failed     {c['connect_failed_allowed']:>7}   (allowed: during a fault)",
        f"  VIOLATIONS         {c['violations']:>7}",
        f"  ends               {', '.join(f'{k} {v}' for k, v in c['ends'].items())}",
        f"UDP datagrams        {u['sent']:>7}",
        f"  lost outside       {u['lost_outside_windows']:>7}   (in fault windows: "
        f"{u['lost_in_windows']})",
        f"  duplicated outside {u['duplicated_outside_windows']:>7}   (in fault windows: "
        f"{u['duplicated_in_windows']})",
        f"  flows that changed member {u['flows_changed_member']} (member alive: "
        f"{u['flows_changed_member_alive']}: "
        + ", ".join(f"{k} {v}" for k, v in u["flows_changed_member_alive_by_event"].items())
        + ")",
        f"fingerprints differed {report['fingerprints_differed_s']} s",
        "",
        f"{'event kind':<18} {'events':>6} {'died':>6} {'connfail':>8} {'VIOLATIONS':>10}",
    ]
    for kind, k in report["by_kind"].items():
        lines.append(
            f"{kind:<18} {k['events']:>6} {k['member_died']:>6} {k['connect_allowed']:>8} "
            f"{k['violations']:>10}"
        )
    if report["violations"]:
        lines += ["", "violations (first 10; all in the JSON):"]
        for v in report["violations"][:10]:
            lines.append(
                f"  t={v['t']}s conn {v['conn']} {v['src']} {v['member']} {v['end']} "
                f"({v['why']}) opened t={v['opened']}s; event: {v['event']} (t={v['event_t']}s"
                + (f", healed t={v['event_healed_t']}s)" if v["event_healed_t"] else ")")
            )
            others = [x for x in v["running"] if x != v["event"]]
            if others:
                lines.append(f"      also running: {'; '.join(others)}")
            for name, st in (v["routers"] or {}).items():
                lines.append(f"      {name}: {_router_state(st)}")
    if report.get("commands_failed"):
        lines += ["", "commands that failed:"]
        lines += [f"  {c}" for c in report["commands_failed"][:10]]
    return "\n".join(lines)


def _router_state(st: Mapping[str, Any]) -> str:
    if "error" in st:
        return f"status error: {st['error']}"
    down = ",".join(st.get("down", [])) or "-"
    return (
        f"fingerprint {st.get('fingerprint')} generation {st.get('generation')} "
        f"in_sync {st.get('in_sync')} moving {st.get('moving')} down {down}"
    )
