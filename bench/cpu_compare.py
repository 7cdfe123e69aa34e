"""CPU time of a scan, this engine against another checkout's, in alternating rounds.

`python -m bench.cpu_compare --baseline-src ../wt-base/src --file F --data D [--chunks N]`
scans the first N chunks (all by default) of F against the catalog in D, in one process
(`workers=1`), once to warm up and then timed, in a fresh process per round, alternating
between the baseline's `src` (put first on PYTHONPATH) and this checkout's, `--rounds`
times each. It reports each round's CPU seconds (user + system of the scanning process,
which a shared machine disturbs far less than wall time) and the ratio of the means and of
the bests: the throughput of this engine as a share of the baseline's on the same data.
Both engines must read the same catalog format.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

HERE_SRC = Path(__file__).resolve().parent.parent / "src"


def _child(path: str, data: str, chunks: int) -> None:
    from songscan.chunks import PlanParams
    from songscan.config import DEFAULT
    from songscan.scan import scan_file

    cfg = DEFAULT.with_workers(1)
    params = PlanParams(limit=chunks) if chunks else PlanParams()
    scan_file(path, data, params, cfg)  # warm-up: catalog, page cache
    usage = resource.getrusage(resource.RUSAGE_SELF)
    before = usage.ru_utime + usage.ru_stime
    result = scan_file(path, data, params, cfg)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - before
    print(json.dumps({"cpu_s": cpu, "chunks": len(result.chunks), "matched": len(result.matched)}))


def _round(src: Path, a: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "bench.cpu_compare", "--child", a.file, a.data, str(a.chunks)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench.cpu_compare", description=__doc__)
    ap.add_argument("--baseline-src", type=Path, required=True, help="the other engine's src")
    ap.add_argument("--file", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--chunks", type=int, default=0, help="first N chunks (0: all)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    runs: dict[str, list[float]] = {"baseline": [], "this": []}
    for i in range(a.rounds):
        for name, src in (("baseline", a.baseline_src.resolve()), ("this", HERE_SRC)):
            r = _round(src, a)
            runs[name].append(r["cpu_s"])
            print(
                f"round {i + 1} {name}: {r['cpu_s']:.2f} s CPU, {r['matched']}/{r['chunks']} "
                "chunks matched",
                flush=True,
            )
    base, this = runs["baseline"], runs["this"]
    print(
        f"throughput of this engine / baseline: {statistics.mean(base) / statistics.mean(this):.1%}"
        f" (means), {min(base) / min(this):.1%} (bests); CPU s baseline {base}, this {this}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
