"""`python -m vipctl.cli` (how the lab and the tests run vipctl inside a namespace)."""

from vipctl.cli import main

main()
