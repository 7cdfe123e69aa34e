"""Query peaks -> scored matches with song position and in-chunk extent, in two stages.

1. Candidates: the query's triplet hashes are looked up in the index; per track, hits vote for
   the offset between reference and query frames, and the `max_nominees` tracks with the most
   time-aligned hits go on. (Triplet hashes are specific enough to look up in a large catalog,
   but fewer of them survive noise than pairs.)
2. Verification: the query's pair hashes against those tracks' pair hashes (from the catalog's
   peaks). A song that plays in the query piles its hits on one offset, random hits spread out.
   A match needs `min_aligned_hits` distinct query anchors on its best offset (within
   +-`offset_tolerance_frames`); anything less is no match, never a best guess.

When nothing matches at the nominal speed, the query is re-hashed for the configured speeds
(the same peaks, no new FFT: pitch and tempo together, and tempo alone for key lock), looked up
at once, and the best of those is taken.

A scan also has neighbours: `match_tracks` checks a chunk against the songs of the chunks next
to it (pairs, anywhere in the song), and `follow` looks for a neighbour's song at the very
position the neighbour predicts, by single peaks (a quiet passage under noise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from .config import NOMINAL, EngineConfig, MatchConfig, Speed, speed_factor
from .fingerprint import (
    Hashes,
    Peaks,
    hashes,
    query_peaks,
    speed_triplets,
    strongest,
    triplets,
)
from .index import PostingIndex, References, run_positions, run_starts, unpack_postings


@dataclass(frozen=True)
class Placement:
    """Another offset at which the same track lines up almost as well (a repeated passage)."""

    offset_frames: int
    aligned_hits: int
    start_frame: float
    end_frame: float


@dataclass(frozen=True)
class Match:
    track_id: int
    aligned_hits: int
    speed: float  # how much faster than the reference the query plays (tempo)
    # Reference frame that plays at query frame 0 (may be negative: the song starts later).
    offset_frames: int
    # Extent of the aligned hits, in query frames.
    start_frame: float
    end_frame: float
    # Songs repeat passages (loops, choruses): other offsets with nearly as much evidence.
    # The scan picks among them by continuity with the neighbouring chunks.
    alternatives: tuple[Placement, ...] = ()
    # Below min_aligned_hits: only a neighbouring chunk's match of the same song confirms it.
    weak: bool = False
    # How much higher than the reference the query sounds: `speed` when pitch and tempo
    # changed together, 1.0 under key lock.
    pitch: float = 1.0


def match_samples(
    samples: np.ndarray, refs: References, live_ids: np.ndarray, cfg: EngineConfig
) -> list[Match]:
    """Matches for one query (a chunk or a clip), best first; [] when nothing plays."""
    return match_peaks(query_peaks(samples, cfg.fingerprint), refs, live_ids, cfg)


def match_peaks(
    peaks: Peaks, refs: References, live_ids: np.ndarray, cfg: EngineConfig
) -> list[Match]:
    """Matches with at least `min_aligned_hits`; failing those, the best one with at least
    `weak_aligned_hits`, marked `weak` (a scan keeps it only when a neighbouring chunk plays
    the same song on; on its own it is no match)."""
    if len(peaks) < 2 or live_ids.shape[0] == 0:
        return []
    mc = cfg.match
    found = _match_steps(peaks, (NOMINAL,), (NOMINAL,), refs, live_ids, cfg)
    found = [_at_own_speed(m, peaks, refs, cfg) for m in found]
    if not _confident(found, mc) and mc.speeds:
        lookup = (*mc.near_lookup_speeds, *mc.far_lookup_speeds)
        found += _match_steps(peaks, lookup, mc.speeds, refs, live_ids, cfg)
    return _verdict(found, mc)


def _at_own_speed(m: Match, peaks: Peaks, refs: References, cfg: EngineConfig) -> Match:
    """A nominal-speed match whose hits drift as fast as the fit allows (half a step across
    the chunk) plays further from nominal: a time-stretched song keeps its frequencies, so
    its pairs with short frame steps still line up at nominal speed, on a part of the chunk.
    It is verified again at every speed on the side of its drift, and the best one taken."""
    fp = cfg.fingerprint
    drift = m.speed - 1.0
    if abs(drift) < 0.6 * fp.log_step - 1e-9:
        return m
    steps = tuple(s for s in (NOMINAL, *cfg.match.speeds) if s.tempo_steps * drift >= 0)
    found = _verify(
        peaks,
        steps,
        refs,
        np.full(len(steps), m.track_id, dtype=np.int64),
        np.arange(len(steps)),
        cfg,
    )
    best = found[0] if found else m
    return best if best.aligned_hits > m.aligned_hits else m


def match_tracks(
    peaks: Peaks, refs: References, leads: Sequence[Match], cfg: EngineConfig
) -> list[Match]:
    """Like `match_peaks`, but checks only the songs of `leads` (matches in the neighbouring
    chunks), without looking the triplets up: each at the nominal speed and at the steps on
    either side of its lead's speed (a song plays on at its speed; no more speeds than those,
    as each one is another chance for noise to line up)."""
    if len(peaks) < 2 or not leads:
        return []
    mc = cfg.match
    steps = (NOMINAL, *mc.speeds)
    nominees, nominee_steps = [], []
    for lead in leads:
        near = np.array([steps.index(s) for s in _lead_steps(lead, cfg)])
        nominees.append(np.full(near.shape[0], lead.track_id, dtype=np.int64))
        nominee_steps.append(near)
    return _verdict(
        _verify(peaks, steps, refs, np.concatenate(nominees), np.concatenate(nominee_steps), cfg),
        mc,
    )


def continuation(
    peaks: Peaks, refs: References, lead: Match, shift_frames: float, cfg: EngineConfig
) -> tuple[Match, Placement | None] | None:
    """The song of `lead` (a neighbouring chunk's confident match) going on in this query, by
    its pairs that land where the lead predicts: on the line of song position against query
    frame that starts `shift_frames` (query frames) later than the lead's and advances at the
    lead's speed (within `offset_tolerance_frames`, the line itself moved by up to
    `continuation_slack_frames`: the lead's fitted speed is extrapolated over a chunk).

    An open search takes the best of every track's every offset, so chance (shared drum loops,
    motifs) must not reach `min_aligned_hits` there; here one track is asked about one place,
    and chance rarely puts more than a hit or two on it. So `continuation_min_hits` suffice,
    and `follow_min_ratio` times as many as on the same line moved by
    `follow_null_shifts_frames` (what the song's own repetitions and chance give): a song that
    fades out under the next one, or fades in under the last, is found while it plays.

    Where the lead's place does not go on here, the places of its repeats (`alternatives`,
    best first) are asked in turn: a looped song's best place in the lead's chunk may be a
    repeat of its true one, and only the true one goes on. Returns the match and the repeat
    it goes on from (None: the lead's own place)."""
    mc, fp = cfg.match, cfg.fingerprint
    offset = lead.offset_frames + shift_frames * lead.speed
    anchors, ends, deviation = [], [], []
    for step in _lead_steps(lead, cfg):
        found = hashes(peaks, fp, fp.query_fanout, step)
        query_idx, postings = refs.pair_postings(
            np.array([lead.track_id], dtype=np.int64), found.hashes, fp
        )
        _, ref_frames = unpack_postings(postings)
        at = found.anchor_frames[query_idx]
        anchors.append(at)
        ends.append(found.end_frames[query_idx])
        deviation.append(ref_frames - (offset + at * lead.speed))
    anchor, end, dev = (np.concatenate(a) for a in (anchors, ends, deviation))
    # only the query frames next to the lead's chunk: the song goes on from there (a lead
    # from the next chunk, `shift_frames` < 0, begins where this query ends)
    reach = mc.continuation_reach_s * fp.frames_per_s
    side = anchor < reach if shift_frames > 0 else anchor > -shift_frames - reach
    anchor, end, dev = anchor[side], end[side], dev[side]
    slot = np.rint(anchor).astype(np.int64)
    tol = mc.offset_tolerance_frames + 0.5  # as the offset histogram's rounded bins

    def on_line(moved: float) -> tuple[int, np.ndarray]:
        """The most distinct anchors on the line moved by `moved` (within the slack)."""
        best = max(
            (
                np.abs(dev - moved - s) <= tol
                for s in range(-mc.continuation_slack_frames, mc.continuation_slack_frames + 1)
            ),
            key=lambda near: np.unique(slot[near]).shape[0],
        )
        return np.unique(slot[best]).shape[0], best

    for place in (None, *lead.alternatives):
        moved = 0.0 if place is None else float(place.offset_frames - lead.offset_frames)
        hits, near = on_line(moved)
        if hits < mc.continuation_min_hits:
            continue
        chance = max(
            on_line(moved + sign * d)[0] for d in mc.follow_null_shifts_frames for sign in (-1, 1)
        )
        if hits < mc.follow_min_ratio * max(chance, 1):
            continue
        match = Match(
            track_id=lead.track_id,
            aligned_hits=hits,
            speed=lead.speed,
            offset_frames=round(offset + moved),
            start_frame=float(anchor[near].min()),
            end_frame=float(end[near].max()),
            pitch=lead.pitch,
        )
        return match, place
    return None


def _lead_steps(lead: Match, cfg: EngineConfig) -> list[Speed]:
    """The grid steps on either side of a lead's speed, of its kind (key lock or pitch with
    tempo), and the nominal one: where a song playing on at that speed hashes alike."""
    log_step = cfg.fingerprint.log_step
    key_lock = lead.pitch == 1.0 and lead.speed != 1.0
    around = {
        math.floor(_steps_of(lead.speed, log_step)),
        math.ceil(_steps_of(lead.speed, log_step)),
    }
    wanted = {Speed(k, 0 if key_lock else k) for k in around}
    return [NOMINAL, *(s for s in cfg.match.speeds if s in wanted)]


def _steps_of(factor: float, log_step: float) -> float:
    """How many log steps `factor` is (fractional)."""
    return math.log(factor) / math.log1p(log_step)


def _near(steps: tuple[Speed, ...], centres: tuple[Speed, ...]) -> np.ndarray:
    """(centres, steps) bool: which steps lie within a step of each centre, in tempo and in
    pitch (a speed between two steps hashes partly at each), and of its kind."""
    tempo = np.array([s.tempo_steps for s in steps])
    pitch = np.array([s.pitch_steps for s in steps])
    c_tempo = np.array([s.tempo_steps for s in centres])
    c_pitch = np.array([s.pitch_steps for s in centres])
    # the two kinds (pitch with tempo, key lock) only meet at nominal speed: a nominee is
    # verified at speeds of its own kind (each one more is more work and a chance for noise)
    lock = (pitch == 0) & (tempo != 0)
    c_lock = (c_pitch == 0) & (c_tempo != 0)
    together = (pitch == tempo) & (tempo != 0)
    c_together = (c_pitch == c_tempo) & (c_tempo != 0)
    other_kind = (c_lock[:, None] & together[None, :]) | (c_together[:, None] & lock[None, :])
    return (
        (np.abs(c_tempo[:, None] - tempo[None, :]) <= 1)
        & (np.abs(c_pitch[:, None] - pitch[None, :]) <= 1)
        & ~other_kind
    )


def follow(
    peaks: Peaks, refs: References, lead: Match, shift_frames: float, cfg: EngineConfig
) -> Match | None:
    """The song of `lead` (a neighbouring chunk's confident match) playing on in this query,
    at the position the lead predicts `shift_frames` (query frames) later: a match when the
    track's peaks coincide there with at least `min_aligned_hits` of the query's peaks, and
    `follow_min_ratio` times as many as at any of the nearby positions
    `follow_null_shifts_frames` away (what the song's own repetitions and chance give).

    Where noise drowns most of a quiet passage, single peaks survive in numbers while their
    pairs do not: a peak needs one surviving peak, a pair two, with the same quantised
    distances. The lead tells where to look, so single peaks suffice."""
    mc = cfg.match
    ref = refs.peaks(lead.track_id)
    if len(peaks) == 0 or len(ref) == 0:
        return None
    offset = lead.offset_frames + shift_frames * lead.speed
    found = _coinciding(peaks, ref, offset, lead, cfg)
    hits = int(found.sum())
    if hits < mc.min_aligned_hits:
        return None
    chance = max(
        int(_coinciding(peaks, ref, offset + sign * d, lead, cfg).sum())
        for d in mc.follow_null_shifts_frames
        for sign in (-1, 1)
    )
    if hits < mc.follow_min_ratio * max(chance, 1):
        return None
    first, last = _densest_run(found, 2 * max(chance, 1) / len(peaks))
    return Match(
        track_id=lead.track_id,
        aligned_hits=int(found[first : last + 1].sum()),
        speed=lead.speed,
        offset_frames=round(offset),
        start_frame=float(peaks.time_frames[first]),
        end_frame=float(peaks.time_frames[last]),
        pitch=lead.pitch,
    )


def _densest_run(found: np.ndarray, rate: float) -> tuple[int, int]:
    """The first and last index of the run of peaks (in time order) where coinciding ones are
    densest against `rate` (twice the chance rate): each coinciding peak scores 1 - rate, each
    other one -rate, and the run with the highest sum is the song's part of the query (chance
    coincidences outside it do not stretch it)."""
    rate = min(rate, 0.5)
    score = np.concatenate([[0.0], np.cumsum(np.where(found, 1.0 - rate, -rate))])
    low = np.minimum.accumulate(score)
    end = int(np.argmax(score - low))  # the run ends before peak `end`
    start = int(np.argmin(score[: end + 1]))
    return start, end - 1


def _coinciding(
    peaks: Peaks, ref: Peaks, offset_frames: float, lead: Match, cfg: EngineConfig
) -> np.ndarray:
    """Which query peaks have a reference peak at their place when query frame 0 plays
    reference frame `offset_frames` at the speed and pitch of `lead` (within
    `offset_tolerance_frames` and one FFT bin)."""
    fp = cfg.fingerprint
    tol = cfg.match.offset_tolerance_frames
    at = offset_frames + peaks.time_frames * lead.speed
    lo = np.searchsorted(ref.time_frames, at - tol, side="left")
    hi = np.searchsorted(ref.time_frames, at + tol, side="right")
    query, candidate = run_positions(lo, hi)
    near = np.abs(ref.freq_hz[candidate] - peaks.freq_hz[query] / lead.pitch) <= (
        fp.sample_rate_hz / fp.n_fft
    )
    found = np.zeros(len(peaks), dtype=bool)
    found[query[near]] = True
    return found


def _confident(found: list[Match], mc: MatchConfig) -> list[Match]:
    return [m for m in found if m.aligned_hits >= mc.min_aligned_hits]


def _verdict(found: list[Match], mc: MatchConfig) -> list[Match]:
    """The confident matches, best first; failing those, the best one, marked weak."""
    if _confident(found, mc):
        return _confident(found, mc)
    return [replace(max(found, key=lambda m: m.aligned_hits), weak=True)] if found else []


def _match_steps(
    peaks: Peaks,
    lookup: tuple[Speed, ...],
    verify: tuple[Speed, ...],
    refs: References,
    live_ids: np.ndarray,
    cfg: EngineConfig,
) -> list[Match]:
    """Matches nominated by the triplets at the speeds `lookup`, each nominee verified at the
    speeds of `verify` within a step of the one its triplets chose."""
    nominees, nominee_steps = _nominate(peaks, lookup, refs.index, live_ids, cfg)
    which, step_idx = np.nonzero(_near(verify, lookup)[nominee_steps])
    return _verify(peaks, verify, refs, nominees[which], step_idx, cfg)


def _verify(
    peaks: Peaks,
    steps: tuple[Speed, ...],
    refs: References,
    nominees: np.ndarray,
    nominee_steps: np.ndarray,
    cfg: EngineConfig,
) -> list[Match]:
    """Matches among the tracks `nominees`, each at the step `steps[nominee_steps]`, by their
    pairs."""
    fp, mc = cfg.fingerprint, cfg.match
    if nominees.shape[0] == 0:
        return []
    verified = np.unique(nominee_steps)
    per_step = [
        hashes(peaks, fp, fp.query_fanout, step) if i in verified else _NO_HASHES
        for i, step in enumerate(steps)
    ]
    bounds = np.cumsum([0] + [len(h) for h in per_step])
    found = [
        refs.pair_postings(nominees[nominee_steps == i], per_step[i].hashes, fp) for i in verified
    ]
    query_idx = np.concatenate([q + bounds[i] for (q, _), i in zip(found, verified, strict=True)])
    postings = np.concatenate([p for _, p in found])
    if query_idx.shape[0] == 0:
        return []
    tracks, ref_frames = unpack_postings(postings)
    step_of = _step_of(per_step)[query_idx]
    anchors = np.concatenate([h.anchor_frames for h in per_step])[query_idx]
    offsets = _hit_offsets(steps, step_of, anchors, ref_frames, cfg)
    ends = np.concatenate([h.end_frames for h in per_step])[query_idx]

    # Cheap prefilter: a track (and step) needs weak_aligned_hits hits in total to go on.
    group = tracks * len(steps) + step_of
    keep = np.bincount(group)[group] >= mc.weak_aligned_hits
    if not keep.any():
        return []
    group, offsets, anchors, ends = group[keep], offsets[keep], anchors[keep], ends[keep]
    tol = mc.offset_tolerance_frames
    key_u, aligned, span, base = _votes(group, offsets, anchors, tol)
    group_u = key_u // span
    # Best offset per group: sort by (group, -aligned), keep the first of each group.
    order = np.lexsort((-aligned, group_u))
    best = order[run_starts(group_u[order])]
    best = best[aligned[best] >= mc.weak_aligned_hits]
    if best.shape[0] == 0:
        return []
    # One entry per track: its best step.
    best = best[np.argsort(-aligned[best], kind="stable")]
    seen: set[int] = set()
    results: list[Match] = []
    top_hits = int(aligned[best[0]])
    for b in best:
        g = int(group_u[b])
        track_id, step_i = divmod(g, len(steps))
        if track_id in seen:
            continue
        hits = int(aligned[b])
        if results and hits < mc.secondary_min_share * top_hits:
            break
        seen.add(track_id)

        def placement(offset: int, hits: int, g: int = g) -> Placement:
            mine = (group == g) & (np.abs(offsets - offset) <= tol)
            return Placement(offset, hits, float(anchors[mine].min()), float(ends[mine].max()))

        chosen = placement(int(key_u[b] % span + base), hits)
        others = _alternatives(key_u, aligned, group_u, g, b, span, base, tol, hits, mc)
        speed = steps[step_i]
        grid = speed_factor(speed.tempo_steps, fp.log_step)
        mine = group == g
        fitted, offset = _fitted_speed(anchors[mine], offsets[mine], chosen.offset_frames, cfg)
        # a repeat plays at the same speed: its offset at query frame 0 moves with the best's
        refit = offset - chosen.offset_frames
        # pitch and tempo changed together: the pitch moved by the fitted factor too (at
        # nominal speed the fitted drift says nothing about the pitch)
        together = speed.pitch_steps == speed.tempo_steps != 0
        pitch = grid + fitted if together else speed_factor(speed.pitch_steps, fp.log_step)
        results.append(
            Match(
                track_id=track_id,
                aligned_hits=hits,
                speed=grid + fitted,
                offset_frames=offset,
                start_frame=chosen.start_frame,
                end_frame=chosen.end_frame,
                alternatives=tuple(
                    replace(placement(o, h), offset_frames=o + refit) for o, h in others
                ),
                pitch=pitch,
            )
        )
        if len(results) >= mc.max_candidates:
            break
    return results


def _fitted_speed(
    anchors: np.ndarray, offsets: np.ndarray, offset: int, cfg: EngineConfig
) -> tuple[float, int]:
    """The speed between grid steps, fitted: how much faster than its grid step's factor the
    query plays (a fraction, within half a step) and the offset at query frame 0 at that speed.

    At a speed between two steps the hits' offsets drift across the chunk by the difference
    times the anchor frame (two frames over 12 s at half a 1 % step); the least-squares line
    through the hits near the best offset, refitted on those within a frame and a half of the
    first line, gives the drift and the offset where the chunk starts. Falls back to (0, the
    grid's offset) when the hits span too little of the chunk to tell a slope."""
    fp, mc = cfg.fingerprint, cfg.match
    half_step = 0.6 * fp.log_step
    reach = mc.offset_tolerance_frames + 2 + half_step * float(anchors.max(initial=0.0))
    near = np.abs(offsets - offset) <= reach
    x, y = anchors[near].astype(np.float64), offsets[near].astype(np.float64)
    for refit in (False, True):
        if x.shape[0] < mc.weak_aligned_hits or np.ptp(x) < 2 * fp.frames_per_s:
            return 0.0, offset
        dx = x - x.mean()
        slope = float(dx @ (y - y.mean()) / (dx @ dx))  # least squares
        intercept = float(y.mean() - slope * x.mean())
        residual = y - (intercept + slope * x)
        if not refit:
            keep = np.abs(residual) <= 1.5
            x, y = x[keep], y[keep]
    # A drift within three standard errors of none is the grid's speed (a chunk at exactly a
    # step's speed, nominal ones above all, keeps it exactly: a neighbour follows the song
    # from it).
    error = math.sqrt(float(residual @ residual) / max(1, x.shape[0] - 2) / float(dx @ dx))
    if abs(slope) <= 3 * error:
        return 0.0, offset
    return float(np.clip(slope, -half_step, half_step)), round(intercept)


def _nominate(
    peaks: Peaks,
    steps: tuple[Speed, ...],
    index: PostingIndex,
    live_ids: np.ndarray,
    cfg: EngineConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """The live tracks (at most `max_nominees`) with the most time-aligned triplet hits at any
    of `steps` (at least `min_nominee_hits`), best first, and the index of the step at which
    each aligns best."""
    fp, mc = cfg.fingerprint, cfg.match
    nothing = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    nominal = steps == (NOMINAL,)
    if nominal:
        found = triplets(peaks, fp, fp.query_triplet_fanout)
        hash_steps = np.zeros(len(found), dtype=np.int64)
    else:
        found, hash_steps = _speed_pass_triplets(peaks, steps, cfg)
    all_hashes = found.hashes
    if all_hashes.shape[0] == 0:
        return nothing
    budget = mc.max_postings_per_lookup if nominal else mc.max_speed_postings_per_lookup
    query_idx, postings = index.lookup(all_hashes, budget)
    if query_idx.shape[0] == 0:
        return nothing
    tracks, ref_frames = unpack_postings(postings)
    live = _is_live(tracks, live_ids)
    if not live.all():
        query_idx, tracks, ref_frames = query_idx[live], tracks[live], ref_frames[live]
    step_of = hash_steps[query_idx]
    group = tracks * len(steps) + step_of
    hits = np.bincount(group)
    # A group (track and step) with fewer hits than a nominee needs aligned cannot be one (in a
    # large index most groups have a single hit).
    enough = hits[group] >= mc.min_nominee_hits
    if not enough.any():
        return nothing
    group, query_idx, ref_frames = group[enough], query_idx[enough], ref_frames[enough]
    anchors = found.anchor_frames[query_idx]
    offsets = _hit_offsets(steps, step_of[enough], anchors, ref_frames, cfg)
    key_u, aligned, span, _ = _votes(group, offsets, anchors, mc.offset_tolerance_frames)
    # Per group (keys are sorted, so grouped): its best offset's aligned hits; rank groups by
    # that, ties by all their hits; each track once, at its best step.
    group_u = key_u // span
    starts = run_starts(group_u)
    groups = group_u[starts]
    best_aligned = np.maximum.reduceat(aligned, starts)
    # Only groups at or above the m-th best alignment can hold a top track: m groups above a
    # track's best belong to at least max_nominees other tracks.
    m = mc.max_nominees * len(steps)
    if groups.shape[0] > m:
        contenders = best_aligned >= np.partition(best_aligned, -m)[-m]
        groups, best_aligned = groups[contenders], best_aligned[contenders]
    order = np.lexsort((-hits[groups], -best_aligned))
    ranked = groups[order][best_aligned[order] >= mc.min_nominee_hits]
    _, first = np.unique(ranked // len(steps), return_index=True)
    best = ranked[np.sort(first)][: mc.max_nominees]
    return best // len(steps), best % len(steps)


_NO_HASHES = Hashes(np.zeros(0, np.uint32), np.zeros(0, np.float32), np.zeros(0, np.float32))


def _speed_pass_triplets(
    peaks: Peaks, steps: tuple[Speed, ...], cfg: EngineConfig
) -> tuple[Hashes, np.ndarray]:
    """The triplets of the speed pass and the index in `steps` of each: those of the near
    speeds from every peak, of the far ones from the strongest peaks, with a smaller fanout."""
    fp, mc = cfg.fingerprint, cfg.match
    near = [i for i, s in enumerate(steps) if s in mc.near_lookup_speeds]
    far = [i for i in range(len(steps)) if i not in near]
    parts = [
        (speed_triplets(peaks, fp, fp.speed_triplet_fanout, [steps[i] for i in near]), near),
        (
            speed_triplets(
                strongest(peaks, fp, fp.far_speed_peaks_per_s),
                fp,
                fp.far_speed_triplet_fanout,
                [steps[i] for i in far],
            ),
            far,
        ),
    ]
    found = Hashes(
        np.concatenate([h.hashes for (h, _), _ in parts]),
        np.concatenate([h.anchor_frames for (h, _), _ in parts]),
        np.concatenate([h.end_frames for (h, _), _ in parts]),
    )
    step_of = np.concatenate([np.asarray(which, dtype=np.int64)[i] for (_, i), which in parts])
    return found, step_of


def _hit_offsets(
    steps: tuple[Speed, ...],
    step_of: np.ndarray,
    anchors: np.ndarray,
    ref_frames: np.ndarray,
    cfg: EngineConfig,
) -> np.ndarray:
    """Each hit's reference-query offset: the reference frame at query frame 0, at the tempo
    of its step `steps[step_of]` (query anchor at `anchors`, reference one at `ref_frames`)."""
    log_step = cfg.fingerprint.log_step
    factors = np.array([speed_factor(s.tempo_steps, log_step) for s in steps])[step_of]
    return np.rint(ref_frames - anchors * factors).astype(np.int64)


def _step_of(per_step: list[Hashes]) -> np.ndarray:
    """The step of each hash of the steps' hashes laid end to end."""
    return np.repeat(np.arange(len(per_step)), [len(h) for h in per_step])


def _votes(
    group: np.ndarray, offsets: np.ndarray, anchors: np.ndarray, tol: int
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Offset histogram per group (track and step), counting each query anchor once per
    offset (a repeated motif must not vote twice); aligned hits = hits within +-tol of an
    offset. Returns the distinct keys `group * span + offset - base` (sorted), their aligned
    hits, `span` and `base`. One sort; the rest is linear."""
    base = int(offsets.min()) - tol
    span = int(offsets.max() - base) + tol + 1
    key = group * span + (offsets - base)
    anchor_slot = np.rint(anchors).astype(np.int64)
    n_slots = int(anchor_slot.max()) + 1
    hits = np.sort(key * n_slots + anchor_slot)
    keys = hits[run_starts(hits)] // n_slots  # one entry per (key, anchor), sorted by key
    starts = run_starts(keys)
    key_u = keys[starts]
    key_counts = np.diff(np.append(starts, keys.shape[0]))
    aligned = key_counts.copy()
    # Keys are distinct and sorted, so a key within +-tol of another is at most tol places
    # away; keys of different groups are more than 2 * tol apart.
    for lag in range(1, tol + 1):
        near = key_u[lag:] - key_u[:-lag] <= tol
        aligned[:-lag] += np.where(near, key_counts[lag:], 0)
        aligned[lag:] += np.where(near, key_counts[:-lag], 0)
    return key_u, aligned, span, base


def _alternatives(
    key_u: np.ndarray,
    aligned: np.ndarray,
    group_u: np.ndarray,
    g: int,
    best: int,
    span: int,
    base: int,
    tol: int,
    hits: int,
    mc: MatchConfig,
) -> list[tuple[int, int]]:
    """Other (offset, hits) of group `g` with at least `repeat_min_share` of the best's hits
    and `weak_aligned_hits` (less than a match needs alone: a place that only continuity with
    the neighbouring chunks can choose, such as a looped song's true place where it fades in),
    each a separate peak (more than 2 * tol frames from every one taken before)."""
    floor = max(mc.weak_aligned_hits, mc.repeat_min_share * hits)
    mine = np.nonzero((group_u == g) & (aligned >= floor))[0]
    mine = mine[np.argsort(-aligned[mine], kind="stable")]
    taken = [int(key_u[best] % span)]
    out: list[tuple[int, int]] = []
    for i in mine:
        off = int(key_u[i] % span)
        if all(abs(off - t) > 2 * tol for t in taken):
            taken.append(off)
            out.append((off + base, int(aligned[i])))
            if len(out) >= mc.max_alternatives:
                break
    return out


def _is_live(tracks: np.ndarray, live_ids: np.ndarray) -> np.ndarray:
    alive = np.zeros(max(int(live_ids[-1]), int(tracks.max())) + 1, dtype=bool)
    alive[live_ids] = True
    return alive[tracks]
