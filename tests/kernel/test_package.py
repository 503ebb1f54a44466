"""The Debian package, built from this checkout by scripts/build-deb and installed on this
machine itself (as root, with dpkg; CI does the same on its own machine), then purged.

- the package checks: `vipctl --version` from /usr/bin, `systemd-analyze verify` of the
  installed unit, lintian without errors, purge leaves nothing behind (the state directory
  and /etc/vipctl included; only what existed before the install stays);
- an upgrade under traffic: a lab cluster served by the daemon run from the installed
  package (the unit's own ExecStart line, with its Nice=), the package upgraded to a
  rebuilt revision and the daemon restarted from it as the unit would be, while 4096
  sources are probed round after round: every source answered exactly once by its owner
  throughout, and 0 buckets moved. Purging afterwards leaves the kernel rules in place.

The machine has no systemd as PID 1 here (nor in CI), so the unit itself is not started:
the daemon is its ExecStart command in the router's namespace, and the upgrade's restart
is the SIGTERM + start that `systemctl try-restart` (postinst) does.

One module at a time per machine (an flock of /var/lib/dpkg), never when a vipctl package is already
installed (that one is an operator's, not ours to replace or purge).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.helpers import vipctl, write_spec
from vipctl import __version__
from vipctl.backends import nft as kernel
from vipctl.core.partition import Table, bucket_of
from vipctl.core.spec import parse_spec
from vipctl.host import links
from vipctl.lab import topology as labmod
from vipctl.lab import traffic
from vipctl.lab.topology import Lab

REPO = Path(__file__).resolve().parents[2]
UNIT = Path("/lib/systemd/system/vipctl@.service")
# Two runs of this module on one machine would install and purge under each other: they
# take turns on an flock of dpkg's database directory (a directory that is always there,
# so no lock file is left behind; dpkg itself locks files inside it with fcntl, which an
# flock on the directory does not touch).
LOCK = "/var/lib/dpkg"
SOURCES = traffic.expand(labmod.SOURCES4, 4096)  # 16 per bucket (mask key, 8 bits)
CLUSTER = "pkgtest"
# Environment of the commands an operator runs: nothing of this test's (no PYTHONPATH)
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def run(*argv: str, timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("env", CLEAN_ENV)
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kw
    )


def dpkg(*args: str) -> subprocess.CompletedProcess[str]:
    """dpkg, waiting for its lock while another dpkg or apt runs (never forcing it)."""
    deadline = time.monotonic() + 300
    while True:
        proc = run("dpkg", *args)
        if proc.returncode == 0 or "lock" not in proc.stderr or time.monotonic() > deadline:
            assert proc.returncode == 0, f"dpkg {' '.join(args)}: {proc.stderr}"
            return proc
        time.sleep(2)


def installed_version() -> str | None:
    proc = run("dpkg-query", "-W", "-f", "${Status} ${Version}", "vipctl")
    if proc.returncode != 0 or not proc.stdout.startswith("install ok installed"):
        return None
    return proc.stdout.split()[-1]


def listed(deb: Path) -> list[Path]:
    """Every path in the package's data archive."""
    tar = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    paths = []
    for line in tar.splitlines():
        name = line.split(None, 5)[5].split(" -> ")[0]
        if name not in ("./", "."):
            paths.append(Path("/" + name.removeprefix("./").rstrip("/")))
    return paths


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """Two builds of this checkout: revision 1 and the rebuilt revision 2 (the upgrade)."""
    for tool in ("dpkg-deb", "lintian", "systemd-analyze"):
        assert run("sh", "-c", f"command -v {tool}").returncode == 0, (
            f"{tool} is missing: ./scripts/install-deps --tests installs it"
        )
    lock = os.open(LOCK, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed_version() is not None:
            pytest.skip("a vipctl package is installed here: the test never replaces it")
        out = tmp_path_factory.mktemp("debs")
        built = []
        for revision in (1, 2):
            t0 = time.monotonic()
            proc = run(
                str(REPO / "scripts/build-deb"), "--revision", str(revision), "--out", str(out),
                cwd=REPO, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            built.append(Path(proc.stdout.strip().splitlines()[-1]))
            print(f"\nMEASURED scripts/build-deb (revision {revision}): "
                  f"{time.monotonic() - t0:.1f} s")  # fmt: skip
        try:
            yield built[0], built[1]
        finally:
            if installed_version() is not None:
                dpkg("--purge", "vipctl")
    finally:
        os.close(lock)  # releases the flock


def test_package_installs_verifies_lints_and_purges_clean(debs: tuple[Path, Path]) -> None:
    deb = debs[0]
    arch = run("dpkg", "--print-architecture").stdout.strip()
    assert deb.name == f"vipctl_{__version__}-1_{arch}.deb"
    paths = listed(deb)
    for want in (
        "/usr/bin/vipctl",
        str(UNIT),
        "/etc/vipctl/example.yaml",
        "/usr/share/doc/vipctl/README.md",
        "/usr/share/doc/vipctl/copyright",
        "/usr/share/man/man1/vipctl.1.gz",
        "/usr/share/bash-completion/completions/vipctl",
        "/usr/share/vipctl/prometheus/vipctl.rules.yml",
        "/usr/share/vipctl/prometheus/tests/members.test.yml",
        "/usr/share/vipctl/grafana/vipctl.json",
    ):
        assert Path(want) in paths, want
    extra = [Path("/var/lib/vipctl"), Path("/etc/vipctl"), Path("/usr/lib/vipctl")]
    existed = {p for p in [*paths, *extra] if os.path.lexists(p)}

    lint = run("lintian", "--tag-display-limit", "0", str(deb), timeout=600)
    errors = [line for line in lint.stdout.splitlines() if line.startswith("E:")]
    assert lint.returncode in (0, 1) and not errors, lint.stdout + lint.stderr

    dpkg("-i", str(deb))
    assert installed_version() == f"{__version__}-1"
    # from /usr/bin, cwd /, and a PYTHONPATH that would shadow it if it were honoured
    ver = run("/usr/bin/vipctl", "--version", cwd="/",
              env={**CLEAN_ENV, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert (ver.returncode, ver.stdout.strip()) == (0, f"vipctl {__version__}"), ver.stderr
    ok = run("/usr/bin/vipctl", "validate", "/etc/vipctl/example.yaml")
    assert ok.returncode == 0, ok.stderr
    bad = run("/usr/bin/vipctl", "validate", "/nonexistent.yaml")
    assert bad.returncode == 78 and "Traceback" not in bad.stderr, bad.stderr
    # verify fails on a missing ExecStart binary (checked: rc 1 with /usr/bin/vipctl-missing)
    # and only warns on unknown settings: both count
    verify = run("systemd-analyze", "verify", str(UNIT))
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stderr
    unit = UNIT.read_text()
    assert re.search(r"^ExecStart=/usr/bin/vipctl daemon /etc/vipctl/%i\.yaml ", unit, re.M)
    conffiles = run("dpkg-query", "-W", "-f", "${Conffiles}", "vipctl").stdout
    assert "/etc/vipctl/example.yaml" in conffiles
    assert run("man", "-w", "vipctl").stdout.strip() == "/usr/share/man/man1/vipctl.1.gz"
    page = run("man", "vipctl", env={**CLEAN_ENV, "MANWIDTH": "80"}).stdout
    assert "vipctl rebalance" in page and "EXIT STATUS" in page
    # what the unit's StateDirectory= creates at run time: purge removes it too
    Path("/var/lib/vipctl").mkdir(mode=0o700, exist_ok=True)
    Path("/var/lib/vipctl/web.json").write_text("{}")

    dpkg("--purge", "vipctl")
    assert installed_version() is None
    left = sorted(str(p) for p in [*paths, *extra] if os.path.lexists(p) and p not in existed)
    assert not left, f"left behind by purge: {left}"


# --------------------------------------------------------------------------- upgrade


def live(ns: str, spec: dict[str, Any]) -> tuple[int | None, Table]:
    model = parse_spec(spec)
    with links.in_netns(ns):
        observed = kernel.observe(model.cluster)
        assert observed is not None, "cluster not installed"
        found = kernel.live_table(model, observed)
    assert found is not None
    return observed.generation, found[0]


class UnitDaemon:
    """The installed unit's ExecStart (with %i and $STATE_DIRECTORY filled in and the unit's
    Nice=), run in the router's namespace with a $NOTIFY_SOCKET as systemd gives it."""

    def __init__(self, lb: Lab, state: Path, tag: str) -> None:
        unit = UNIT.read_text()
        exec_start = re.search(r"^ExecStart=(.*)$", unit, re.M)
        nice = re.search(r"^Nice=(-?\d+)$", unit, re.M)
        assert exec_start and nice, unit
        line = exec_start.group(1).replace("%i", CLUSTER)
        argv = [a.replace("${STATE_DIRECTORY}", str(state)) for a in shlex.split(line)]
        assert argv[0] == "/usr/bin/vipctl", argv
        self.log = lb.workdir / f"daemon-{tag}.log"
        sock_path = lb.workdir / f"notify-{tag}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(sock_path))
        self.sock.settimeout(0.2)
        env = {**CLEAN_ENV, "NOTIFY_SOCKET": str(sock_path)}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", lb.router_ns, "nice", "-n", nice.group(1), *argv],
                stdout=log, stderr=log, env=env,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"daemon exited: {self.log.read_text()}"
            with contextlib.suppress(TimeoutError):
                if "READY=1" in self.sock.recv(65536).decode().split("\n"):
                    return
        raise AssertionError(f"no READY=1 within {timeout} s: {self.log.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.sock.close()
        return self.proc.returncode


class Prober(threading.Thread):
    """Probes every source, round after round, until stopped: {round: {source: members}}."""

    def __init__(self, lb: Lab) -> None:
        super().__init__(daemon=True)
        self.lb = lb
        self.rounds: list[tuple[float, dict[str, list[str]]]] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                got = traffic.probe(self.lb, self.lb.vip4, SOURCES, timeout=1.0)
                self.rounds.append((time.monotonic(), got))
        except BaseException as exc:  # re-raised in the test
            self.error = exc

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=120)
        if self.error is not None:
            raise self.error


Rounds = list[tuple[float, dict[str, list[str]]]]


def wrong(rounds: Rounds, owners: dict[str, str | None]) -> list[str]:
    """Every source, in every round, not answered exactly once by its owner."""
    bad = []
    for n, (_, got) in enumerate(rounds):
        for src, members in got.items():
            if members != [owners[src]]:
                bad.append(f"round {n}: {src} answered by {members}, owner {owners[src]}")
    return bad


def test_upgrade_under_traffic_keeps_exactly_once_and_moves_no_bucket(
    debs: tuple[Path, Path], lab: Any
) -> None:
    first, second = debs
    lb: Lab = lab(3)
    spec = lb.spec(CLUSTER, mode="broadcast")
    spec["health"] = {"probe": {"kind": "tcp", "port": lb.echo_port}, "interval_ms": 100}
    state = lb.workdir / "state"
    spec_path = Path(f"/etc/vipctl/{CLUSTER}.yaml")
    p = parse_spec(spec).partition
    daemons: list[UnitDaemon] = []
    try:
        dpkg("-i", str(first))
        write_spec(spec_path, spec)  # JSON is YAML: the unit's /etc/vipctl/%i.yaml
        daemons.append(UnitDaemon(lb, state, "rev1"))
        daemons[0].wait_ready()
        gen, table = live(lb.router_ns, spec)
        owners = {s: table[bucket_of(s, p.key, p.bits, p.seed)] for s in SOURCES}
        assert set(owners.values()) == set(lb.member_names)

        prober = Prober(lb)
        prober.start()
        try:
            while len(prober.rounds) < 1 and prober.is_alive():
                time.sleep(0.1)
            t_upgrade = time.monotonic()
            dpkg("-i", str(second))  # the upgrade: new files under the running daemon
            assert installed_version() == f"{__version__}-2"
            # postinst's `systemctl try-restart vipctl@*`: stop, then start from the new files
            assert daemons[0].stop() == 0
            daemons.append(UnitDaemon(lb, state, "rev2"))
            daemons[1].wait_ready()
            t_ready = time.monotonic()
            while not any(t > t_ready for t, _ in prober.rounds) and prober.is_alive():
                time.sleep(0.1)  # at least one whole round after the new daemon is up
            time.sleep(1.0)
        finally:
            prober.stop()
        during = [r for r in prober.rounds if r[0] > t_upgrade]
        print(f"\nMEASURED upgrade under traffic: {len(prober.rounds)} rounds of "
              f"{len(SOURCES)} sources, {len(during)} after the upgrade began")  # fmt: skip
        assert len(during) >= 2, len(prober.rounds)
        assert not wrong(prober.rounds, owners), wrong(prober.rounds, owners)[:20]
        log2 = daemons[1].log.read_text()
        assert "already matches, nothing written" in log2, log2
        assert live(lb.router_ns, spec) == (gen, table), "the upgraded daemon moved buckets"

        # purge: the package goes, the kernel rules stay (`vipctl down` is the operator's)
        assert daemons[1].stop() == 0
        spec_path.unlink()
        dpkg("--purge", "vipctl")
        assert not os.path.lexists("/usr/bin/vipctl")
        assert live(lb.router_ns, spec) == (gen, table)
        got = traffic.probe(lb, lb.vip4, SOURCES, timeout=1.0)
        assert not wrong([(0.0, got)], owners), traffic.summarize(got)
    finally:
        for d in daemons:
            d.stop()
        spec_path.unlink(missing_ok=True)
        if installed_version() is not None:
            dpkg("--purge", "vipctl")
        vipctl(lb.router_ns, "down", CLUSTER, "--state-dir", str(state))
