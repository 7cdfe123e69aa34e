"""Recognition accuracy on broadcast-style recordings with exact ground truth.

`python -m bench.accuracy` indexes the corpus's reference tracks into a fresh data dir
(`bench/out/accuracy-data`), builds (cached) broadcast recordings with `bench/broadcast.py`,
scans every 12-second chunk of each (accurate offsets) and scores the result against the truth:

- chunk recall: chunks whose 12 s hold >= 6 s of one catalog song (overlap with its truth
  segment, fades included); correct when the chunk's songs list holds that song with its song
  position (`position_ms`) within +-1.5 s of the truth at the chunk start
  (`source_start_s + (chunk_start - file_start_s) * speed`). "top-1" asks the same of songs[0].
- false positives: chunks without any catalog audio (distractor music, speech, silence only)
  that report a song; wrong songs: reports of a track not audible in a chunk with catalog audio.
- timecode error: |position_ms - truth| over correct matches.
- start/end offset error: chunks where a catalog segment starts (ends) at least 1 s inside the
  chunk; the reported song's start_offset_ms (end_offset_ms) against the truth boundary.
- two-song chunks: chunks in which two catalog songs each *play* for at least 4 s (see
  `playing_s`: at no less than half its level, i.e. outside the quieter half of a fade);
  counted when both are listed at their positions.

Results go to stdout, `bench/out/accuracy.json` and the "Accuracy" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from songscan.allocator import tune_allocator
from songscan.catalog import Catalog, iter_audio_files
from songscan.chunks import PlanParams
from songscan.config import DEFAULT
from songscan.fingerprint import hashes as fp_hashes
from songscan.fingerprint import query_peaks, reference_hashes
from songscan.ingest import IngestItem, ingest
from songscan.media import decode_all
from songscan.scan import ScanResult, scan_file, shutdown_pools

from . import broadcast, throughput
from .report import OUT, engine_version, machine, pct, update_section, verdict

MIN_OVERLAP_S = 6.0
POSITION_TOL_S = 1.5
BOUNDARY_INSIDE_S = 1.0
SHARP_FADE_S = 0.5  # boundaries with a shorter fade count as sharp (cuts, short fades)
# A chunk lists both songs of a transition when each plays there this long: half of a DJ's 8-s
# crossfade, the louder half of each song's fade (a 12-s chunk holds that much of both when the
# crossfade's middle lies in its middle 4 s: one crossfade in three). TWO_SONGS_DETAIL_S too.
TWO_SONGS_S = 4.0
TWO_SONGS_DETAIL_S = 3.0


def playing_s(g: broadcast.Segment, c0: float, c1: float) -> float:
    """Seconds of [c0, c1) in which segment `g` plays at no less than half its level (-6 dB):
    all of it but the quieter half of its fades (a linear fade's first half in, last half out;
    an equal-power one's first and last third)."""

    def quiet(shape: str) -> float:
        return 1 / 3 if shape == "equal_power" else 0.5

    lo = g.file_start_s + g.fade_in_s * quiet(g.fade_in_shape)
    hi = g.file_end_s - g.fade_out_s * quiet(g.fade_out_shape)
    return max(0.0, min(c1, hi) - max(c0, lo))


@dataclass(frozen=True)
class Condition:
    name: str
    codec: str
    bitrate_kbps: int
    snr_db: float
    speed: float = 1.0
    target_recall: float | None = None  # percent
    song_speed: float = 0.0  # each song at its own speed within 1 +- song_speed
    stretch: str = "resample"  # how (broadcast.build_broadcast): "tempo" keeps the pitch
    mix: str = "broadcast"  # "dj": music back to back, 8-s crossfades

    @property
    def speed_changed(self) -> bool:
        return self.speed != 1.0 or self.song_speed > 0


PAL_SPEED = 25 / 24  # a 24-fps film broadcast at 25 fps: 4.17 % fast

CONDITIONS = (
    Condition("mp3-64k-snr10", "mp3", 64, 10.0, target_recall=99.0),
    Condition("mp3-64k-snr5", "mp3", 64, 5.0, target_recall=97.0),
    Condition("mp3-64k-snr0", "mp3", 64, 0.0, target_recall=85.0),
    Condition("aac-48k-snr0", "aac", 48, 0.0),
    Condition("mp3-64k-snr10-3%fast", "mp3", 64, 10.0, 1.03, target_recall=90.0),
    Condition("mp3-64k-snr10-2.5%fast", "mp3", 64, 10.0, 1.025),
    Condition("mp3-64k-snr10-speed±8%", "mp3", 64, 10.0, target_recall=97.0, song_speed=0.08),
    Condition("mp3-64k-snr10-PAL", "mp3", 64, 10.0, PAL_SPEED, target_recall=98.0),
    Condition(
        "mp3-64k-snr10-keylock±8%-dj",
        "mp3",
        64,
        10.0,
        target_recall=97.0,
        song_speed=0.08,
        stretch="tempo",
        mix="dj",
    ),
)


@functools.lru_cache(maxsize=64)
def _reference_audio(path: str) -> np.ndarray:
    return decode_all(path, DEFAULT.fingerprint.sample_rate_hz)


def same_music(ref_path: str, pos_a_s: float, pos_b_s: float, seconds: float = 12.0) -> bool:
    """Whether the reference plays the same music at two positions (a repeated section).

    The window at `pos_b_s`, hashed as a query, is matched against the window at `pos_a_s`
    hashed as a reference: equivalent when at least `min_aligned_hits` query anchors align at
    offset 0 (+-1 frame), the engine's own match criterion.
    """
    fp = DEFAULT.fingerprint
    x = _reference_audio(ref_path)
    a0, b0 = round(pos_a_s * fp.sample_rate_hz), round(pos_b_s * fp.sample_rate_hz)
    n = round(seconds * fp.sample_rate_hz)
    if min(a0, b0) < 0 or max(a0, b0) + n // 2 > x.shape[0]:
        return False
    ref = reference_hashes(x[a0 : a0 + n], fp)
    qry = fp_hashes(query_peaks(x[b0 : b0 + n], fp), fp, fp.query_fanout)
    order = np.argsort(ref.hashes)
    rh, rf = ref.hashes[order], ref.anchor_frames[order]
    lo = np.searchsorted(rh, qry.hashes, side="left")
    hi = np.searchsorted(rh, qry.hashes, side="right")
    counts = hi - lo
    if counts.sum() == 0:
        return False
    qi = np.repeat(np.arange(qry.hashes.shape[0]), counts)
    ri = np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum())
    ok = np.abs(rf[ri] - qry.anchor_frames[qi]) <= 1.5
    aligned = np.unique(np.rint(qry.anchor_frames[qi[ok]])).shape[0]
    return aligned >= DEFAULT.match.min_aligned_hits


