"""The pipeline for a whole file: chunk plan -> decode runs -> fingerprint -> match.

One function, `scan_file`, serves the CLI and the HTTP API. A long file is cut into runs of
consecutive chunks; runs are decoded and matched on all cores by a process pool, and results
come back in file order. Each run decodes only its own stretch of the file (seeking, with a
pre-roll that makes its samples identical to a decode from the top), so the result does not
depend on how the file is split or how many processes work on it. A process keeps the file
open between its runs: seeks then cost what lies between runs, not what lies before them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .catalog import Catalog, Track
from .chunks import Chunk, ChunkPlan, PlanParams, chunk_plan
from .config import DEFAULT, EngineConfig
from .errors import DecodeFailed, FingerprintFailed
from .fingerprint import Peaks, query_peaks
from .matcher import (
    Match,
    Placement,
    continuation,
    follow,
    match_peaks,
    match_samples,
    match_tracks,
)
from .media import Media, checked, checked_probe, sample_index
from .workers import init_worker


@dataclass(frozen=True)
class SongMatch:
    track: Track
    score: int
    aligned_hits: int
    speed: float
    timecode_ms: int  # song position at the chunk's (or clip's) start, clamped at 0
    position_ms: int  # the same, unclamped: negative when the song starts inside the chunk
    start_offset_ms: int  # where the matched fragment begins, inside the chunk
    end_offset_ms: int  # where it ends, inside the chunk
    # Other positions in the same song that line up nearly as well (repeated passages).
    alternatives: tuple[SongMatch, ...] = ()
    # Less evidence than a match needs alone: kept because a neighbouring chunk confirms it.
    weak: bool = False


@dataclass(frozen=True)
class ChunkResult:
    chunk: Chunk
    songs: list[SongMatch]


@dataclass(frozen=True)
class ScanResult:
    chunks: list[ChunkResult]  # every recognised chunk, in file order, matched or not
    duration_s: float
    execution_time_s: float

    @property
    def billable_chunks(self) -> int:
        """1 request per recognised 12-second chunk."""
        return len(self.chunks)

    @property
    def matched(self) -> list[ChunkResult]:
        return [c for c in self.chunks if c.songs]


ProgressFn = Callable[[int, int], None]


def plan_for(path: str | os.PathLike[str], params: PlanParams, cfg: EngineConfig) -> ChunkPlan:
    """The chunks a scan of this file would recognise (and bill), without decoding it: counted
    from the duration the header claims, cut to what the file's size can hold. Error 300 for
    a file too short to hold one chunk."""
    duration_s = _duration(path, cfg)
    if duration_s < cfg.scan.min_final_chunk_s:
        raise FingerprintFailed(
            f"the audio is too short to fingerprint ({duration_s:.1f} s; a scan's chunks "
            f"need {cfg.scan.min_final_chunk_s:g} s)"
        )
    return chunk_plan(duration_s, params, cfg.scan)


def _duration(path: str | os.PathLike[str], cfg: EngineConfig) -> float:
    info = checked_probe(path, cfg.limits)
    if info.duration_s is None or info.duration_s <= 0:
        raise DecodeFailed("the media's duration is unknown or zero")
    return info.duration_s


def scan_file(
    path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    params: PlanParams = PlanParams(),  # noqa: B008 - frozen, immutable default
    cfg: EngineConfig = DEFAULT,
    *,
    progress: ProgressFn | None = None,
    owners: tuple[str, ...] | None = None,
    plan: ChunkPlan | None = None,
) -> ScanResult:
    """Recognise the planned chunks of a file against the catalog in `data_dir` (only the
    tracks of `owners` when given: "" is the shared catalog, an account id its uploads).
    `plan`: the file's `plan_for(path, params, cfg)`, when the caller has made it already."""
    started = time.perf_counter()
    if plan is None:
        plan = plan_for(path, params, cfg)
    units = plan.runs(cfg.scan.max_chunks_per_unit)
    catalog = catalog_for(Path(data_dir), cfg)
    results: list[ChunkResult] = []
    done = 0
    for unit_result in _run_units(Path(path), Path(data_dir), units, cfg, owners):
        for chunk, matches in unit_result:
            results.append(ChunkResult(chunk, song_matches(matches, chunk, catalog, cfg)))
        done += len(unit_result)
        if progress:
            progress(done, len(plan))
    mc = cfg.match
    results = confirm_weak(results, mc.continuity_tolerance_s)
    results = follow_continuity(results, mc.continuity_tolerance_s, mc.repeat_tie_share)
    return ScanResult(results, plan.duration_s, time.perf_counter() - started)


