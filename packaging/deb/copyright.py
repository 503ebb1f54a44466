"""Prints debian/copyright (DEP-5) for the package: vipctl's own licence and one paragraph
per Python distribution bundled in the virtualenv, read from its installed metadata, so the
file lists exactly what ships. Run by scripts/build-deb with the package's own Python;
argv[1] is the virtualenv's site-packages."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

MIT = """\
 Permission is hereby granted, free of charge, to any person obtaining a copy of
 this software and associated documentation files (the "Software"), to deal in the
 Software without restriction, including without limitation the rights to use, copy,
 modify, merge, publish, distribute, sublicense, and/or sell copies of the Software,
 and to permit persons to whom the Software is furnished to do so, subject to the
 following conditions:
 .
 The above copyright notice and this permission notice shall be included in all
 copies or substantial portions of the Software.
 .
 THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED,
 INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A
 PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT
 HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF
 CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE
 OR THE USE OR OTHER DEALINGS IN THE SOFTWARE."""


def licence(dist: metadata.Distribution) -> str:
    meta = dist.metadata
    expr = meta.get("License-Expression")
    if expr:
        return expr
    for c in meta.get_all("Classifier") or []:
        if c.startswith("License :: OSI Approved :: "):
            return c.rsplit(" :: ", 1)[1]
    short = (meta.get("License") or "").strip().splitlines()
    return short[0] if short and len(short[0]) < 60 else "see the dist-info licence files"


def main(site: str) -> None:
    print("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
    print("Upstream-Name: vipctl")
    print("Comment: Python distributions bundled under /usr/lib/vipctl; each one's full")
    print(" licence text is in its *.dist-info directory there.")
    print()
    print("Files: *")
    print("Copyright: 2026 the vipctl developers")
    print("License: MIT")
    print()
    for dist in sorted(metadata.distributions(path=[site]), key=lambda d: d.metadata["Name"]):
        name = dist.metadata["Name"]
        if name == "vipctl":
            continue
        where = Path(site).relative_to(Path(site).parents[3])
        print(f"Files: usr/lib/vipctl/{where}/{name.replace('-', '_')}*")
        print(f"Copyright: the {name} {dist.version} authors")
        print(f"License: {licence(dist)}")
        print()
    print("License: MIT")
    print(MIT)


if __name__ == "__main__":
    main(sys.argv[1])