@dataclass
class Score:
    chunks: int = 0
    eligible: int = 0  # >= 6 s of one catalog song
    correct: int = 0  # that song, right position, anywhere in the list
    correct_top1: int = 0
    misaligned: int = 0  # right song listed, but position off by more than the tolerance
    repeat_equivalent: int = 0  # of those: the song repeats itself there (same music)
    partial: int = 0  # catalog audio, but < 6 s of any one song
    partial_found: int = 0
    no_catalog: int = 0  # no catalog audio at all
    false_positive: int = 0
    wrong_song_chunks: int = 0  # chunks with catalog audio reporting a song not audible there
    timecode_err_s: list[float] = field(default_factory=list)
    start_err_s: list[float] = field(default_factory=list)
    end_err_s: list[float] = field(default_factory=list)
    start_err_sharp_s: list[float] = field(default_factory=list)  # fade-in < 0.5 s
    end_err_sharp_s: list[float] = field(default_factory=list)  # fade-out < 0.5 s
    start_boundaries: int = 0
    end_boundaries: int = 0
    # one entry per chunk in which two catalog songs play >= TWO_SONGS_S each: whether both
    # are listed at their positions; the same at TWO_SONGS_DETAIL_S, and for >= 6 s of each
    # song's segment, fades included (the figure before TWO_SONGS_S)
    two_songs: list[bool] = field(default_factory=list)
    two_songs_detail: list[bool] = field(default_factory=list)
    two_songs_6s: list[bool] = field(default_factory=list)
    two_songs_missed: list[dict[str, Any]] = field(default_factory=list)
    misses: list[dict[str, Any]] = field(default_factory=list)
    false_positives: list[dict[str, Any]] = field(default_factory=list)

    @property
    def recall(self) -> float | None:
        return 100.0 * self.correct / self.eligible if self.eligible else None

    @property
    def recall_repeat_aware(self) -> float | None:
        ok = self.correct + self.repeat_equivalent
        return 100.0 * ok / self.eligible if self.eligible else None

    @property
    def recall_top1(self) -> float | None:
        return 100.0 * self.correct_top1 / self.eligible if self.eligible else None


