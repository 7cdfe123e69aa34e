"""CPU time of a scan, this engine against another checkout's, in alternating rounds.

`python -m bench.cpu_compare --baseline-src ../wt-base/src --file F --data D [--chunks N]`
scans the first N chunks (all by default) of F against the catalog in D, in one process
(`workers=1`), once to warm up and then timed, in a fresh process per round, alternating
between the baseline's `src` (put first on PYTHONPATH) and this checkout's, `--rounds`
times each. It reports each round's CPU seconds (user + system of the scanning process,
which a shared machine disturbs far less than wall time) and the ratio of the means and of
the bests: the throughput of this engine as a share of the baseline's on the same data.

An engine that reads another catalog format scans its own copy of the data
(`--baseline-data`): `prepare_baseline` (what `bench.throughput --baseline-src` runs) builds
it with the baseline's own code, the same reference tracks and the same synthetic tracks.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def _prepare(small: str, big: str, tracks: int) -> None:
    """In the baseline's environment: the reference corpus into `small`, and when `tracks`,
    a copy of it with that many synthetic tracks in `big` (as bench.throughput grows it)."""
    from songscan.catalog import Catalog, iter_audio_files
    from songscan.config import DEFAULT
    from songscan.ingest import IngestItem, ingest

    from . import broadcast, throughput

    if Path(small).exists():
        shutil.rmtree(small)
    catalog = Catalog(Path(small))
    files = list(iter_audio_files([broadcast.find_corpus() / "reference"]))
    outcomes = ingest(catalog, [IngestItem(p) for p in files], DEFAULT, workers=0)
    audio_s = sum(o.audio_s for o in outcomes if o.error is None)
    rate = catalog.stats()["postings"] / audio_s
    catalog.close()
    if tracks:
        if Path(big).exists():
            shutil.rmtree(big)
        shutil.copytree(small, big)
        model = throughput.TripletModel(Path(small))
        throughput.add_synthetic(Path(big), tracks, rate, model, seed=tracks)


def _env(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src.resolve())}


def prepare_baseline(src: Path, small: Path, big: Path, tracks: int) -> None:
    """Build the baseline engine's data dirs (see `_prepare`) with its own code."""
    cmd = [sys.executable, "-m", "bench.cpu_compare", "--prepare", str(small), str(big)]
    subprocess.run([*cmd, str(tracks)], env=_env(src), check=True)


def _round(src: Path, path: Path, data: Path, chunks: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "bench.cpu_compare", "--child", str(path), str(data)]
    out = subprocess.run(
        [*cmd, str(chunks)], env=_env(src), check=True, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def compare(
    baseline_src: Path,
    path: Path,
    data: Path,
    baseline_data: Path,
    chunks: int,
    rounds: int,
) -> dict[str, Any]:
    """CPU seconds of `rounds` alternating scans by each engine, and this engine's throughput
    as a share of the baseline's (ratio of the means, and of the bests)."""
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "this": []}
    for i in range(rounds):
        for name, src, d in (
            ("baseline", baseline_src, baseline_data),
            ("this", HERE_SRC, data),
        ):
            r = _round(src, path, d, chunks)
            runs[name].append(r)
            print(
                f"round {i + 1} {name}: {r['cpu_s']:.2f} s CPU, {r['matched']}/{r['chunks']} "
                "chunks matched",
                file=sys.stderr,
                flush=True,
            )
    base = [r["cpu_s"] for r in runs["baseline"]]
    this = [r["cpu_s"] for r in runs["this"]]
    return {
        "baseline_cpu_s": base,
        "this_cpu_s": this,
        "ratio_means": statistics.mean(base) / statistics.mean(this),
        "ratio_bests": min(base) / min(this),
        "chunks": int(runs["this"][0]["chunks"]),
        "matched": {name: int(r[0]["matched"]) for name, r in runs.items()},
    }


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    if argv is None and sys.argv[1:2] == ["--prepare"]:
        _prepare(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench.cpu_compare", description=__doc__)
    ap.add_argument("--baseline-src", type=Path, required=True, help="the other engine's src")
    ap.add_argument("--file", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--baseline-data", type=Path, help="the baseline's data dir (--data)")
    ap.add_argument("--chunks", type=int, default=0, help="first N chunks (0: all)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    r = compare(a.baseline_src, a.file, a.data, a.baseline_data or a.data, a.chunks, a.rounds)
    print(
        f"throughput of this engine / baseline: {r['ratio_means']:.1%} (means), "
        f"{r['ratio_bests']:.1%} (bests); CPU s baseline {r['baseline_cpu_s']}, "
        f"this {r['this_cpu_s']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
