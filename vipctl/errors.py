"""Errors by phase. The CLI maps each class to an exit code (see cli.py)."""

from __future__ import annotations


class VipctlError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(VipctlError):
    """A command-line argument is malformed (exit 2)."""

    exit_code = 2


class SpecError(VipctlError):
    """The spec is invalid (EX_CONFIG, 78). `problems` holds one `field.path: message` each."""

    exit_code = 78

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class KernelError(VipctlError):
    """The kernel refused a change or an interface is missing (exit 1, nothing changed)."""

    exit_code = 1


class StateError(VipctlError):
    """The state directory is unreadable or inconsistent (exit 1)."""

    exit_code = 1


class BusyError(VipctlError):
    """Another vipctl command held the cluster's lock past the wait limit (EX_TEMPFAIL, 75:
    nothing changed, try again)."""

    exit_code = 75


class StoreError(VipctlError):
    """The shared store (etcd) cannot be read or written, or another router changed the
    desired state first (EX_TEMPFAIL, 75: nothing changed, try again)."""

    exit_code = 75