def score(result: ScanResult, truth: broadcast.Truth, ref_dir: Path) -> Score:
    s = Score()
    speed = truth.speed
    catalog_segs = [g for g in truth.segments if g.kind == "catalog"]
    for cr in result.chunks:
        c0, c1 = cr.chunk.start_s, cr.chunk.end_s
        s.chunks += 1
        here = [g for g in catalog_segs if g.file_start_s < c1 and g.file_end_s > c0]
        overlap: dict[str, float] = {}
        playing: dict[str, float] = {}
        for g in here:
            ov = min(c1, g.file_end_s) - max(c0, g.file_start_s)
            overlap[g.source or ""] = overlap.get(g.source or "", 0.0) + ov
            playing[g.source or ""] = playing.get(g.source or "", 0.0) + playing_s(g, c0, c1)
        names = [Path(m.track.source or "").name for m in cr.songs]
        if not here:
            s.no_catalog += 1
            if cr.songs:
                s.false_positive += 1
                s.false_positives.append({"chunk": cr.chunk.index, "start_s": c0, "songs": names})
            continue
        if any(n not in overlap for n in names):
            s.wrong_song_chunks += 1
        # Position of each audible catalog segment at the chunk start.
        main = {n for n, ov in overlap.items() if ov >= MIN_OVERLAP_S}
        found = False
        found_top1 = False
        listed_wrong_pos = False
        repeat_ok = False
        found_songs: set[str] = set()
        for rank, (m, n) in enumerate(zip(cr.songs, names, strict=True)):
            for g in here:
                if g.source != n:
                    continue
                want = g.source_time(c0, speed)
                err = m.position_ms / 1000.0 - want
                if abs(err) <= POSITION_TOL_S:
                    found_songs.add(n)
                    if n in main:
                        found = True
                        found_top1 = found_top1 or rank == 0
                        s.timecode_err_s.append(abs(err))
                    # Boundaries of this segment inside the chunk.
                    b0 = g.file_start_s - c0
                    if BOUNDARY_INSIDE_S <= b0 <= (c1 - c0) - BOUNDARY_INSIDE_S:
                        s.start_err_s.append(abs(m.start_offset_ms / 1000.0 - b0))
                        if g.fade_in_s < SHARP_FADE_S:
                            s.start_err_sharp_s.append(s.start_err_s[-1])
                    b1 = g.file_end_s - c0
                    if BOUNDARY_INSIDE_S <= b1 <= (c1 - c0) - BOUNDARY_INSIDE_S:
                        s.end_err_s.append(abs(m.end_offset_ms / 1000.0 - b1))
                        if g.fade_out_s < SHARP_FADE_S:
                            s.end_err_sharp_s.append(s.end_err_s[-1])
                    break
                if n in main:
                    listed_wrong_pos = True
                    repeat_ok = repeat_ok or same_music(
                        str(ref_dir / n), want, m.position_ms / 1000.0
                    )
        for g in here:
            b0, b1 = g.file_start_s - c0, g.file_end_s - c0
            if BOUNDARY_INSIDE_S <= b0 <= (c1 - c0) - BOUNDARY_INSIDE_S:
                s.start_boundaries += 1
            if BOUNDARY_INSIDE_S <= b1 <= (c1 - c0) - BOUNDARY_INSIDE_S:
                s.end_boundaries += 1
        both = {n for n, t in playing.items() if t >= TWO_SONGS_S}
        if len(both) >= 2:
            s.two_songs.append(both <= found_songs)
            if not both <= found_songs:
                s.two_songs_missed.append(
                    {
                        "chunk": cr.chunk.index,
                        "playing_s": {n: round(t, 2) for n, t in playing.items()},
                        "songs": names,
                    }
                )
        detail = {n for n, t in playing.items() if t >= TWO_SONGS_DETAIL_S}
        if len(detail) >= 2:
            s.two_songs_detail.append(detail <= found_songs)
        if len(main) >= 2:
            s.two_songs_6s.append(main <= found_songs)
        if main:
            s.eligible += 1
            s.correct += found
            s.correct_top1 += found_top1
            if not found:
                s.misaligned += listed_wrong_pos
                s.repeat_equivalent += repeat_ok
                s.misses.append(
                    {
                        "chunk": cr.chunk.index,
                        "start_s": round(c0, 2),
                        "truth": {n: round(ov, 2) for n, ov in overlap.items()},
                        "repeat_equivalent": repeat_ok,
                        "songs": [
                            (n, round(m.position_ms / 1000, 2), m.aligned_hits)
                            for m, n in zip(cr.songs, names, strict=True)
                        ],
                    }
                )
        else:
            s.partial += 1
            s.partial_found += found or any(n in overlap for n in names)
    return s