def recognize_clip(
    source: str | os.PathLike[str] | Media,
    data_dir: str | os.PathLike[str],
    cfg: EngineConfig = DEFAULT,
    owners: tuple[str, ...] | None = None,
) -> list[SongMatch]:
    """Standard recognition: the first `standard_max_s` seconds of a clip, best match first.
    Error 300 for a clip of less than `min_clip_s` seconds. `source`: a file, or the clip
    opened as a `Media` whose `checked` info the caller has judged (the API has, to judge its
    length: one open of the file serves both)."""
    if not isinstance(source, Media):
        with Media(source) as media:
            checked(media.info(), cfg.limits)  # a sample rate no recording has, before resampling
            return recognize_clip(media, data_dir, cfg, owners)
    rate = cfg.fingerprint.sample_rate_hz
    blocks = list(source.decode(rate, end_s=cfg.scan.standard_max_s))
    samples = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    if samples.shape[0] < cfg.scan.min_clip_s * rate:
        raise FingerprintFailed(
            f"the audio is too short to fingerprint ({samples.shape[0] / rate:.2f} s; a clip "
            f"needs {cfg.scan.min_clip_s:g} s)"
        )
    catalog = catalog_for(Path(data_dir), cfg)
    matches = match_samples(samples, catalog, catalog.live_ids(owners), cfg)
    matches = [m for m in matches if not m.weak]  # a clip has no neighbour to confirm it
    clip = Chunk(0, 0.0, samples.shape[0] / rate)
    return song_matches(matches, clip, catalog, cfg)


def song_matches(
    matches: list[Match], chunk: Chunk, catalog: Catalog, cfg: EngineConfig
) -> list[SongMatch]:
    out = []
    for m in matches:
        try:
            track = catalog.track(m.track_id)
        except KeyError:  # removed between lookup and now
            continue
        main = Placement(m.offset_frames, m.aligned_hits, m.start_frame, m.end_frame)
        song = _song(track, m, main, chunk, cfg)
        alternatives = tuple(_song(track, m, p, chunk, cfg) for p in m.alternatives)
        out.append(replace(song, alternatives=alternatives, weak=m.weak))
    return out


def _song(track: Track, m: Match, p: Placement, chunk: Chunk, cfg: EngineConfig) -> SongMatch:
    fp = cfg.fingerprint
    chunk_ms = round(chunk.duration_s * 1000)
    # The matched hits are a sample of the fragment: the first and last fall on average one
    # spacing of hits inside its edges (as for uniform samples of an interval), so the edges
    # are estimated one mean spacing beyond them.
    spacing = (p.end_frame - p.start_frame) / max(1, p.aligned_hits - 1)
    start_ms = round(fp.frames_to_s(p.start_frame - spacing) * 1000)
    # The fragment ends where the last matched peak's analysis window ends (half a window on).
    end_ms = round(
        fp.frames_to_s(p.end_frame + spacing) * 1000 + fp.n_fft / fp.sample_rate_hz * 500
    )
    position_ms = round(fp.frames_to_s(p.offset_frames) * 1000)
    return SongMatch(
        track=track,
        score=min(100, round(100 * p.aligned_hits / cfg.match.full_score_hits)),
        aligned_hits=p.aligned_hits,
        speed=m.speed,
        timecode_ms=max(0, position_ms),
        position_ms=position_ms,
        start_offset_ms=max(0, min(start_ms, chunk_ms)),
        end_offset_ms=max(0, min(end_ms, chunk_ms)),
    )


