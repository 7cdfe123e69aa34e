"""`python -m bench`: the accuracy benchmark, then the throughput benchmark (BENCHMARKS.md)."""

from __future__ import annotations

import sys

from . import accuracy, throughput

if __name__ == "__main__":
    if "-h" in sys.argv or "--help" in sys.argv:
        print("python -m bench: runs `python -m bench.accuracy` then `python -m bench.throughput`")
        raise SystemExit(0)
    rc = accuracy.main([])
    raise SystemExit(rc or throughput.main([]))