def build_index(corpus: Path, data_dir: Path, workers: int) -> dict[str, Any]:
    if data_dir.exists():
        shutil.rmtree(data_dir)
    catalog = Catalog(data_dir)
    files = list(iter_audio_files([corpus / "reference"]))
    t0 = time.perf_counter()
    outcomes = ingest(catalog, [IngestItem(p) for p in files], DEFAULT, workers=workers)
    elapsed = time.perf_counter() - t0
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        raise SystemExit(f"ingest failed for {[str(o.item.path) for o in failed]}")
    audio_s = sum(o.audio_s for o in outcomes)
    stats = catalog.stats()
    catalog.close()
    return {"tracks": len(outcomes), "audio_s": audio_s, "ingest_s": elapsed, **stats}


def grow_index(data_dir: Path, tracks: int) -> tuple[Path, dict[str, Any]]:
    """A copy of the catalog's data dir plus `tracks` synthetic tracks (bench/throughput.py's
    model of a large catalog: postings only, at the real postings rate)."""
    big = data_dir.with_name(f"{data_dir.name}-{tracks}")
    if big.exists():
        shutil.rmtree(big)
    shutil.copytree(data_dir, big)
    catalog = Catalog(data_dir)
    stats = catalog.stats()
    catalog.close()
    rate = stats["postings"] / (stats["hours"] * 3600)
    model = throughput.TripletModel(data_dir)
    return big, throughput.add_synthetic(big, tracks, rate, model, seed=tracks)


def large_section(
    rows: list[dict[str, Any]], idx: dict[str, Any], a: argparse.Namespace, command: str
) -> str:
    return (
        "## Accuracy with a large index\n\n"
        f"Command: `{command}`.\n\n"
        f"The accuracy run's recordings and catalog, scanned against an index that also holds "
        f"{idx['synthetic_tracks']:,} synthetic tracks ({idx['synthetic_postings'] / 1e9:.2f} "
        "billion postings, built as in the throughput section's index growth), so that every "
        "lookup is as crowded as in a catalog of that size and the posting budget "
        f"({DEFAULT.match.max_postings_per_lookup:,} per lookup at nominal speed, "
        f"{DEFAULT.match.max_speed_postings_per_lookup:,} for the speed steps together) leaves "
        "the commonest hashes "
        f"out. Machine: {machine()}. Engine: commit {engine_version()}.\n\n"
        f"{table(rows)}\n\n### Against the targets (set for the small catalog)\n\n"
        f"{targets(rows, command)}\n"
    )


