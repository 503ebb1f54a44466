"""`python -m vipctl.cli` (how the lab and the tests run vipctl inside a namespace)."""

from vipctl.cli.app import main

main()
