"""The allocator settings keep large numpy temporaries from faulting in fresh pages each time."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import numpy as np
from songscan.allocator import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
faults = []
for _ in range(20):  # a chunk's temporaries: 16 arrays of 1 MiB at once, then all freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    arrays = [np.ones(1 << 17) for _ in range(16)]
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del arrays
print(sum(faults[5:]))
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_tuned_processes_reuse_freed_arrays_instead_of_faulting_in_new_pages() -> None:
    # 15 rounds of 16 arrays of 256 pages: untuned, glibc gives the freed memory back to the
    # system after each round and faults it in again in the next; tuned, the heap keeps it.
    pages = 15 * 16 * 256
    assert _faults("default") >= pages // 2
    assert _faults("tuned") < pages // 20