def _f(v: float | None, spec: str = ".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| recording | minutes | scored chunks | recall | top-1 | misses (wrong pos. / of which "
        "repeated music) | recall if repeats count | "
        "no-catalog chunks | false pos. | wrong-song chunks | timecode err median / p90 | "
        "start err median / p90 (n) | end err median / p90 (n) | two-song chunks: both listed | "
        "scan × RT |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['minutes']:.1f} | {r['eligible']} | "
            f"{_f(r['recall'], '.1f')} % | {_f(r['recall_top1'], '.1f')} % | "
            f"{r['eligible'] - r['correct']} ({r['misaligned']} / {r['repeat_equivalent']}) | "
            f"{_f(r['recall_repeat_aware'], '.1f')} % | {r['no_catalog']} | "
            f"{r['false_positive']} | {r['wrong_song_chunks']} | "
            f"{_f(r['tc_median_s'], '.3f')} / {_f(r['tc_p90_s'], '.3f')} s | "
            f"{_f(r['start_median_s'], '.2f')} / {_f(r['start_p90_s'], '.2f')} s "
            f"({r['start_n']}/{r['start_boundaries']}) | "
            f"{_f(r['end_median_s'], '.2f')} / {_f(r['end_p90_s'], '.2f')} s "
            f"({r['end_n']}/{r['end_boundaries']}) | "
            f"{r['two_songs_both']}/{r['two_songs']} | {r['scan_x_rt']:.0f} |"
        )
    return head + "\n".join(lines)


def targets(rows: list[dict[str, Any]], command: str) -> str:
    by = {r["name"]: r for r in rows}
    out = ["| figure | target | measured | verdict |", "|---|---|---|---|"]
    for c in CONDITIONS:
        if c.target_recall is None or c.name not in by:
            continue
        v = by[c.name]["recall"]
        out.append(
            f"| chunk recall, {c.name} | ≥ {c.target_recall:g} % | {_f(v, '.2f')} % | "
            f"{verdict(v, c.target_recall, True, ' points')} (counting repeated music as "
            f"correct: {_f(by[c.name]['recall_repeat_aware'], '.2f')} %, "
            f"{verdict(by[c.name]['recall_repeat_aware'], c.target_recall, True, ' points')}) |"
        )
    fp = sum(r["false_positive"] for r in rows)
    nc = sum(r["no_catalog"] for r in rows)
    out.append(
        f"| false positives (no-catalog chunks reporting a song, all recordings) | 0 | "
        f"{fp} of {nc} | {verdict(fp, 0, False)} |"
    )
    for key, label, goal in (
        ("two_songs", f"chunks in which two songs each play ≥ {TWO_SONGS_S:g} s", "100 %"),
        ("two_songs_detail", f"(detail) the same, ≥ {TWO_SONGS_DETAIL_S:g} s", "—"),
        ("two_songs_6s", "(detail) ≥ 6 s of each song's segment, fades included", "—"),
    ):
        two = sum(r[key] for r in rows)
        both = sum(r[f"{key}_both"] for r in rows)
        share = 100.0 * both / two if two else None
        judged = verdict(share, 100.0, True, " points") if goal != "—" else "—"
        out.append(
            f"| {label} (crossfades, all recordings), listing both at their positions | "
            f"{goal} | {_f(share, '.1f')} % ({both} of {two}) | {judged} |"
        )
    wrong = sum(r["wrong_song_chunks"] for r in rows)
    out.append(
        f"| wrong-song chunks (a track not audible there, all recordings) | 0 | {wrong} | "
        f"{verdict(wrong, 0, False)} |"
    )
    tc = [e for r in rows for e in r["_tc"]]
    tc_speed = [e for r in rows if r["speed_changed"] for e in r["_tc"]]
    st = [e for r in rows for e in r["_start"]]
    en = [e for r in rows for e in r["_end"]]
    st_sharp = [e for r in rows for e in r["_start_sharp"]]
    en_sharp = [e for r in rows for e in r["_end_sharp"]]
    for label, vals, target in (
        ("median timecode error (correct matches, all recordings)", tc, 0.1),
        ("median timecode error (correct matches, speed-changed recordings)", tc_speed, 0.1),
        ("median start-offset error at song starts (all recordings)", st, 0.5),
        ("median end-offset error at song ends (all recordings)", en, 0.5),
        ("(detail) median start-offset error, sharp starts only (fade-in < 0.5 s)", st_sharp, 0.5),
        ("(detail) median end-offset error, sharp ends only (fade-out < 0.5 s)", en_sharp, 0.5),
    ):
        med = pct(vals, 50)
        out.append(
            f"| {label} | ≤ {target:g} s | {_f(med, '.3f')} s (p90 {_f(pct(vals, 90), '.2f')} s, "
            f"n={len(vals)}) | {verdict(med, target, False, ' s')} |"
        )
    return "\n".join(out) + f"\n\nCommand: `{command}`"