def confirm_weak(chunks: list[ChunkResult], tolerance_s: float) -> list[ChunkResult]:
    """Keep a chunk's weak match only where an adjacent chunk's confident match is the same
    song at a consistent position (the song goes on across the chunk boundary); otherwise the
    chunk has no match. Works on the whole ordered result, like follow_continuity."""
    out = []
    for i, c in enumerate(chunks):
        if c.songs and c.songs[0].weak:
            weak = c.songs[0]
            confirmed = any(
                _continues_song(n, c, weak, tolerance_s)
                for n in (
                    chunks[i - 1] if i > 0 else None,
                    chunks[i + 1] if i + 1 < len(chunks) else None,
                )
                if n is not None
                and n.songs
                and not n.songs[0].weak
                and abs(n.chunk.index - c.chunk.index) == 1
            )
            c = ChunkResult(c.chunk, [replace(weak, weak=False)] if confirmed else [])
        out.append(c)
    return out


def _continues_song(n: ChunkResult, c: ChunkResult, song: SongMatch, tolerance_s: float) -> bool:
    """Whether `song` in chunk `c` continues the best song of neighbouring chunk `n` (its best
    position or one of its repeats)."""
    other = n.songs[0]
    return other.track.id == song.track.id and any(
        continues(place, n.chunk, song, c.chunk, tolerance_s)
        for place in (other, *other.alternatives)
    )


def continues(a: SongMatch, ca: Chunk, b: SongMatch, cb: Chunk, tolerance_s: float) -> bool:
    """Whether song position `b` in chunk `cb` follows from position `a` in chunk `ca`."""
    expected = a.position_ms + (cb.start_s - ca.start_s) * 1000 * a.speed
    return abs(b.position_ms - expected) <= tolerance_s * 1000


def follow_continuity(
    chunks: list[ChunkResult], tolerance_s: float, tie_share: float
) -> list[ChunkResult]:
    """Where a song repeats a passage, a chunk's best position may be the wrong repetition.

    Over each run of consecutive chunks whose best song is the same track, choose one position
    per chunk (the best or an alternative) so that as many neighbours as possible continue
    each other (Viterbi). Positions within `tie_share` of a chunk's best evidence count as the
    same audio; remaining ties go to the earliest position (broadcasts play songs from their
    start). Works on the whole ordered result, so it is the same however the scan was split.
    """
    out = list(chunks)
    i = 0
    while i < len(out):
        j = i + 1
        while j < len(out) and _same_song_next(out[j - 1], out[j]):
            j += 1
        if any(c.songs[0].alternatives for c in out[i:j] if c.songs):
            out[i:j] = _best_path(out[i:j], tolerance_s, tie_share)
        i = j
    return out


def _same_song_next(a: ChunkResult, b: ChunkResult) -> bool:
    return (
        bool(a.songs)
        and bool(b.songs)
        and b.chunk.index == a.chunk.index + 1
        and a.songs[0].track.id == b.songs[0].track.id
    )


def _best_path(run: list[ChunkResult], tolerance_s: float, tie_share: float) -> list[ChunkResult]:
    states = [[c.songs[0], *c.songs[0].alternatives] for c in run]

    def emission(options: list[SongMatch]) -> list[float]:
        top = max(o.aligned_hits for o in options)
        return [0.1 * min(1.0, o.aligned_hits / (tie_share * top)) for o in options]

    # score[k] = (total, -position of the path's first state) so ties go to earlier positions
    scores = [(e, -o.position_ms) for e, o in zip(emission(states[0]), states[0], strict=True)]
    back: list[list[int]] = []
    for t in range(1, len(run)):
        new_scores, pointers = [], []
        for e, option in zip(emission(states[t]), states[t], strict=True):
            candidates = [
                (
                    scores[k][0]
                    + e
                    + float(continues(prev, run[t - 1].chunk, option, run[t].chunk, tolerance_s)),
                    scores[k][1],
                    -states[t - 1][k].position_ms,
                    k,
                )
                for k, prev in enumerate(states[t - 1])
            ]
            total, first, _, k = max(candidates)
            new_scores.append((total, first))
            pointers.append(k)
        scores = new_scores
        back.append(pointers)
    path = [max(range(len(scores)), key=lambda k: (scores[k], -states[-1][k].position_ms))]
    for pointers in reversed(back):
        path.append(pointers[path[-1]])
    path.reverse()
    return [_choose(c, states[t][k]) for t, (c, k) in enumerate(zip(run, path, strict=True))]


