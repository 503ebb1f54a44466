"""vipctl: one Virtual IP served by many members, partitioned by source address in the kernel."""

__version__ = "0.1.0"
