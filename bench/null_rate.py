"""False positives on audio without catalog music: how often a scan reports a song where none plays.

`python -m bench.null_rate` indexes the corpus's reference tracks (as `bench.accuracy` does),
lays the corpus's other two sets end to end, each as one recording without catalog music:
`distractor/` (music that is never indexed) and `speech/` (voice clips back to back), encodes
each as MP3 64 kbit/s mono 44.1 kHz (as the accuracy recordings), and scans every 12-s chunk
through `songscan.scan.scan_file` (the real scan: nominal lookup, the speed pass at every
pitch-and-tempo and key-lock step, the neighbour checks).

Counted per recording:

- *false-positive chunks*: chunks whose songs list is not empty (every song listed there is a
  wrong song: no catalog track plays in these recordings), and the song entries so listed;
- *best chance candidate*: per chunk, the most aligned pair hits of the engine's best
  candidate (`matcher.match_peaks` on the chunk: nominal speed, then the speed pass), which it
  returns when it reaches the weak-match floor (`weak_aligned_hits`, 7; below that it keeps
  none, counted as 0), against the `min_aligned_hits` (12) a match needs: the margin between
  chance and a report.

With `--synthetic-tracks N` the same recordings are scanned again against the catalog plus N
synthetic tracks (`bench.accuracy.grow_index`: the crowded lookups of a large index; the
synthetic tracks have no peaks, so only the real tracks can be reported).

Results go to stdout, `bench/out/null_rate.json` and the "False positives on audio without
catalog music" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from songscan.allocator import tune_allocator
from songscan.catalog import Catalog, iter_audio_files
from songscan.chunks import PlanParams
from songscan.config import DEFAULT, EngineConfig
from songscan.fingerprint import query_peaks
from songscan.matcher import match_peaks
from songscan.media import decode_all
from songscan.scan import scan_file, shutdown_pools

from . import accuracy, broadcast
from .report import OUT, engine_version, machine, update_section

SETS = ("distractor", "speech")
SAMPLE_RATE_HZ = 44_100
BITRATE_KBPS = 64
GAP_S = 0.5  # silence between two files of a set


def build_recording(corpus: Path, which: str, out: Path) -> tuple[Path, float]:
    """Every file of the corpus's set `which`, end to end (GAP_S apart), as one MP3; reused
    when it exists. Returns the path and the duration in seconds."""
    path = out / f"null-{which}-mp3-{BITRATE_KBPS}k.mp3"
    files = sorted(iter_audio_files([corpus / which]))
    if not files:
        raise SystemExit(f"no audio in {corpus / which}")
    if not path.exists():
        gap = np.zeros(round(GAP_S * SAMPLE_RATE_HZ), dtype=np.float32)
        part = path.with_suffix(".part.mp3")
        enc = broadcast._Encoder(part, "mp3", SAMPLE_RATE_HZ, BITRATE_KBPS)
        for f in files:
            x = decode_all(f, SAMPLE_RATE_HZ)
            peak = float(np.abs(x).max(initial=0.0))
            enc.write(np.concatenate([x * (0.5 / peak if peak > 0 else 1.0), gap]))
        enc.close()
        part.rename(path)
    return path, len(decode_all(path, DEFAULT.fingerprint.sample_rate_hz)) / (
        DEFAULT.fingerprint.sample_rate_hz
    )


def best_chance(path: Path, catalog: Catalog, cfg: EngineConfig) -> list[tuple[int, str, float]]:
    """Per 12-s chunk of `path`: the engine's best candidate, as (hits, title, speed): a
    confident match, else the best one with at least `weak_aligned_hits` (which a scan keeps
    only where a neighbouring chunk confirms it); (0, "", 1.0) when no track reaches that."""
    rate = cfg.fingerprint.sample_rate_hz
    samples = decode_all(path, rate)
    step = round(cfg.scan.chunk_s * rate)
    live = catalog.live_ids()
    out = []
    for lo in range(0, samples.shape[0], step):
        chunk = samples[lo : lo + step]
        if chunk.shape[0] < cfg.scan.min_final_chunk_s * rate:
            break
        found = match_peaks(query_peaks(chunk, cfg.fingerprint), catalog, live, cfg)
        best = max(found, key=lambda m: m.aligned_hits, default=None)
        out.append(
            (best.aligned_hits, catalog.track(best.track_id).metadata.title or "", best.speed)
            if best
            else (0, "", 1.0)
        )
    return out


def measure(
    recordings: list[tuple[str, Path, float]], data_dir: Path, index: str, cfg: EngineConfig
) -> list[dict[str, Any]]:
    rows = []
    catalog = Catalog(data_dir)
    try:
        for which, path, duration_s in recordings:
            result = scan_file(path, data_dir, PlanParams(), cfg)
            reported = [c for c in result.chunks if c.songs]
            best = best_chance(path, catalog, cfg)
            chance = [hits for hits, _, _ in best]
            row = {
                "recording": which,
                "index": index,
                "minutes": duration_s / 60,
                "chunks": len(result.chunks),
                "false_positive_chunks": len(reported),
                "wrong_songs": sum(len(c.songs) for c in reported),
                "reports": [
                    {
                        "chunk": c.chunk.index,
                        "songs": [
                            (s.track.metadata.title, s.aligned_hits, s.speed) for s in c.songs
                        ],
                    }
                    for c in reported
                ],
                "chance_max": max(chance, default=0),
                "chance_weak_chunks": sum(h > 0 for h in chance),
                "chance_hist": np.bincount(chance).tolist() if chance else [],
                "chance_top": sorted(
                    ((h, k, title, round(speed, 4)) for k, (h, title, speed) in enumerate(best)),
                    reverse=True,
                )[:5],
                "scan_x_rt": result.duration_s / result.execution_time_s,
            }
            rows.append(row)
            print(
                f"{which} ({index}): {row['false_positive_chunks']} of {row['chunks']} chunks "
                f"report a song; best chance candidate {row['chance_max']} hits "
                f"({row['chance_weak_chunks']} chunks with a weak candidate; "
                f"a match needs {cfg.match.min_aligned_hits})",
                file=sys.stderr,
            )
    finally:
        catalog.close()
    return rows


def section(rows: list[dict[str, Any]], idx: dict[str, Any], command: str) -> str:
    need = DEFAULT.match.min_aligned_hits
    lines = [
        "## False positives on audio without catalog music",
        "",
        f"Command: `{command}` (details, every report and the chance histogram, in "
        "`bench/out/null_rate.json`).",
        "",
        f"Catalog: the {idx['tracks']} reference tracks of the corpus (as in the accuracy "
        "section). Recordings: every file of the corpus's `distractor/` set (music never "
        "indexed) and of its `speech/` set (voice clips), each set end to end "
        f"({GAP_S:g} s apart) as one MP3 {BITRATE_KBPS} kbit/s recording, scanned through "
        "`scan_file` (every chunk, the speed pass at every step, the neighbour checks). "
        "*Best chance candidate*: the most aligned hits of the engine's best candidate in a "
        f"chunk, at any speed, when it reaches the weak-match floor of "
        f"{DEFAULT.match.weak_aligned_hits} (0 otherwise; a match needs {need}). "
        f"Machine: {machine()}. "
        f"Engine: commit {engine_version()}.",
        "",
        "| recording | index | minutes | chunks | chunks reporting a song | songs listed | "
        "best chance candidate: most hits | chunks with a weak candidate | scan × RT |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recording']} | {r['index']} | {r['minutes']:.1f} | {r['chunks']} | "
            f"{r['false_positive_chunks']} | {r['wrong_songs']} | {r['chance_max']} | "
            f"{r['chance_weak_chunks']} | {r['scan_x_rt']:.0f} |"
        )
    total = sum(r["chunks"] for r in rows)
    fp = sum(r["false_positive_chunks"] for r in rows)
    worst = max(r["chance_max"] for r in rows)
    lines += [
        "",
        f"False positives: **{fp} of {total}** chunks; wrong songs: "
        f"**{sum(r['wrong_songs'] for r in rows)}**; the best chance candidate reaches "
        f"{worst} of the {need} aligned hits a match needs.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    tune_allocator()
    ap = argparse.ArgumentParser(prog="python -m bench.null_rate", description=__doc__)
    ap.add_argument("--workers", type=int, default=0, help="0: all cores")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-md", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument(
        "--synthetic-tracks",
        type=int,
        default=0,
        help="also scan against the catalog plus this many synthetic tracks (a large index)",
    )
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    corpus = broadcast.find_corpus()
    data_dir = a.out / "null-data"
    idx = accuracy.build_index(corpus, data_dir, a.workers)
    recordings = [(which, *build_recording(corpus, which, a.out)) for which in SETS]
    cfg = DEFAULT.with_workers(a.workers)
    rows = measure(recordings, data_dir, f"{idx['tracks']} tracks", cfg)
    if a.synthetic_tracks:
        big, _ = accuracy.grow_index(data_dir, a.synthetic_tracks)
        rows += measure(recordings, big, f"+{a.synthetic_tracks:,} synthetic", cfg)
    shutdown_pools()
    argv_s = " ".join(sys.argv[1:] if argv is None else argv)
    command = f".venv/bin/python -m bench.null_rate {argv_s}".strip()
    body = section(rows, idx, command)
    print(body)
    (a.out / "null_rate.json").write_text(json.dumps({"index": idx, "rows": rows}, indent=1))
    if not a.no_md:
        update_section("null-rate", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