def _choose(c: ChunkResult, alt: SongMatch) -> ChunkResult:
    """`c` with its best song placed at alternative `alt` (the old place becomes one)."""
    best = c.songs[0]
    if alt is best:
        return c
    rest = tuple(a for a in best.alternatives if a is not alt)
    chosen = replace(alt, alternatives=(replace(best, alternatives=()), *rest))
    return ChunkResult(c.chunk, [chosen, *c.songs[1:]])


# ---- work units -------------------------------------------------------------------------------
UnitResult = list[tuple[Chunk, list[Match]]]


def chunk_audio(
    media: Media, unit: Sequence[Chunk], cfg: EngineConfig
) -> Iterator[tuple[Chunk, np.ndarray]]:
    """The samples of each chunk of a run, decoding the run's stretch of the file once."""
    rate = cfg.fingerprint.sample_rate_hz
    first = sample_index(unit[0].start_s, rate)
    bounds = [
        (sample_index(c.start_s, rate) - first, sample_index(c.end_s, rate) - first) for c in unit
    ]
    pending: list[np.ndarray] = []
    have = 0  # samples in `pending`
    consumed = 0  # samples of the run before pending[0]
    k = 0
    for block in media.decode(
        rate, start_s=unit[0].start_s, end_s=unit[-1].end_s, preroll_s=cfg.scan.preroll_s
    ):
        pending.append(block)
        have += block.shape[0]
        while k < len(unit) and consumed + have >= bounds[k][1]:
            buf = np.concatenate(pending)
            lo, hi = bounds[k][0] - consumed, bounds[k][1] - consumed
            yield unit[k], buf[lo:hi]
            k += 1
            keep_from = hi if k >= len(unit) else bounds[k][0] - consumed
            pending = [buf[keep_from:]]
            consumed += keep_from
            have = pending[0].shape[0]
    if k < len(unit):  # the file ended early (duration was an estimate): the remainder
        buf = np.concatenate(pending) if pending else np.zeros(0, dtype=np.float32)
        while k < len(unit):
            lo = bounds[k][0] - consumed
            samples = buf[max(lo, 0) :]
            if samples.shape[0] / rate >= cfg.scan.min_final_chunk_s:
                chunk = unit[k]
                yield (
                    Chunk(chunk.index, chunk.start_s, chunk.start_s + samples.shape[0] / rate),
                    samples,
                )
            k += 1
            buf = buf[:0]


def scan_unit(
    media: Media,
    catalog: Catalog,
    unit: list[Chunk],
    cfg: EngineConfig,
    owners: tuple[str, ...] | None = None,
) -> UnitResult:
    live = catalog.live_ids(owners)
    chunks, heard = [], []
    for chunk, samples in chunk_audio(media, unit, cfg):
        peaks = query_peaks(samples, cfg.fingerprint)
        chunks.append(chunk)
        heard.append((chunk.start_s, peaks, match_peaks(peaks, catalog, live, cfg)))
    return list(zip(chunks, check_neighbours_songs(heard, catalog, cfg), strict=True))


def check_neighbours_songs(
    heard: list[tuple[float, Peaks, list[Match]]], catalog: Catalog, cfg: EngineConfig
) -> list[list[Match]]:
    """Each chunk's matches, for a run of consecutive chunks given as (start second, peaks,
    matches), after a chunk without a confident match is checked against the songs its
    neighbours matched confidently: first by their pairs, anywhere in the song (under heavy
    noise, or in a crowded index, the triplets may not nominate a song that the pairs still
    recognise); failing that, by single peaks at the position the neighbour's match predicts
    (`matcher.follow`: a quiet passage under noise). Repeated while it finds more (a song found
    in one chunk is followed into the next), so the result does not depend on the order of
    the chunks. Finally a chunk with a confident match is checked for the songs its
    neighbours play confidently and it lacks (a crossfade: one song fades out while the next
    comes in, each perhaps at its own speed)."""
    matches = _recover_from_neighbours(heard, catalog, cfg)
    return _add_neighbours_songs(heard, matches, catalog, cfg)


