"""The chaos run's orchestration (shell): lab, daemons, load, events, poller, accounting.

Everything runs in namespaces this run creates (prefix ``chaos<pid>``, via
``vipctl.lab.topology.build_routers``); they are removed at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.chaos import account, schedule
from bench.chaos.schedule import Event
from vipctl.lab import topology as labmod

ROOT = Path(__file__).resolve().parent.parent.parent
PY = sys.executable
PER_WORKER = 2500  # connections per load process (one selector loop each)


@dataclass
class Config:
    seed: int = 1
    events: int = 10
    conns: int = 300
    routers: int = 2
    members: int = 3
    kinds: tuple[str, ...] = schedule.KINDS
    gap: tuple[float, float] = (3.0, 6.0)
    new_rate: float | None = None  # new TCP connections per second over all workers
    udp_flows: int = 1024
    grace: float = 5.0
    settle: float = 6.0
    broken: str | None = None  # "seed": router 2 runs another partition seed;
    # "transitions-off": every router runs pinning mode off (no transition state)
    prefix: str = field(default_factory=lambda: f"chaos{os.getpid()}")
    logs: Path | None = None  # copy the daemons', echo services' and load's logs here
    verbose: bool = True


def _log(cfg: Config, msg: str) -> None:
    if cfg.verbose:
        print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def spec_for(two: labmod.TwoRouters, cfg: Config, router: int, interval_ms: int) -> dict[str, Any]:
    spec = two.spec("lab", key="hash")
    spec["health"]["interval_ms"] = interval_ms
    if cfg.broken == "seed" and router == 2:
        spec["partition"]["seed"] = 0x5EEE  # the deliberately broken build
    if cfg.broken == "transitions-off":
        spec["pinning"] = {"mode": "off"}  # buckets move without keeping their flows
    return spec


class Chaos:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.two = labmod.describe_routers(cfg.prefix, cfg.members, cfg.routers)
        self.work = self.two.lab.workdir
        self.daemons: dict[int, subprocess.Popen[bytes] | None] = {}
        self.commands: list[subprocess.Popen[str]] = []
        self.command_info: list[tuple[subprocess.Popen[str], str]] = []
        self.samples: list[dict[str, Any]] = []
        self.interval_ms = 100
        self._stop = threading.Event()

    # ----------------------------------------------------------------- paths
    def spec_path(self, r: int) -> Path:
        return self.work / f"spec-r{r}.json"

    def state_dir(self, r: int) -> Path:
        return self.work / f"state-r{r}"

    def ns(self, r: int) -> str:
        return self.two.routers[r - 1]

    def write_specs(self) -> None:
        for r in range(1, self.cfg.routers + 1):
            spec = spec_for(self.two, self.cfg, r, self.interval_ms)
            tmp = self.spec_path(r).with_suffix(".tmp")
            tmp.write_text(json.dumps(spec, indent=1))
            tmp.rename(self.spec_path(r))

    # ----------------------------------------------------------------- daemons
    def cli_argv(self, r: int, *args: str) -> list[str]:
        """`vipctl ARGS` as a process in router r (`ip netns exec` execs it: same pid)."""
        return ["ip", "netns", "exec", self.ns(r), PY, "-m", "vipctl.cli", *args]

    def start_daemon(self, r: int) -> None:
        log = open(self.work / f"daemon-r{r}.log", "ab")  # noqa: SIM115
        try:
            # `ip netns exec` execs the command: the Popen's pid is the daemon's
            self.daemons[r] = subprocess.Popen(
                self.cli_argv(
                    r,
                    "daemon",
                    str(self.spec_path(r)),
                    "--state-dir",
                    str(self.state_dir(r)),
                ),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()

    def signal_daemon(self, r: int, sig: int) -> bool:
        p = self.daemons.get(r)
        if p is None or p.poll() is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, sig)
        if sig == signal.SIGKILL:
            p.wait()
            self.daemons[r] = None
        return True

    def on_routers(self, ev: Event, command: str, *args: str) -> None:
        """`vipctl COMMAND SPEC ARGS --state-dir DIR` on each of the event's routers."""
        for r in ev.routers:
            spec, state = str(self.spec_path(r)), str(self.state_dir(r))
            self.vipctl(r, ev.label(), command, spec, *args, "--state-dir", state)

    def vipctl(self, r: int, label: str, *args: str) -> None:
        """A vipctl command in router r, in the background (the timeline goes on)."""
        p = subprocess.Popen(
            self.cli_argv(r, *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.command_info.append((p, f"{label} r{r}: vipctl {' '.join(args[:1])}"))

    # ----------------------------------------------------------------- poller
    def status(self, r: int) -> dict[str, Any]:
        try:
            out = subprocess.run(
                self.cli_argv(
                    r,
                    "status",
                    "lab",
                    "--json",
                    "--state-dir",
                    str(self.state_dir(r)),
                ),
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return {"error": "status: no answer in 20 s"}
        if out.returncode != 0:
            return {"error": (out.stderr.strip() or out.stdout.strip())[-200:]}
        data = json.loads(out.stdout)
        st = dict(data[0] if isinstance(data, list) else data)
        moving = None
        with contextlib.suppress(OSError, ValueError, KeyError):
            state = json.loads((self.state_dir(r) / "lab.json").read_text())
            moving = len(state.get("moving") or {})
        return {
            "fingerprint": st.get("fingerprint"),
            "generation": st.get("generation"),
            "in_sync": st.get("in_sync"),
            "moving": moving,
            "down": sorted(m["name"] for m in st.get("members", []) if not m.get("healthy")),
            "buckets": {m["name"]: m.get("buckets") for m in st.get("members", [])},
        }

    def _status_into(self, got: dict[str, Any], r: int) -> None:
        got[f"r{r}"] = self.status(r)

    def poller(self) -> None:
        while not self._stop.is_set():
            t = time.time()
            got: dict[str, Any] = {}
            threads = []
            for r in range(1, self.cfg.routers + 1):
                th = threading.Thread(target=self._status_into, args=(got, r))
                th.start()
                threads.append(th)
            for th in threads:
                th.join()
            self.samples.append({"t": t, "routers": dict(sorted(got.items()))})
            self._stop.wait(max(0.0, t + 1.0 - time.time()))

    # ----------------------------------------------------------------- events
    def member_ns(self, name: str) -> str:
        return self.two.lab.by_name(name).ns

    def act(self, phase: str, ev: Event) -> None:
        lab = self.two.lab
        k = ev.kind
        if k == "member_kill":
            if phase == "start":  # kill -9 of the echo service: the member's kernel stays
                pids = labmod.run_in(None, ["ip", "netns", "pids", self.member_ns(ev.member or "")])
                for pid in pids.stdout.split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            else:
                labmod.start_echo(lab, members=[ev.member or ""])
        elif k == "member_hang":
            ns = self.member_ns(ev.member or "")
            if phase == "start":
                labmod.run_in(ns, ["nft", "-f", "-"], input=HANG)
            else:
                labmod.run_in(ns, ["nft", "delete", "table", "inet", "chaos_hang"])
        elif k in ("member_link", "link_flap"):
            port = lab.by_name(ev.member or "").port
            state = "down" if phase == "start" else "up"
            labmod.run_in(self.ns(ev.routers[0]), ["ip", "link", "set", port, state])
        elif k == "daemon_kill":
            r = ev.routers[0]
            if phase == "start":
                self.signal_daemon(r, signal.SIGKILL)
            else:
                self.start_daemon(r)
        elif k == "router_down":
            r = ev.routers[0]
            labmod.set_router_links(self.two, self.ns(r), up=phase != "start")
            if phase == "start":
                self.signal_daemon(r, signal.SIGKILL)
            else:
                self.start_daemon(r)
        elif k == "sighup":
            for r in ev.routers:
                self.signal_daemon(r, signal.SIGHUP)
        elif k == "rebalance_weights":
            w = ",".join(f"{n}={v}" for n, v in ev.weights)
            self.on_routers(ev, "rebalance", "--weights", w)
        elif k == "rebalance_auto":
            self.on_routers(ev, "rebalance", "--auto", "--window", "2")
        elif k == "apply_unchanged":
            self.on_routers(ev, "apply")
        elif k == "reload_changed":
            self.interval_ms = 150 if self.interval_ms == 100 else 100
            self.write_specs()
            for r in ev.routers:
                self.signal_daemon(r, signal.SIGHUP)
        else:  # pragma: no cover - schedule.make only draws known kinds
            raise ValueError(k)

    # ----------------------------------------------------------------- load
    def start_load(self) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
        cfg = self.cfg
        workers = max(1, math.ceil(cfg.conns / PER_WORKER))
        pool = (240 * 256) // workers
        new_rate = cfg.new_rate if cfg.new_rate is not None else max(1.0, cfg.conns / 200)
        procs = []
        for w in range(workers):
            initial = cfg.conns // workers + (1 if w < cfg.conns % workers else 0)
            out = self.work / f"tcp-{w}.jsonl"
            argv = [
                "tcp",
                "--vip",
                self.two.lab.vip4,
                "--out",
                str(out),
                "--seed",
                str(cfg.seed * 100 + w),
                "--first",
                str(w * pool),
                "--pool",
                str(pool),
                "--initial",
                str(initial),
                "--ramp",
                str(max(100.0, 1000.0 / workers)),
                "--new-rate",
                str(new_rate / workers),
            ]
            procs.append((f"tcp{w}", self._spawn_load(argv, f"tcp-{w}"), out))
        if cfg.udp_flows:
            out = self.work / "udp.jsonl"
            argv = [
                "udp",
                "--vip",
                self.two.lab.vip4,
                "--out",
                str(out),
                "--flows",
                str(cfg.udp_flows),
            ]
            procs.append(("udp", self._spawn_load(argv, "udp"), out))
        return procs

    def _spawn_load(self, argv: Sequence[str], name: str) -> subprocess.Popen[bytes]:
        err = open(self.work / f"{name}.log", "ab")  # noqa: SIM115
        try:
            return subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.two.lab.client_ns,
                    PY,
                    "-m",
                    "bench.chaos.load",
                    *argv,
                ],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        finally:
            err.close()

    # ----------------------------------------------------------------- the run
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        started = time.time()
        _log(cfg, f"building lab {cfg.prefix}: {cfg.routers} routers, {cfg.members} members")
        self.two = labmod.build_routers(cfg.prefix, cfg.members, cfg.routers)
        self.work = self.two.lab.workdir
        self.work.mkdir(parents=True, exist_ok=True)
        loads: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        poller = threading.Thread(target=self.poller, daemon=True)
        try:
            self.write_specs()
            for r in range(1, cfg.routers + 1):
                self.start_daemon(r)
            _wait(
                "every router's ECMP path upstream",
                90,
                lambda: (
                    labmod.upstream_paths(self.two, self.two.lab.vip4) == sorted(self.two.links)
                ),
            )
            events = schedule.make(
                cfg.seed,
                cfg.events,
                routers=cfg.routers,
                members=self.two.lab.member_names,
                kinds=cfg.kinds,
                gap=cfg.gap,
            )
            _log(
                cfg,
                f"{len(events)} events over {events[-1].at if events else 0:.0f} s; "
                f"opening {cfg.conns} connections and {cfg.udp_flows} UDP flows",
            )
            loads = self.start_load()
            for name, p, _ in loads:
                _expect(p, b"ready", 60 + cfg.conns / 200, name)
            poller.start()
            t0 = time.time()
            ran = self._run_timeline(events, t0)
            time.sleep(cfg.settle)
            _log(cfg, "stopping the load")
            for _, p, _ in loads:
                assert p.stdin is not None
                p.stdin.write(b"stop\n")
                p.stdin.flush()
            for name, p, _ in loads:
                _expect(p, b"done", 120, name)
            t_end = time.time()
            self._stop.set()
            poller.join(timeout=30)
            tcp = [
                json.loads(x)
                for _, _, out in loads
                if out.name.startswith("tcp")
                for x in out.read_text().splitlines()
            ]
            udp = [
                json.loads(x)
                for _, _, out in loads
                if out.name == "udp.jsonl"
                for x in out.read_text().splitlines()
            ]
            failed = self._commands_failed()
            report = account.account(
                t0=t0,
                ran=ran,
                tcp=tcp,
                udp=udp,
                samples=self.samples,
                routers=[f"r{i}" for i in range(1, cfg.routers + 1)],
                grace=cfg.grace,
            )
            report.update(
                code=_code(),
                seed=cfg.seed,
                n_events=cfg.events,
                routers=cfg.routers,
                members=cfg.members,
                conns=cfg.conns,
                kinds=list(cfg.kinds),
                broken=cfg.broken,
                duration_s=round(t_end - t0, 1),
                wall_s=round(time.time() - started, 1),
                commands_failed=failed,
                samples=len(self.samples),
            )
            return report
        finally:
            self._stop.set()
            for _, p, _ in loads:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            for cmd, _ in self.command_info:
                if cmd.poll() is None:
                    cmd.kill()
                    cmd.wait()
            for r in list(self.daemons):
                self.signal_daemon(r, signal.SIGTERM)
            for d in self.daemons.values():
                if d is not None:
                    try:
                        d.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        d.kill()
                        d.wait()
            if cfg.logs is not None:
                self._keep_logs(cfg.logs)
            labmod.destroy(cfg.prefix)

    def _keep_logs(self, dest: Path) -> None:
        """The lab's workdir goes with the lab: keep its logs."""
        dest.mkdir(parents=True, exist_ok=True)
        for f in self.work.glob("*.log"):
            with contextlib.suppress(OSError):
                (dest / f.name).write_bytes(f.read_bytes())

    def _run_timeline(self, events: Sequence[Event], t0: float) -> list[account.Ran]:
        starts: dict[int, float] = {}
        heals: dict[int, float] = {}
        for at, phase, ev in schedule.timeline(events):
            delay = t0 + at - time.time()
            if delay > 0:
                time.sleep(delay)
            now = time.time()
            _log(self.cfg, f"t={now - t0:6.1f}s {phase:5} {ev.label()}")
            try:
                self.act(phase, ev)
            except labmod.LabError as e:
                self.command_info.append((_done(1, str(e)), f"{ev.label()} {phase}"))
            (starts if phase == "start" else heals)[ev.index] = now
        return [
            account.Ran(e, starts[e.index], heals.get(e.index, starts[e.index])) for e in events
        ]

    def _commands_failed(self) -> list[str]:
        out = []
        for p, what in self.command_info:
            try:
                _, err = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
            if p.returncode != 0:
                out.append(f"{what} -> exit {p.returncode}: {(err or '').strip()[-200:]}")
        return out


HANG = """table inet chaos_hang {
  chain in { type filter hook input priority -300; policy drop; }
  chain out { type filter hook output priority -300; policy drop; }
}
"""


def _done(rc: int, err: str) -> subprocess.Popen[str]:
    """A finished 'command' that records a failed lab action among the commands."""
    return subprocess.Popen(
        [PY, "-c", f"import sys; sys.stderr.write({err!r}); sys.exit({rc})"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _code() -> str:
    """The commit the run's code comes from (``+dirty`` when the tree has changes)."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "vipctl", "bench"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return (head or "unknown") + ("+dirty" if dirty.strip() else "")


def _wait(what: str, timeout: float, cond: Any) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _expect(p: subprocess.Popen[bytes], word: bytes, timeout: float, name: str) -> None:
    assert p.stdout is not None
    fd = p.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    import select

    while word not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"load {name}: no '{word.decode()}' within {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError(f"load {name} exited {p.wait()} before '{word.decode()}'")
        buf += chunk


def write_report(report: dict[str, Any], path: Path | None, out: IO[str]) -> None:
    if path is not None:
        path.write_text(json.dumps(report, indent=1))
    out.write(account.table(report) + "\n")
