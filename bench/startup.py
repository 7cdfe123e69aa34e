"""Start-up and end-to-end time of the `songscan` command, against a baseline revision.

Each figure is a fresh process, timed from spawn to exit (best of `--rounds`): `songscan
--help`, `songscan scan` of a 1-minute MP3 and of a 1-hour MP3 (broadcast-style programmes
built from the corpus by bench/broadcast.py, cached in bench/out/, never committed), against
a catalog of the corpus's reference tracks. The baseline is `git archive REV src` unpacked in
a temporary directory and run with its own PYTHONPATH by the same interpreter, in the same
run, rounds interleaved: a burst of load from other work on the machine hits both alike. Both
scans must print the same result (checked).

    python -m bench.startup [--baseline 80a723a] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from . import broadcast
from .report import OUT, ROOT, engine_version, machine, update_section

CASES = ("--help", "scan 1 min", "scan 1 h")


def export(rev: str, into: Path) -> Path:
    """The `src/` of revision `rev`, unpacked under `into` (read-only git)."""
    archive = into / "src.tar"
    with archive.open("wb") as fh:
        subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, stdout=fh, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def timed(src: Path, args: list[str]) -> tuple[float, float, str]:
    """Wall seconds and CPU seconds (user + system, of the process and the descendants it
    waited for) of a fresh `songscan ARGS` process running the code in `src`, and its stdout."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "songscan.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if done.returncode != 0:
        raise RuntimeError(f"songscan {' '.join(args)} ({src}): {done.stderr.strip()[-500:]}")
    return elapsed, cpu, done.stdout


def catalog_dir(src: Path) -> Path:
    """A data directory with the corpus's reference tracks (added once, then reused)."""
    data = OUT / "startup-data"
    if not (data / "catalog.sqlite").exists():
        reference = broadcast.find_corpus() / "reference"
        timed(src, ["--data", str(data), "add", str(reference), "--allow-duplicate"])
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    ap.add_argument("--baseline", default="80a723a", help="revision to compare with")
    ap.add_argument("--rounds", type=int, default=5, help="fresh processes per figure")
    ap.add_argument("--no-md", action="store_true", help="print only, leave BENCHMARKS.md")
    a = ap.parse_args(argv)
    corpus = broadcast.find_corpus()
    minute = broadcast.build_broadcast(
        corpus, OUT, duration_s=60.0, seed=1, snr_db=10.0, codec="mp3"
    ).path
    hour = broadcast.build_long_mp3(corpus, OUT, hours=1.0, seed=1).path
    current = ROOT / "src"
    with tempfile.TemporaryDirectory(prefix="songscan-baseline-") as tmp:
        baseline = export(a.baseline, Path(tmp))
        data = catalog_dir(current)
        commands = {
            "--help": ["--help"],
            "scan 1 min": ["--data", str(data), "scan", str(minute)],
            "scan 1 h": ["--data", str(data), "scan", str(hour)],
        }
        best: dict[tuple[str, str], float] = {}
        best_cpu: dict[tuple[str, str], float] = {}
        differ: dict[str, int] = {}
        for _ in range(a.rounds):
            for case, args in commands.items():
                outputs = {}
                for label, src in (("baseline", baseline), ("current", current)):
                    seconds, cpu, outputs[label] = timed(src, args)
                    key = (case, label)
                    best[key] = min(best.get(key, seconds), seconds)
                    best_cpu[key] = min(best_cpu.get(key, cpu), cpu)
                if case != "--help":
                    differ[case] = _differing_chunks(outputs["baseline"], outputs["current"])
    floor = min(decode_cpu_s(hour) for _ in range(a.rounds))
    command = "python -m bench.startup" + (f" --baseline {a.baseline} --rounds {a.rounds}")
    body = render(best, best_cpu, a.baseline, a.rounds, command, floor)
    body += "\n\n" + (
        "Results: "
        + "; ".join(
            f"`{case}`: {n} chunks differ from the baseline's" for case, n in differ.items()
        )
        + " (`speed`, which songs gained after the baseline, left aside: a chunk may differ "
        "because the engine has changed since, e.g. a second song in a crossfade)."
    )
    print(body)
    if not a.no_md:
        update_section("startup", body)
    return 0