def _add_neighbours_songs(
    heard: list[tuple[float, Peaks, list[Match]]],
    matches: list[list[Match]],
    catalog: Catalog,
    cfg: EngineConfig,
) -> list[list[Match]]:
    """Each confidently matched chunk with the songs that a neighbouring chunk plays
    confidently and this one does not list where the neighbour's match goes on, all best first:
    a song that fades out under the next one (or in under the last) keeps being reported while
    it plays. Each such song is checked by its pairs at the neighbour's speed: anywhere in the
    song, kept where it goes on from the neighbour's position (`matcher.match_tracks`), failing
    that at the very place the neighbour predicts, where less evidence suffices
    (`matcher.continuation`). A song that this chunk lists below its best one, at a place that
    does not go on from the neighbour's (a repeated passage), is moved to the neighbour's
    place when the song is found there (its place becomes an alternative).

    The neighbour's place may itself be a repeat (a looped song, its best place in a chunk
    where it fades in or out): where the song goes on from one of the neighbour's repeats
    instead, it is listed here where that repeat predicts, and the neighbour's listing moves to
    that repeat (its timeline is the one that goes on)."""
    frames_per_s = cfg.fingerprint.frames_per_s
    tolerance = cfg.match.continuity_tolerance_s * frames_per_s
    out = []
    moves: list[tuple[int, int, Placement]] = []  # (chunk, track, the repeat it moves to)
    for i, (start, peaks, _) in enumerate(heard):
        own = matches[i]
        if not own or own[0].weak:
            out.append(own)
            continue
        # each lead with its chunk, shift (query frames) and the song position (frames) it
        # predicts at this chunk's start
        leads = [
            (lead, j, shift, lead.offset_frames + shift * lead.speed)
            for j in (i - 1, i + 1)
            if 0 <= j < len(heard) and matches[j] and not matches[j][0].weak
            for lead in matches[j]
            for shift in [(start - heard[j][0]) * frames_per_s]
            if not lead.weak and lead.track_id != own[0].track_id
        ]
        leads = [
            (lead, j, shift, at)
            for lead, j, shift, at in leads
            if not any(
                m.track_id == lead.track_id and abs(m.offset_frames - at) <= tolerance for m in own
            )
        ]
        if not leads:
            out.append(own)
            continue
        more: dict[int, Match] = {
            m.track_id: m
            for m in match_tracks(peaks, catalog, [lead for lead, _, _, _ in leads], cfg)
            if not m.weak
            and any(
                lead.track_id == m.track_id and abs(m.offset_frames - at) <= tolerance
                for lead, _, _, at in leads
            )
        }
        # the lead's repeats only where its place does not go on (`continuation` asks them
        # after it): where it does, that is the song's timeline
        for lead, j, shift, _ in leads:
            if lead.track_id not in more:
                found = continuation(peaks, catalog, lead, shift, cfg)
                if found:
                    more[lead.track_id], place = found
                    if place is not None:
                        moves.append((j, lead.track_id, place))
        kept = []
        for m in own:
            if m.track_id in more:  # listed at another place: that becomes an alternative
                moved = more[m.track_id]
                more[m.track_id] = replace(moved, alternatives=(_placement(m), *m.alternatives))
            else:
                kept.append(m)
        out.append(sorted([*kept, *more.values()], key=lambda m: -m.aligned_hits))
    for j, track_id, place in moves:
        out[j] = sorted(
            (_moved(m, place) if m.track_id == track_id else m for m in out[j]),
            key=lambda m: -m.aligned_hits,
        )
    return out