def main(argv: list[str] | None = None) -> int:
    tune_allocator()  # as the CLI does: scans run in this process too
    ap = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__)
    ap.add_argument("--minutes", type=float, default=30.0, help="programme minutes per recording")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--only", action="append", help="condition name (repeatable)")
    ap.add_argument("--workers", type=int, default=0, help="0: all cores")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-md", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument(
        "--synthetic-tracks",
        type=int,
        default=0,
        help="scan against the catalog plus this many synthetic tracks (a large index)",
    )
    a = ap.parse_args(argv)
    corpus = broadcast.find_corpus()
    data_dir = a.out / "accuracy-data"
    print(f"corpus {corpus}; indexing into {data_dir}", file=sys.stderr)
    idx = build_index(corpus, data_dir, a.workers)
    print(
        f"indexed {idx['tracks']} tracks, {idx['audio_s'] / 60:.1f} min in {idx['ingest_s']:.1f} s",
        file=sys.stderr,
    )
    if a.synthetic_tracks:
        data_dir, idx = grow_index(data_dir, a.synthetic_tracks)
        print(f"scanning against {data_dir}: {idx}", file=sys.stderr)
    cfg = DEFAULT.with_workers(a.workers)
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    for c in CONDITIONS:
        if a.only and c.name not in a.only:
            continue
        t0 = time.perf_counter()
        b = broadcast.build_broadcast(
            corpus,
            a.out,
            duration_s=a.minutes * 60,
            seed=a.seed,
            snr_db=c.snr_db,
            codec=c.codec,
            bitrate_kbps=c.bitrate_kbps,
            speed=c.speed,
            song_speed=c.song_speed,
            stretch=c.stretch,
            mix=c.mix,
        )
        built = time.perf_counter() - t0
        result = scan_file(b.path, data_dir, PlanParams(), cfg)
        s = score(result, b.truth, corpus / "reference")
        row = {
            "name": c.name,
            "file": b.path.name,
            "minutes": result.duration_s / 60,
            "chunks": s.chunks,
            "eligible": s.eligible,
            "correct": s.correct,
            "recall": s.recall,
            "recall_top1": s.recall_top1,
            "misaligned": s.misaligned,
            "repeat_equivalent": s.repeat_equivalent,
            "recall_repeat_aware": s.recall_repeat_aware,
            "partial": s.partial,
            "partial_found": s.partial_found,
            "no_catalog": s.no_catalog,
            "false_positive": s.false_positive,
            "wrong_song_chunks": s.wrong_song_chunks,
            "tc_median_s": pct(s.timecode_err_s, 50),
            "tc_p90_s": pct(s.timecode_err_s, 90),
            "start_median_s": pct(s.start_err_s, 50),
            "start_p90_s": pct(s.start_err_s, 90),
            "start_n": len(s.start_err_s),
            "start_boundaries": s.start_boundaries,
            "end_median_s": pct(s.end_err_s, 50),
            "end_p90_s": pct(s.end_err_s, 90),
            "end_n": len(s.end_err_s),
            "end_boundaries": s.end_boundaries,
            "two_songs": len(s.two_songs),
            "two_songs_both": sum(s.two_songs),
            "two_songs_detail": len(s.two_songs_detail),
            "two_songs_detail_both": sum(s.two_songs_detail),
            "two_songs_6s": len(s.two_songs_6s),
            "two_songs_6s_both": sum(s.two_songs_6s),
            "speed_changed": c.speed_changed,
            "scan_s": result.execution_time_s,
            "scan_x_rt": result.duration_s / result.execution_time_s,
            "build_s": built,
            "_tc": s.timecode_err_s,
            "_start": s.start_err_s,
            "_end": s.end_err_s,
            "_start_sharp": s.start_err_sharp_s,
            "_end_sharp": s.end_err_sharp_s,
        }
        rows.append(row)
        details[c.name] = {
            "misses": s.misses,
            "false_positives": s.false_positives,
            "two_songs_missed": s.two_songs_missed,
        }
        print(
            f"{c.name}: recall {_f(s.recall)} % ({s.correct}/{s.eligible}), "
            f"FP {s.false_positive}/{s.no_catalog}, wrong-song {s.wrong_song_chunks}, "
            f"tc median {_f(row['tc_median_s'], '.3f')} s, "
            f"start {_f(row['start_median_s'], '.2f')} s, end {_f(row['end_median_s'], '.2f')} s "
            f"[build {built:.0f} s, scan {result.execution_time_s:.1f} s]",
            file=sys.stderr,
        )
    shutdown_pools()
    print(table(rows))
    argv_s = " ".join(sys.argv[1:] if argv is None else argv)
    command = f".venv/bin/python -m bench.accuracy {argv_s}".strip()
    print()
    print(targets(rows, command))
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    (a.out / "accuracy.json").write_text(
        json.dumps({"index": idx, "rows": public, "details": details}, indent=1)
    )
    if a.synthetic_tracks and not a.no_md:
        update_section("accuracy-large", large_section(rows, idx, a, command))
    elif not a.no_md:
        body = (
            "## Accuracy\n\n"
            f"Command: `{command}` (writes details, every missed chunk and false positive, to "
            "`bench/out/accuracy.json`).\n\n"
            f"Catalog: {idx['tracks']} reference tracks of the corpus, "
            f"{idx['audio_s'] / 60:.0f} min. Recordings: {a.minutes:g}-minute programmes "
            f"(seed {a.seed}: the same programme in every row; only noise, codec and speed "
            "differ), pink noise at the given SNR. Machine: "
            f"{machine()}. Engine: commit {engine_version()}.\n\n"
            "Definitions: a chunk is *scored* when its 12 s hold ≥ 6 s of one catalog song; "
            "*recall* = scored chunks whose songs list holds that song with its song position "
            "within ±1.5 s of the truth at the chunk start (*top-1*: songs[0]); *misses (wrong "
            "pos. / repeated music)* = missed chunks, of which the song was listed at a wrong "
            "position / and the reference itself plays the same music at the reported and the "
            "true position (a looped or repeated section: the 12 s window at the reported "
            "position, hashed as a query, aligns with ≥ 12 hits on the window at the true "
            "position, the engine's own match criterion), which no fingerprint can tell apart; "
            "*recall if repeats count* accepts those; "
            "*false pos.* = chunks without any catalog audio (distractor music, speech, "
            "silence) that report a song; *wrong-song chunks* = chunks with catalog audio that "
            "report a track not audible there; *two-song chunks* = chunks in which two catalog "
            f"songs each play ≥ {TWO_SONGS_S:g} s (at no less than half their level: outside "
            "the quieter half of a fade, the louder half of a DJ's 8-s crossfade), and of "
            "those, the ones listing both at their positions; "
            "timecode error = |position_ms − truth| over "
            "correct matches; start/end offset error = |start_offset_ms − truth boundary| for "
            "chunks where a catalog segment starts (ends) ≥ 1 s inside the chunk and the song "
            "was found at the right position (n found / boundaries; the truth boundary is the "
            "segment's edge, fades included).\n\n"
            f"{table(rows)}\n\n### Against the targets\n\n{targets(rows, command)}\n"
        )
        update_section("accuracy", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
