"""The allocator settings keep large numpy temporaries from faulting in fresh pages each time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from songscan import settings

PROBE = """
import resource, sys
import numpy as np
from songscan.allocator import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
elif sys.argv[1] == "serve worker":  # what a `songscan serve` worker process does first
    from songscan.api.serve import app_factory
    app_factory().state.accounts.close()
faults = []
for _ in range(20):  # a chunk's temporaries: 16 arrays of 1 MiB at once, then all freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    arrays = [np.ones(1 << 17) for _ in range(16)]
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del arrays
print(sum(faults[5:]))
"""


def _faults(mode: str, env: dict[str, str] | None = None) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env
    )
    return int(out.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_tuned_processes_reuse_freed_arrays_instead_of_faulting_in_new_pages() -> None:
    # 15 rounds of 16 arrays of 256 pages: untuned, glibc gives the freed memory back to the
    # system after each round and faults it in again in the next; tuned, the heap keeps it.
    pages = 15 * 16 * 256
    assert _faults("default") >= pages // 2
    assert _faults("tuned") < pages // 20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_a_serve_worker_process_is_tuned_like_the_command(tmp_path: Path) -> None:
    # Uvicorn starts each worker afresh (spawn): the supervisor's tuning does not carry over.
    env = {**os.environ, settings.DATA_ENV: str(tmp_path / "data")}
    assert _faults("serve worker", env) < 15 * 16 * 256 // 20