def _placement(m: Match) -> Placement:
    return Placement(m.offset_frames, m.aligned_hits, m.start_frame, m.end_frame)


def _moved(m: Match, place: Placement) -> Match:
    """`m` at its repeat `place` (its own place becomes a repeat); `m` as it is when `place`
    is not one of its repeats (any more)."""
    if place not in m.alternatives:
        return m
    rest = tuple(p for p in m.alternatives if p != place)
    return replace(
        m,
        offset_frames=place.offset_frames,
        aligned_hits=place.aligned_hits,
        start_frame=place.start_frame,
        end_frame=place.end_frame,
        alternatives=(_placement(m), *rest),
    )


def _recover_from_neighbours(
    heard: list[tuple[float, Peaks, list[Match]]], catalog: Catalog, cfg: EngineConfig
) -> list[list[Match]]:
    """The matches of the chunks, those without a confident one checked against their
    neighbours' songs (see check_neighbours_songs)."""
    frames_per_s = cfg.fingerprint.frames_per_s
    matches = [found for _, _, found in heard]
    tried_songs: list[set[int]] = [set() for _ in heard]
    tried_leads: list[set[tuple[float, int, int]]] = [set() for _ in heard]
    while True:
        confident = [bool(m) and not m[0].weak for m in matches]
        changed = False
        for i, (start, peaks, _) in enumerate(heard):
            if confident[i]:
                continue
            leads = [
                (heard[j][0], m)
                for j in (i - 1, i + 1)
                if 0 <= j < len(heard) and confident[j]
                for m in matches[j]
                if not m.weak
            ]
            songs = {m.track_id for _, m in leads} - tried_songs[i]
            if songs:
                tried_songs[i] |= songs
                new_leads = [m for _, m in leads if m.track_id in songs]
                found = match_tracks(peaks, catalog, new_leads, cfg)
                if found and (not found[0].weak or not matches[i]):
                    matches[i] = found
                    if not found[0].weak:
                        changed = True
                        continue
            followed = []
            for lead_start, lead in leads:
                key = (lead_start, lead.track_id, lead.offset_frames)
                if key not in tried_leads[i]:
                    tried_leads[i].add(key)
                    shift = (start - lead_start) * frames_per_s
                    followed.append(follow(peaks, catalog, lead, shift, cfg))
            best = max((m for m in followed if m), key=lambda m: m.aligned_hits, default=None)
            if best:
                matches[i] = [best]
                changed = True
        if not changed:
            return matches


_catalogs: dict[tuple[Path, str | None, str | None], Catalog] = {}


def catalog_for(data_dir: Path, cfg: EngineConfig) -> Catalog:
    """One open catalog per data directory (and database, and index) per process (workers
    keep theirs between units)."""
    key = (data_dir, cfg.catalog_url, cfg.index_url)
    if key not in _catalogs:
        _catalogs[key] = Catalog(data_dir, database_url=cfg.catalog_url, index_url=cfg.index_url)
    return _catalogs[key]


Owners = tuple[str, ...] | None
UnitArgs = tuple[Path, Path, list[Chunk], EngineConfig, Owners, str]


class _WorkerMedia:
    """The files a pool worker scans, each kept open between its units of one scan: a fresh
    open of an MP3 seeks by reading from the top, so opening it per unit made a long scan
    quadratic; an open file's demuxer remembers what it read, and a scan's units come to a
    worker in file order. Up to `MAX_OPEN` scans at once (a server's concurrent scans share
    the pool); all are closed after `IDLE_CLOSE_S` without a unit, so a finished scan's file
    (often a temporary one) is not held open."""

    IDLE_CLOSE_S = 2.0
    MAX_OPEN = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: OrderedDict[Hashable, Media] = OrderedDict()
        self._uses = 0  # units started: an idle timer closes only if none came since
        self._timer: threading.Timer | None = None

    @contextlib.contextmanager
    def open(self, key: Hashable, open_media: Callable[[], Media]) -> Iterator[Media]:
        """The media of `key` (a file and the scan reading it), opened by `open_media`."""
        with self._lock:
            self._uses += 1
            if self._timer is not None:
                self._timer.cancel()
            media = self._open.pop(key, None) or open_media()
            self._open[key] = media
            while len(self._open) > self.MAX_OPEN:
                self._open.popitem(last=False)[1].close()
        try:
            yield media
        except BaseException:
            with self._lock:  # left mid-stream by an error: not worth keeping
                self._open.pop(key, media).close()
            raise
        with self._lock:
            self._timer = threading.Timer(self.IDLE_CLOSE_S, self._close_if_idle, (self._uses,))
            self._timer.daemon = True
            self._timer.start()

    def _close_if_idle(self, uses: int) -> None:
        with self._lock:
            if self._uses == uses:
                while self._open:
                    self._open.popitem()[1].close()


