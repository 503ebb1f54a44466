"""The "Chaos run" section of docs/benchmarks.md, from one or more run reports (JSON).

    python -m bench.chaos.docs REPORT.json [REPORT.json ...]   # rewrites the section

bench/report.py keeps the section (between its markers) when it regenerates the file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.chaos.schedule import HOLDS_NOW, KINDS
from bench.common import replace_section

ROOT = Path(__file__).resolve().parent.parent.parent
BEGIN, END = "<!-- chaos-bench -->", "<!-- /chaos-bench -->"


def command(r: Mapping[str, Any]) -> str:
    kinds = r.get("kinds") or []
    k = (
        ""
        if list(kinds) == list(KINDS)
        else (
            " --kinds holds-now"
            if list(kinds) == list(HOLDS_NOW)
            else f" --kinds {','.join(kinds)}"
        )
    )
    broken = f" --broken {r['broken']}" if r.get("broken") else ""
    return (
        f"python -m bench.chaos --seed {r['seed']} --events {r['n_events']} "
        f"--conns {r['conns']} --routers {r['routers']}{k}{broken}"
    )


def markdown(reports: Sequence[Mapping[str, Any]], notes: Sequence[str] = ()) -> str:
    lines = [
        BEGIN,
        "## Chaos run (issue 25)",
        "",
        "Two vipctl routers (each a real `vipctl daemon` with a `bgp` spec and its BIRD) behind "
        "an upstream BIRD doing ECMP + BFD; 3 members with a TCP/UDP echo service; long-lived "
        "TCP connections from distinct sources (one numbered message a second, every echo "
        "checked against the member that answered first; new connections opened all through "
        "the run) and 1024 numbered UDP flows (2 datagrams/s each). A seeded schedule of "
        "member faults and operator actions runs under that load (bench/chaos, "
        "`python -m bench.chaos --help`). A reset is allowed only when the connection's "
        "member was failing (killed, hung, cut from a router, link flap) from the event's "
        "start to 5 s after its heal; any other reset or move, and any 10 s stall (a black hole, "
        "even for a dead member's clients, who are owed a quick reset), is a violation. "
        "Run as root from the repository root; each run prints the table below and the "
        "violations with the routers' fingerprint, generation and transition state at that "
        "moment.",
        "",
        "| command | code | s | TCP conns | kept | member died | violations | UDP sent | "
        "lost / dup outside faults | fingerprints differed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        c, u = r["connections"], r["udp"]
        lines.append(
            f"| `{command(r)}` | {r.get('code', '?')} | {r['duration_s']} | {c['total']} | "
            f"{c['kept']} | "
            f"{c['member_died']} | **{c['violations']}** | {u['sent']} | "
            f"{u['lost_outside_windows']} / {u['duplicated_outside_windows']} | "
            f"{r['fingerprints_differed_s']} s |"
        )
    for r in reports:
        lines += [
            "",
            f"Violations by event kind, `{command(r)}` ({r.get('code', '?')}):",
            "",
            "| event kind | events | member died | violations |",
            "|---|---|---|---|",
        ]
        for kind, k in r["by_kind"].items():
            lines.append(f"| {kind} | {k['events']} | {k['member_died']} | {k['violations']} |")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_docs(section: str, path: Path = ROOT / "docs" / "benchmarks.md") -> None:
    replace_section(path, BEGIN, END, section)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    notes = [a[len("--note=") :] for a in args if a.startswith("--note=")]
    files = [a for a in args if not a.startswith("--note=")]
    if not files:
        print("usage: python -m bench.chaos.docs REPORT.json... [--note=TEXT]", file=sys.stderr)
        return 2
    reports = [json.loads(Path(f).read_text()) for f in files]
    write_docs(markdown(reports, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