def decode_cpu_s(path: Path) -> float:
    """CPU seconds that decoding `path` alone takes (FFmpeg's decoder and resampling to the
    fingerprint's rate, as a scan does), in a fresh process: the floor under any scan of it."""
    code = (
        "import sys, time\n"
        "from songscan.config import DEFAULT\n"
        "from songscan.media import decode\n"
        "t = time.process_time()\n"
        "for _ in decode(sys.argv[1], DEFAULT.fingerprint.sample_rate_hz): pass\n"
        "print(time.process_time() - t)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True, check=True
    )
    return float(done.stdout)


def _differing_chunks(baseline: str, current: str) -> int:
    """How many chunks of two scans' outputs differ (`speed` and the timing left aside)."""
    old, new = (_comparable(out)["result"] or [] for out in (baseline, current))
    if len(old) != len(new):
        return max(len(old), len(new))
    return sum(a != b for a, b in zip(old, new, strict=True))


def _comparable(stdout: str) -> Any:
    """A scan's output without its timing (`execution_time` differs from run to run) and
    without `speed`, which songs gained after the baseline (issue 10)."""
    body = json.loads(stdout)
    body.pop("execution_time", None)
    return _without(body, "speed")


def _without(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, key) for k, v in value.items() if k != key}
    if isinstance(value, list):
        return [_without(v, key) for v in value]
    return value


def render(
    best: dict[tuple[str, str], float],
    best_cpu: dict[tuple[str, str], float],
    baseline: str,
    rounds: int,
    command: str,
    decode_floor_cpu_s: float,
) -> str:
    hour_s = 3600.0
    lines = [
        "## Start-up and end to end through the CLI",
        "",
        f"`{command}` ({machine()}; this revision: {engine_version()}). A fresh `songscan` "
        f"process per figure, spawn to exit, best of {rounds}; baseline `{baseline}` run in "
        "the same rounds by the same interpreter. Figures taken while other work shares the "
        "2 cores are noisy (the ratios less so): compare the load average. CPU: user + "
        "system time of the command and the processes it waited for, "
        "best of the rounds (a scan pool forked from the command counts; the workers of a "
        "forkserver, as in older revisions, do not).",
        "",
        "| command | baseline | this revision | CPU baseline → this revision | target |",
        "|---|---|---|---|---|",
    ]
    targets = {"--help": "≤ 0.3 s", "scan 1 min": "≤ 0.6 s", "scan 1 h": "≥ 1,500× real time"}
    for case in CASES:
        old, new = best[(case, "baseline")], best[(case, "current")]
        if case == "scan 1 h":
            row = f"{old:.2f} s ({hour_s / old:,.0f}×) | {new:.2f} s ({hour_s / new:,.0f}×)"
        else:
            row = f"{old:.2f} s | {new:.2f} s"
        cpu = f"{best_cpu[(case, 'baseline')]:.2f} s → {best_cpu[(case, 'current')]:.2f} s"
        lines.append(f"| `songscan {case}` | {row} | {cpu} | {targets[case]} |")
    cores = os.cpu_count() or 1
    bound = hour_s / (decode_floor_cpu_s / cores)
    lines += [
        "",
        f"Floor: decoding the 1-hour file alone (FFmpeg's MP3 decoder and the resampling to the "
        f"fingerprint's 8 kHz, as a scan decodes it; one process, best of {rounds}) takes "
        f"{decode_floor_cpu_s:.2f} s of CPU: spread over all {cores} cores, "
        f"{decode_floor_cpu_s / cores:.2f} s of any scan's end-to-end time, at most "
        f"{bound:,.0f}× real time before a single chunk is fingerprinted.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