worker_media = _WorkerMedia()  # also a Celery worker's (`songscan.distributed.tasks`)


def _worker_unit(args: UnitArgs) -> UnitResult:
    path, data_dir, unit, cfg, owners, scan_id = args
    with worker_media.open((path, scan_id), lambda: Media(path)) as media:
        return scan_unit(media, catalog_for(data_dir, cfg), unit, cfg, owners)


def _pool_size(n_units: int, cfg: EngineConfig) -> int:
    return min(cfg.scan.workers or os.cpu_count() or 1, n_units)


def _run_units(
    path: Path, data_dir: Path, units: Sequence[list[Chunk]], cfg: EngineConfig, owners: Owners
) -> Iterator[UnitResult]:
    """Each unit's result, in order: in this process through one open file, on the pool, or
    on Celery workers when the engine is configured with a broker (`cfg.remote`)."""
    if cfg.remote is not None:
        from .distributed.dispatch import run_remote_units

        yield from run_remote_units(path, units, cfg, owners)
        return
    workers = _pool_size(len(units), cfg)
    if workers <= 1:
        catalog = catalog_for(data_dir, cfg)
        with Media(path) as media:
            for unit in units:
                yield scan_unit(media, catalog, unit, cfg, owners)
        return
    scan_id = uuid.uuid4().hex
    args = [(path, data_dir, unit, cfg, owners, scan_id) for unit in units]
    yield from _pool(workers).map(_worker_unit, args, chunksize=1)


_pools: dict[int, Executor] = {}


def _pool(workers: int) -> Executor:
    """A process pool kept for the life of the process (a server scans many files). Its
    processes end when this one dies, however it dies (`songscan.workers`). Started from
    multiprocessing's forkserver: a server runs threads, and a process that runs threads must
    not fork (a lock held by another thread stays held in the child)."""
    if workers not in _pools:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["songscan.scan"])
        _pools[workers] = ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=init_worker
        )
    return _pools[workers]


def start_pool_for(
    path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    params: PlanParams,
    cfg: EngineConfig,
) -> ChunkPlan:
    """Start the pool that a scan of `path` will use, ahead of it, for a command that scans
    one file and exits (`songscan scan`); returns the file's plan, for `scan_file`. Called
    while the process runs no other thread, the pool's workers are forked from it: they
    inherit its imports instead of waiting for a forkserver to import the engine again
    (0.3-0.6 s before the first chunk), and each opens the catalog while the command sets up
    its output. Anywhere else, the forkserver pool."""
    plan = plan_for(path, params, cfg)
    workers = _pool_size(len(plan.runs(cfg.scan.max_chunks_per_unit)), cfg)
    if workers <= 1:
        return plan
    if workers not in _pools and threading.active_count() == 1:
        _pools[workers] = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_init_forked_worker,
        )
    for _ in range(workers):
        _pools[workers].submit(_open_catalog, Path(data_dir), cfg)
    return plan


def _open_catalog(data_dir: Path, cfg: EngineConfig) -> None:
    catalog_for(data_dir, cfg)


def _init_forked_worker() -> None:
    _catalogs.clear()  # a parent's open SQLite connection must not be used across a fork
    _pools.clear()
    init_worker()


def shutdown_pools() -> None:
    for pool in _pools.values():
        pool.shutdown(cancel_futures=True)
    _pools.clear()
