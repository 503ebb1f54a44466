"""The commands the docs tell an operator to type work, on a real lab.

A fenced ```sh block right after the line `<!-- docs-test: run -->` is runnable: every
line of it (comments and blank lines aside) is run here, in document order, against a
3-member lab whose names are the docs' own (cluster `web`, spec file `web.yaml` in the
working directory, members web1..web3 on ports m1..m3, uplink up0, clients 10.99.0.0/16;
the state directory comes from VIPCTL_STATE_DIR). `<!-- docs-test: run KEY=VALUE ... -->`
applies the spec with those fields changed first (`pinning.mode=always`). Each command
must exit 0 and print what EXPECT says it prints; a runnable command without an entry in
EXPECT fails, so a new documented command gets its check.

Where a command runs: `vipctl member SPEC NAME` in member NAME's namespace; `vipctl lab
...` on the host, in a lab of its own (`--prefix` added); `vipctl daemon` and `vipctl
metrics` in the background until they serve (READY=1 on a real $NOTIFY_SOCKET, the
metrics page answering), then SIGTERM, which must end them with exit 0 (`status --watch`:
until it has refreshed twice, then SIGINT, as an operator's Ctrl-C); everything else
in the router's namespace through `sh -c` (so pipes work), `vipctl` being this checkout's
`python -m vipctl.cli`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kernel.conftest import unique_prefix
from vipctl.lab import topology as labmod
from vipctl.lab.topology import Lab

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("README.md", "docs/troubleshooting.md", "docs/operations.md", "docs/deployment.md")
MARK = re.compile(r"^<!-- docs-test: run(?P<overrides>( [a-z_.]+=\S+)*) -->$")
VIPCTL = f"{shlex.quote(sys.executable)} -m vipctl.cli"

# (command, pattern its output must match), first match wins: "meaningful output"
EXPECT: list[tuple[str, str]] = [
    (r"^vipctl validate ", r"web\.yaml: ok \(cluster web, 3 members\)"),
    (r"^vipctl plan .*--auto", r"cluster web: \d+ packets in [\d.]+ s; imbalance"),
    (r"^vipctl plan .*--json", r'"members": \['),
    (r"^vipctl plan ", r"web1.*\n(.*\n)*.*web3"),
    (r"^vipctl apply .*--dry-run", r"dry run: checked by the kernel, nothing changed"),
    (r"^vipctl apply ", r"web: (generation \d+ applied|up to date)"),
    (r"^vipctl which ", r"^10\.99\.1\.7 -> bucket 7 -> web\d \((live|state|spec)\)"),
    (r"^vipctl status .*--load", r"web1 .*\n(.*\n)*.*web3"),
    (r"^vipctl status .*--watch", r"^\d\d:\d\d:\d\d\n(.*\n)*cluster web .*\n(.*\n)*web1 "),
    (r"^vipctl status .*--json", r'"cluster": "web"'),
    (r"^vipctl status", r"cluster web .*in sync\n(.*\n)*web1 .*\n(.*\n)*web3 "),
    (r"^vipctl rebalance .*--auto", r"cluster web: \d+ packets in [\d.]+ s; imbalance"),
    (r"^vipctl rebalance ", r"web: generation \d+ applied"),
    (r"^vipctl doctor ", r"\d+ checks: 0 error"),
    (r"^vipctl layout export ", r'"fingerprint"'),
    (r"^vipctl schema ", r'"\$schema"'),
    (r"^vipctl daemon ", r"vipctl_cluster_generation\{cluster=\"web\"\}"),
    (r"^vipctl metrics ", r"vipctl_member_packets_total\{cluster=\"web\""),
    (r"^vipctl member .*--format networkd", r"\[Match\]\nName=lo"),
    (r"^vipctl member .*--format ifupdown", r"iface lo inet static\n\s+address 198\.51\.100\.253"),
    (r"^vipctl member .*--format netplan", r"network:"),
    (r"^vipctl member .*--apply", r"^web/web1: configured"),
    (r"^vipctl member .*--remove", r"^web/web1: removed"),
    (r"^vipctl member ", r"ip addr (add|replace) 198\.51\.100\.253/32 dev lo"),
    (r"^vipctl down ", r"^web: removed"),
    (r"^vipctl lab up", r"lab \S+ is up"),
    (r"^vipctl lab probe", r"no reply: 0  two or more replies: 0  wrong member: 0"),
    (r"^vipctl lab down", r"lab \S+ removed"),
    (r"^nft list tables", r"table netdev vipctl_web"),
    (r"^nft list table ", r"chain in_up0 \{"),
    (r"^nft list map .*owners", r"elements = \{.*goto to4_web"),
    (r"^nft list map ", r"^\s*map [a-z0-9_]+ \{\n\s*(type|typeof) "),
    (r"^nft list counters ", r"counter c_web1 \{\s*packets \d+ bytes \d+"),
]


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str
    overrides: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def commands(doc: str) -> list[Command]:
    """Every runnable command of `doc`, in order."""
    lines = (ROOT / doc).read_text(encoding="utf-8").splitlines()
    found: list[Command] = []
    i = 0
    while i < len(lines):
        m = MARK.match(lines[i].strip())
        i += 1
        if not m:
            continue
        assert lines[i].strip() == "```sh", f"{doc}:{i + 1}: a runnable block is a ```sh fence"
        overrides = tuple(
            tuple(o.split("=", 1))
            for o in m["overrides"].split()  # type: ignore[misc]
        )
        i += 1
        while lines[i].strip() != "```":
            text = lines[i].strip()
            if text and not text.startswith("#"):
                found.append(Command(doc, i + 1, text, overrides))  # type: ignore[arg-type]
            i += 1
    return found


def expectation(cmd: str) -> str:
    command = re.sub(r"\s+#.*$", "", cmd)  # what follows `#` is the doc's comment
    for pattern, output in EXPECT:
        if re.search(pattern, command):
            return output
    raise AssertionError(f"no EXPECT entry for `{cmd}`: say what its output must show")


@pytest.mark.parametrize("doc", DOCS)
def test_docs_have_runnable_commands(doc: str) -> None:
    """Each document has its runnable blocks, and each command an expectation (no root
    needed for this part, but it lives with the test that runs them)."""
    found = commands(doc)
    assert found, f"{doc}: no runnable block (<!-- docs-test: run --> before a ```sh fence)"
    for c in found:
        expectation(c.text)


# --------------------------------------------------------------------------------------
# Running them
# --------------------------------------------------------------------------------------


def _spec(topo: Lab, overrides: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    spec = topo.spec("web", mode="steer", key="mask", bits=8, vips=[topo.vip4])
    for key, value in overrides:
        *parents, leaf = key.split(".")
        node = spec
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return spec


class Runner:
    def __init__(self, topo: Lab, workdir: Path) -> None:
        self.topo = topo
        self.workdir = workdir
        self.env = dict(os.environ, VIPCTL_STATE_DIR=str(workdir / "state"))
        self.labs: list[str] = []
        self.applied: tuple[tuple[str, str], ...] | None = None

    def use_spec(self, overrides: tuple[tuple[str, str], ...]) -> None:
        """web.yaml with these overrides, applied (the docs' commands read a live cluster)."""
        if overrides == self.applied:
            return
        (self.workdir / "web.yaml").write_text(yaml.safe_dump(_spec(self.topo, overrides)))
        out = self._sh(self.topo.router_ns, f"{VIPCTL} apply web.yaml")
        assert out.returncode == 0, out.stderr
        self.applied = overrides

    def _sh(
        self, ns: str | None, line: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = ["sh", "-c", line]
        if ns is not None:
            argv = ["ip", "netns", "exec", ns, *argv]
        return subprocess.run(
            argv,
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run(self, c: Command) -> tuple[int, str]:
        """(exit code, stdout + stderr) of one documented command."""
        self.use_spec(c.overrides)
        words = re.sub(r"\s+#.*$", "", c.text).split()
        line = re.sub(r"^vipctl ", f"{VIPCTL} ", c.text)
        if words[:2] == ["vipctl", "daemon"] or words[:2] == ["vipctl", "metrics"]:
            return self._background(line, words)
        if "--watch" in words:
            return self._watch(line)
        if words[:2] == ["vipctl", "lab"]:
            if words[2] == "up":
                self.labs.append(unique_prefix())
            line = re.sub(r"(\s+#.*)?$", f" --prefix {self.labs[-1]}", line, count=1)
            out = self._sh(None, line, timeout=300)
        elif words[:2] == ["vipctl", "member"]:
            out = self._sh(self.topo.by_name(words[3]).ns, line)
        else:
            out = self._sh(self.topo.router_ns, line)
        return out.returncode, out.stdout + out.stderr

    def _until(
        self, line: str, done: Callable[[str], bool], stop: int, env: dict[str, str]
    ) -> tuple[int, str]:
        """Start `line` in the router's namespace, wait (30 s at most) until `done(output)`,
        send `stop`; (its exit code, its output)."""
        log = self.workdir / "background.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.topo.router_ns, "sh", "-c", f"exec {line}"],
                cwd=self.workdir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None:
                if done(log.read_text()):
                    break
                time.sleep(0.2)
            proc.send_signal(stop)
            code = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return code, log.read_text()

    def _watch(self, line: str) -> tuple[int, str]:
        """`status --watch`: refreshes until interrupted; Ctrl-C (SIGINT) ends it, exit 0."""
        return self._until(
            line,
            lambda out: len(re.findall(r"^\d\d:\d\d:\d\d$", out, re.M)) >= 2,
            signal.SIGINT,
            self.env,
        )

    def _background(self, line: str, words: list[str]) -> tuple[int, str]:
        """Start it, wait until it serves (the daemon: READY=1 first), read its metrics
        page, SIGTERM it."""
        listen = next(
            (
                w.split("=", 1)[-1]
                for i, w in enumerate(words)
                if w.startswith(("--metrics", "--listen")) and "=" in w
            ),
            None,
        ) or next(words[i + 1] for i, w in enumerate(words) if w in ("--metrics", "--listen"))
        notify = self.workdir / f"notify{time.monotonic_ns()}.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(notify))
        sock.settimeout(0.2)
        ready = [words[1] != "daemon"]
        page = [""]

        def serving(_: str) -> bool:
            if not ready[0]:
                with contextlib.suppress(TimeoutError):
                    ready[0] = b"READY=1" in sock.recv(65536)
                return False
            page[0] = self._scrape(listen)
            return bool(page[0])

        try:
            code, output = self._until(
                line, serving, signal.SIGTERM, dict(self.env, NOTIFY_SOCKET=str(notify))
            )
        finally:
            sock.close()
        return code, output + page[0]

    def _scrape(self, listen: str) -> str:
        out = self._sh(
            self.topo.router_ns,
            f"{shlex.quote(sys.executable)} -c "
            + shlex.quote(
                "import sys, urllib.request; "
                f"sys.stdout.write(urllib.request.urlopen('http://{listen}/metrics', "
                "timeout=2).read().decode())"
            ),
            timeout=10,
        )
        return out.stdout if out.returncode == 0 else ""

    def close(self) -> None:
        for prefix in self.labs:
            labmod.destroy(prefix)


@pytest.fixture
def runner(lab: Callable[..., Lab], tmp_path: Path) -> Iterator[Runner]:
    r = Runner(lab(3), tmp_path)
    try:
        yield r
    finally:
        r.close()


@pytest.mark.parametrize("doc", DOCS)
def test_every_documented_command_works_in_a_lab(doc: str, runner: Runner) -> None:
    failures = []
    for c in commands(doc):
        code, output = runner.run(c)
        want = expectation(c.text)
        if code != 0 or not re.search(want, output, re.MULTILINE):
            failures.append(f"{c}\n  exit {code}, wanted /{want}/ in:\n{output[-2000:]}")
    assert not failures, "\n\n".join(failures)
