"""What the installed kernel headers say: compile a tiny C program that prints each
expression (a macro, an enum member, an offsetof/sizeof), and read its output."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest


def header_values(
    tmp_path: Path, headers: Iterable[str], expressions: Iterable[str], needs: str
) -> dict[str, int]:
    """{expression: value} as C computes it; skips the test without a compiler or without
    the header `needs` (a path under /usr/include)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not (Path("/usr/include") / needs).exists():
        pytest.skip("needs a C compiler and the UAPI headers (apt-get install gcc linux-libc-dev)")
    src = ["#include <stdio.h>", "#include <stddef.h>"]
    src += [f"#include <{h}>" for h in headers]
    src.append("int main(void) {")
    src += [f'  printf("%s %lld\\n", "{e}", (long long)({e}));' for e in expressions]
    src += ["  return 0;", "}"]
    (tmp_path / "h.c").write_text("\n".join(src) + "\n")
    subprocess.run([cc, "-o", str(tmp_path / "h"), str(tmp_path / "h.c")], check=True)
    out = subprocess.run([str(tmp_path / "h")], check=True, capture_output=True, text=True)
    values = {}
    for line in out.stdout.splitlines():
        name, value = line.rsplit(" ", 1)
        values[name] = int(value)
    return values
