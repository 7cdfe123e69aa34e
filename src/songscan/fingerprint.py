"""Audio block -> landmark hashes.

spectrogram (Hann STFT, log magnitude) -> peaks (local maxima, strongest per second, refined
to sub-bin / sub-frame precision) -> landmarks (an anchor peak with the next few peaks of its
target zone) -> hashes carrying the anchor frame. Two kinds:

- **pairs** (anchor + one target), 23 bits: `q1 << 14 | (dq + 128) << 6 | dt`, where `q1` is
  the anchor's frequency on a log scale (`log_step` per step above `min_freq_hz`), `dq` the
  log-frequency step from anchor to target and `dt` the frames between them. Many pairs
  survive noise, so they decide a match; but a pair hash takes only ~35k effectively distinct
  values, too few to look up in a catalog of 100k songs.
- **triplets** (anchor + two targets), the anchor's `q1` with both targets' `dq` and `dt`,
  folded into `TRIPLET_BITS` bits by a multiplicative hash: far more specific (in the
  benchmark's model of a 100k-track catalog a query triplet meets ~70 postings, a pair tens of
  thousands), so they find the candidate songs in a large index; the pairs of those few
  candidates then decide (see matcher.py).

A speed change by a factor `a` (pitch and tempo together) shifts every `q` by
`log(a) / log(1 + log_step)` and scales every `dt` by `1 / a`; a time-stretch that keeps the
pitch (key lock) only scales the `dt`. So `speed=Speed(k, k)` re-hashes a query as if played at
the k-th candidate speed, `Speed(k, 0)` as if time-stretched by it, with no new FFT.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .config import NOMINAL, FingerprintConfig, Speed, speed_factor
from .fft import rfft_rows

DT_BITS = 6
DQ_BITS = 8
DQ_BIAS = 1 << (DQ_BITS - 1)
Q_SHIFT = DT_BITS + DQ_BITS
Q_BITS = 9
HASH_BITS = Q_SHIFT + Q_BITS
TRIPLET_BITS = 28
# A peak's candidate targets: the next CANDIDATES_PER_FANOUT * fanout peaks in time order.
CANDIDATES_PER_FANOUT = 4
# A reference's triplets are made this many anchors at a time.
TRIPLET_PIECE_ANCHORS = 16384
_FOLD = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: Fibonacci hashing
_EPS = 1e-7
# Frames a spectrogram transforms at a time (about 0.5 MB of windowed frames: cache-sized).
SPECTROGRAM_ROWS = 128


@dataclass(frozen=True)
class Peaks:
    """Spectral peaks, sorted by frame. Times in frames, frequencies in Hz (both refined to
    sub-frame / sub-bin precision, so refined times may step back by less than a frame)."""

    time_frames: np.ndarray  # float32
    freq_hz: np.ndarray  # float32
    strength: np.ndarray  # float32, log magnitude

    def __len__(self) -> int:
        return int(self.time_frames.shape[0])


@dataclass(frozen=True)
class Hashes:
    """Landmark hashes with the frame of their anchor, and the frame their target lies at."""

    hashes: np.ndarray  # uint32 (uint64 for unfolded triplet keys)
    anchor_frames: np.ndarray  # float32, in the query's own (unscaled) frames
    end_frames: np.ndarray  # float32, target peak's frame

    def __len__(self) -> int:
        return int(self.hashes.shape[0])


@functools.cache
def _window(n_fft: int) -> np.ndarray:
    window = np.hanning(n_fft + 2)[1:-1].astype(np.float32)
    window.flags.writeable = False  # shared by every call
    return window


def spectrogram(samples: np.ndarray, cfg: FingerprintConfig) -> np.ndarray:
    """Log-magnitude STFT, shape (frames, bins) over [min_freq_hz, max_freq_hz], float32.

    Made `SPECTROGRAM_ROWS` frames at a time: each frame is a transform of its own samples, so
    the rows are the same, and a batch's windowed frames and spectrum stay in the CPU's cache
    and in memory the allocator has at hand (for a 10-s clip 0.83 ms of CPU, where one batch
    costs 0.84-1.48 ms depending on whether its 1.2-MB temporaries get fresh pages)."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.shape[0] < cfg.n_fft:
        return np.zeros((0, 0), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(samples, cfg.n_fft)[:: cfg.hop]
    window = _window(cfg.n_fft)
    lo, hi = _bin_range(cfg)
    out = np.empty((frames.shape[0], hi - lo), dtype=np.float32)
    for start in range(0, frames.shape[0], SPECTROGRAM_ROWS):
        rows = slice(start, start + SPECTROGRAM_ROWS)
        band = rfft_rows(frames[rows] * window)[:, lo:hi]
        power = band.real**2 + band.imag**2  # float32; cheaper than np.abs of complex
        out[rows] = 0.5 * np.log(power + _EPS**2)
    return out


def _bin_range(cfg: FingerprintConfig) -> tuple[int, int]:
    bin_hz = cfg.sample_rate_hz / cfg.n_fft
    lo = max(1, math.floor(cfg.min_freq_hz / bin_hz))
    hi = min(cfg.n_fft // 2, math.ceil(cfg.max_freq_hz / bin_hz) + 1)
    return lo, hi


def find_peaks(spec: np.ndarray, cfg: FingerprintConfig, peaks_per_s: float) -> Peaks:
    """The strongest local maxima, at most `peaks_per_s` per second of audio on average."""
    return _peaks_in(spec, 0, spec.shape[0], 0, cfg, peaks_per_s)


def _peaks_in(
    spec: np.ndarray, lo: int, hi: int, origin: int, cfg: FingerprintConfig, peaks_per_s: float
) -> Peaks:
    """`find_peaks` for rows [lo, hi) of `spec`, whose row 0 is frame `origin` of the track.
    The rows around them are context: the time radius of the maximum filter either side, or
    the track's own edge (the first and last rows of `spec` count as the track's edges), so the
    peaks are those of the whole track's spectrogram in those frames."""
    if spec.shape[0] < 3 or spec.shape[1] < 3 or hi <= lo:
        return _no_peaks()
    local_max = running_max(spec, cfg.peak_time_radius_frames, axis=0)[lo:hi]
    local_max = running_max(local_max, cfg.peak_freq_radius_bins, axis=1)
    own = spec[lo:hi]
    is_peak = own == local_max
    # Edges cannot be refined (and are often artefacts of the window): leave them out.
    if lo == 0:
        is_peak[0, :] = False
    if hi == spec.shape[0]:
        is_peak[-1, :] = False
    is_peak[:, 0] = is_peak[:, -1] = False
    # A peak must stand above the level of its frame (silence and flat noise have none): the
    # median of every 4th bin (the same level at a quarter of the cost; np.partition, as
    # np.median along an axis costs several times more).
    sampled = own[:, ::4]
    middle = sampled.shape[1] // 2
    frame_level = np.partition(sampled, middle, axis=1)[:, middle : middle + 1]
    is_peak &= own > frame_level + 1.0
    t, f = np.divmod(np.flatnonzero(is_peak), is_peak.shape[1])  # np.nonzero, 10x cheaper
    if t.shape[0] == 0:
        return _no_peaks()
    t += lo  # rows of `spec`
    strength = spec[t, f]
    keep = _strongest_per_block(t + origin, strength, cfg, peaks_per_s)
    t, f, strength = t[keep], f[keep], strength[keep]
    dt = _parabolic(spec[t - 1, f], strength, spec[t + 1, f])
    df = _parabolic(spec[t, f - 1], strength, spec[t, f + 1])
    bin_lo, _ = _bin_range(cfg)
    bin_hz = cfg.sample_rate_hz / cfg.n_fft
    order = np.argsort(t, kind="stable")
    return Peaks(
        time_frames=(t + origin + dt)[order].astype(np.float32),
        freq_hz=((f + bin_lo + df) * bin_hz)[order].astype(np.float32),
        strength=strength[order],
    )


# A streamed track is analysed this many of the peak selection's one-second blocks at a time
# (about a minute): whole blocks, so that "strongest per second" ranks the same peaks.
STREAM_SEGMENT_BLOCKS = 64


def streamed_peaks(
    blocks: Iterable[np.ndarray], cfg: FingerprintConfig, peaks_per_s: float
) -> Peaks:
    """`find_peaks(spectrogram(samples))` of the concatenated `blocks`, exactly, in memory
    bounded by a segment of about a minute whatever the length of the stream.

    The spectrogram is made a segment of frames at a time (each frame is a transform of its own
    samples), and each segment's peaks are found with the neighbouring segments' rows within
    the maximum filter's time radius (enough for the parabolic refinement too)."""
    segment_frames = _block_frames(cfg) * STREAM_SEGMENT_BLOCKS
    radius = max(1, cfg.peak_time_radius_frames)
    found: list[Peaks] = []
    segments = _spectrogram_segments(blocks, cfg, segment_frames)
    current = next(segments, None)
    if current is None:
        return _no_peaks()
    before = current[:0]  # the rows just before `current`
    origin = 0  # frame of current[0]
    while current is not None:
        following = next(segments, None)
        after = following[:radius] if following is not None else current[:0]
        window = np.concatenate([before, current, after])
        lo = before.shape[0]
        found.append(_peaks_in(window, lo, lo + current.shape[0], origin - lo, cfg, peaks_per_s))
        before = current[-radius:]
        origin += current.shape[0]
        current = following
    return _joined(found)


def _spectrogram_segments(
    blocks: Iterable[np.ndarray], cfg: FingerprintConfig, frames: int
) -> Iterator[np.ndarray]:
    """The spectrogram of a stream of samples, `frames` rows at a time (the last one fewer)."""
    need = (frames - 1) * cfg.hop + cfg.n_fft  # samples of a whole segment
    step = frames * cfg.hop
    pending: list[np.ndarray] = []
    have = 0
    for block in blocks:
        pending.append(np.asarray(block, dtype=np.float32))
        have += block.shape[0]
        if have < need:
            continue
        samples = np.concatenate(pending)
        start = 0
        while samples.shape[0] - start >= need:
            yield spectrogram(samples[start : start + need], cfg)
            start += step
        pending, have = [samples[start:]], samples.shape[0] - start
    rest = np.concatenate(pending) if pending else np.zeros(0, dtype=np.float32)
    if rest.shape[0] >= cfg.n_fft:
        yield spectrogram(rest, cfg)


def _joined(parts: list[Peaks]) -> Peaks:
    if not parts:
        return _no_peaks()
    return Peaks(
        time_frames=np.concatenate([p.time_frames for p in parts]),
        freq_hz=np.concatenate([p.freq_hz for p in parts]),
        strength=np.concatenate([p.strength for p in parts]),
    )


def running_max(a: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Maximum over [i - radius, i + radius] along `axis` (windows truncated at the edges, which
    equals scipy's reflecting maximum_filter1d), by doubling: after padding with -inf, maxima
    over windows of 1, 2, 4, ... samples, and two overlapping ones cover the window. A handful
    of whole-array operations instead of a per-element filter."""
    if radius <= 0:
        return a.copy()
    n, width = a.shape[axis], 2 * radius + 1
    padding = [(0, 0)] * a.ndim
    padding[axis] = (radius, radius)
    m = np.pad(a, padding, constant_values=-np.inf)

    def part(x: np.ndarray, start: int, stop: int) -> np.ndarray:
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, stop)
        return x[tuple(index)]

    span = 1  # m[i] = max of the padded array over [i, i + span)
    while span * 2 <= width:
        m = np.maximum(part(m, 0, m.shape[axis] - span), part(m, span, m.shape[axis]))
        span *= 2
    return np.maximum(part(m, 0, n), part(m, width - span, width - span + n))


def _no_peaks() -> Peaks:
    empty = np.zeros(0, dtype=np.float32)
    return Peaks(empty, empty, empty)


def _parabolic(left: np.ndarray, centre: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Offset (in [-0.5, 0.5]) of the vertex of the parabola through three samples."""
    denom = left - 2 * centre + right
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = 0.5 * (left - right) / denom
    return np.clip(np.nan_to_num(offset, nan=0.0, posinf=0.0, neginf=0.0), -0.5, 0.5)


def _block_frames(cfg: FingerprintConfig) -> int:
    """Frames in a block of the peak selection (about a second)."""
    return max(1, round(cfg.frames_per_s))


def strongest(peaks: Peaks, cfg: FingerprintConfig, peaks_per_s: float) -> Peaks:
    """The strongest of `peaks`, at most `peaks_per_s` per second as `find_peaks` selects them."""
    keep = _strongest_per_block(
        np.rint(peaks.time_frames).astype(np.int64), peaks.strength, cfg, peaks_per_s
    )
    return Peaks(peaks.time_frames[keep], peaks.freq_hz[keep], peaks.strength[keep])


def _strongest_per_block(
    t: np.ndarray, strength: np.ndarray, cfg: FingerprintConfig, peaks_per_s: float
) -> np.ndarray:
    """Indices of the strongest peaks in each block of about a second (t: the track's frames)."""
    block_frames = _block_frames(cfg)
    per_block = max(1, round(peaks_per_s * block_frames / cfg.frames_per_s))
    block = t // block_frames
    order = np.lexsort((-strength, block))
    sorted_block = block[order]
    starts = np.searchsorted(sorted_block, sorted_block, side="left")
    rank = np.arange(order.shape[0]) - starts
    return np.sort(order[rank < per_block])


def log_freq_steps(freq_hz: np.ndarray, cfg: FingerprintConfig) -> np.ndarray:
    """Continuous log-frequency position of each frequency, in `log_step` steps."""
    return np.log(np.maximum(freq_hz, 1.0) / cfg.min_freq_hz) / math.log1p(cfg.log_step)


@dataclass(frozen=True)
class _Zone:
    """Each peak's candidate targets (the next peaks in time order); `ok` marks the first
    `fanout` of them within the target zone."""

    q: np.ndarray  # log-frequency position of each peak (pitch step applied)
    t: np.ndarray  # frame of each peak
    target: np.ndarray  # (peaks, width) int: index of each candidate target
    ok: np.ndarray  # (peaks, width) bool
    dq: np.ndarray  # (peaks, width) quantised log-frequency step to each candidate
    dt: np.ndarray  # (peaks, width) quantised (speed-scaled) frames to each candidate


def _zone(peaks: Peaks, cfg: FingerprintConfig, fanout: int, speed: Speed) -> _Zone:
    n = len(peaks)
    factor = speed_factor(speed.tempo_steps, cfg.log_step)
    q = log_freq_steps(peaks.freq_hz, cfg) - speed.pitch_steps
    t = peaks.time_frames
    # Candidate targets: the next `width` peaks in time order (enough to find `fanout` valid).
    width = min(n - 1, CANDIDATES_PER_FANOUT * fanout)
    idx = np.arange(n)[:, None] + np.arange(1, width + 1)[None, :]
    ok = idx < n
    idx = np.minimum(idx, n - 1)
    dt = np.rint((t[idx] - t[:, None]) * factor)
    dq = np.rint(q[idx] - q[:, None])
    ok &= (dt >= 1) & (dt <= cfg.max_dt_frames) & (np.abs(dq) <= cfg.max_df_steps)
    ok &= np.cumsum(ok, axis=1) <= fanout
    return _Zone(q=q, t=t, target=idx, ok=ok, dq=dq, dt=dt)


def _anchor_q(zone: _Zone) -> tuple[np.ndarray, np.ndarray]:
    """Each peak's quantised frequency, and whether it fits Q_BITS (peaks that do not anchor
    no hash)."""
    q1 = np.rint(zone.q).astype(np.int64)
    return (q1 >= 0) & (q1 < (1 << Q_BITS)), q1


def hashes(peaks: Peaks, cfg: FingerprintConfig, fanout: int, speed: Speed = NOMINAL) -> Hashes:
    """Pair every peak with the next `fanout` peaks of its target zone and hash the pairs.

    `speed` re-hashes the peaks as if the audio were slowed down by
    speed_factor(speed.tempo_steps) and lowered by speed.pitch_steps, i.e. as they would be in
    a reference that the query plays that many times as fast (and that much higher).
    """
    if len(peaks) < 2:
        return _no_hashes()
    zone = _zone(peaks, cfg, fanout, speed)
    fits, q1 = _anchor_q(zone)
    ok = zone.ok & fits[:, None]
    anchor, j = np.divmod(np.flatnonzero(ok), ok.shape[1])
    h = (
        (q1[anchor].astype(np.uint32) << Q_SHIFT)
        | ((zone.dq[anchor, j] + DQ_BIAS).astype(np.uint32) << DT_BITS)
        | zone.dt[anchor, j].astype(np.uint32)
    )
    return Hashes(
        hashes=h,
        anchor_frames=zone.t[anchor],
        end_frames=zone.t[zone.target[anchor, j]],
    )


def triplets(
    peaks: Peaks,
    cfg: FingerprintConfig,
    fanout: int,
    speed: Speed = NOMINAL,
    anchors: int | None = None,
) -> Hashes:
    """Every peak with each two of its next `fanout` target-zone peaks, hashed to
    `TRIPLET_BITS` bits (`speed` as in `hashes`; `anchors` as in `triplet_keys`)."""
    raw = triplet_keys(peaks, cfg, fanout, speed, anchors)
    return Hashes(fold(raw.hashes), raw.anchor_frames, raw.end_frames)


def triplet_keys(
    peaks: Peaks,
    cfg: FingerprintConfig,
    fanout: int,
    speed: Speed = NOMINAL,
    anchors: int | None = None,
) -> Hashes:
    """The triplets' unfolded keys (uint64): `q1 << 32 | (dq1 + 128) << 24 | (dq2 + 128) << 16
    | dt1 << 8 | dt2`. With `anchors`, only the first `anchors` peaks anchor triplets (the
    others are their targets)."""
    if len(peaks) < 3 or fanout < 2:
        return _no_hashes(np.uint64)
    zone = _zone(peaks, cfg, fanout, speed)
    fanout = min(fanout, zone.ok.shape[1])
    # Each row's valid targets moved to the front: column c is the c-th target, and the
    # first `valid` columns are valid.
    slots = np.argsort(~zone.ok, axis=1, kind="stable")[:, :fanout]
    fits, q1 = _anchor_q(zone)
    valid = np.where(fits, zone.ok.sum(axis=1), 0)
    # The key's bits from the first target and from the second, per (peak, column).
    dq = np.take_along_axis(zone.dq, slots, axis=1).astype(np.int64) + DQ_BIAS
    dt = np.take_along_axis(zone.dt, slots, axis=1).astype(np.int64)
    from_first, from_second = ((dq << 24) | (dt << 8)).ravel(), ((dq << 16) | dt).ravel()
    first, second = np.triu_indices(fanout, 1)
    n = len(peaks) if anchors is None else min(anchors, len(peaks))
    anchor = np.repeat(np.arange(n), first.shape[0])
    first, second = np.tile(first, n), np.tile(second, n)
    keep = second < valid[anchor]
    anchor = anchor[keep]
    first, second = anchor * fanout + first[keep], anchor * fanout + second[keep]
    keys = ((q1[anchor] << 32) | from_first[first] | from_second[second]).astype(np.uint64)
    return Hashes(keys, zone.t[anchor], zone.t[zone.target[anchor, slots.ravel()[second]]])


def speed_triplets(
    peaks: Peaks, cfg: FingerprintConfig, fanout: int, speeds: Sequence[Speed]
) -> tuple[Hashes, np.ndarray]:
    """`triplets(peaks, cfg, fanout, speed)` for every speed of `speeds`, laid end to end, and
    the index in `speeds` of each hash: the same hashes, made at once.

    A pitch step shifts every anchor's `q1` and no frequency step, so the keys of one tempo
    serve every pitch (the anchor's range is checked after the shift); and the tempos differ
    only in their frame steps, so the target zones of all of them are one array: a few dozen
    whole-array operations for the speed pass instead of a few dozen per speed."""
    nothing = _no_hashes(), np.zeros(0, dtype=np.int64)
    if len(peaks) < 3 or fanout < 2 or not speeds:
        return nothing
    tempos = sorted({s.tempo_steps for s in speeds})
    pitches = [s.pitch_steps for s in speeds]
    keys, anchors, ends, bounds = _tempo_keys(peaks, cfg, fanout, tempos, pitches)
    parts, which = [], []
    for i, speed in enumerate(speeds):
        t = tempos.index(speed.tempo_steps)
        lo, hi = bounds[t], bounds[t + 1]
        q1 = (keys[lo:hi] >> 32) - speed.pitch_steps
        keep = lo + np.flatnonzero((q1 >= 0) & (q1 < (1 << Q_BITS)))
        parts.append(keep)
        which.append(np.full(keep.shape[0], i, dtype=np.int64))
    chosen = np.concatenate(parts)
    step_of = np.concatenate(which)
    shifted = keys[chosen] - (np.array(pitches, dtype=np.int64)[step_of] << 32)
    return Hashes(fold(shifted.astype(np.uint64)), anchors[chosen], ends[chosen]), step_of


def _tempo_keys(
    peaks: Peaks, cfg: FingerprintConfig, fanout: int, tempos: list[int], pitches: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The unfolded triplet keys (int64, `q1` unshifted) of the peaks at each tempo step of
    `tempos`, laid end to end (tempo by tempo, `bounds` where each starts, and the end), with
    their anchor and end frames. Anchors are kept wherever some pitch of `pitches` can bring
    them into Q_BITS (the caller checks each)."""
    n = len(peaks)
    width = min(n - 1, CANDIDATES_PER_FANOUT * fanout)
    idx = np.arange(n)[:, None] + np.arange(1, width + 1)[None, :]
    inside = idx < n
    idx = np.minimum(idx, n - 1)
    q = log_freq_steps(peaks.freq_hz, cfg)
    t = peaks.time_frames
    dq = np.rint(q[idx] - q[:, None])  # (peaks, width): the same at every pitch
    factors = np.array([speed_factor(k, cfg.log_step) for k in tempos])
    dt = np.rint((t[idx] - t[:, None])[None] * factors[:, None, None])  # (tempos, peaks, width)
    ok = inside & (np.abs(dq) <= cfg.max_df_steps)
    ok = ok[None] & (dt >= 1) & (dt <= cfg.max_dt_frames)
    rank = np.cumsum(ok, axis=2)
    ok &= rank <= fanout
    fanout = min(fanout, width)
    # slots[t, a, c]: the column of anchor a's c-th valid target at tempo t (0 past the last)
    slots = np.zeros((len(tempos), n, fanout), dtype=np.intp)
    tempo_at, anchor_at, column = np.nonzero(ok)
    slots[tempo_at, anchor_at, rank[tempo_at, anchor_at, column] - 1] = column
    q1 = np.rint(q).astype(np.int64)
    fits = (q1 >= -max(0, max(pitches))) & (q1 < (1 << Q_BITS) - min(0, min(pitches)))
    valid = np.where(fits[None], ok.sum(axis=2), 0)  # (tempos, peaks)
    dq_s = np.take_along_axis(np.broadcast_to(dq, ok.shape), slots, axis=2).astype(np.int64)
    dq_s += DQ_BIAS
    dt_s = np.take_along_axis(dt, slots, axis=2).astype(np.int64)
    from_first, from_second = ((dq_s << 24) | (dt_s << 8)).ravel(), ((dq_s << 16) | dt_s).ravel()
    first, second = np.triu_indices(fanout, 1)
    tempo_i, anchor, pair = np.nonzero(second[None, None, :] < valid[:, :, None])
    row = (tempo_i * n + anchor) * fanout
    keys = (q1[anchor] << 32) + (from_first[row + first[pair]] | from_second[row + second[pair]])
    target = idx[anchor, slots.reshape(-1, fanout)[tempo_i * n + anchor, second[pair]]]
    bounds = np.searchsorted(tempo_i, np.arange(len(tempos) + 1))
    return keys, t[anchor], t[target], bounds


def fold(keys: np.ndarray) -> np.ndarray:
    """Triplet keys -> TRIPLET_BITS-bit hashes (the top bits of a multiplicative hash)."""
    return ((keys.astype(np.uint64) * _FOLD) >> np.uint64(64 - TRIPLET_BITS)).astype(np.uint32)


def _no_hashes(dtype: type = np.uint32) -> Hashes:
    empty = np.zeros(0, dtype=np.float32)
    return Hashes(np.zeros(0, dtype=dtype), empty, empty)


def reference_peaks(samples: np.ndarray, cfg: FingerprintConfig) -> Peaks:
    """The peaks of a reference track (kept by the catalog: its pairs are derived from them)."""
    return find_peaks(spectrogram(samples, cfg), cfg, cfg.ref_peaks_per_s)


def streamed_reference_peaks(blocks: Iterable[np.ndarray], cfg: FingerprintConfig) -> Peaks:
    """`reference_peaks` of a track given as a stream of sample blocks (bounded memory)."""
    return streamed_peaks(blocks, cfg, cfg.ref_peaks_per_s)


def reference_pairs(peaks: Peaks, cfg: FingerprintConfig) -> Hashes:
    """A reference track's pair hashes, which a candidate is verified against."""
    return hashes(peaks, cfg, cfg.ref_fanout)


def reference_triplets(peaks: Peaks, cfg: FingerprintConfig) -> Hashes:
    """A reference track's triplet hashes, the ones the index holds: made a piece of anchors
    at a time (the candidate-target arrays take about 1 KB per peak), which join to the whole,
    as an anchor's triplets need only its next `CANDIDATES_PER_FANOUT * fanout` peaks."""
    fanout = cfg.ref_triplet_fanout
    reach = CANDIDATES_PER_FANOUT * fanout
    n, parts, start = len(peaks), [], 0
    if n < 2 * TRIPLET_PIECE_ANCHORS:
        return triplets(peaks, cfg, fanout)
    while start < n:
        # pieces of TRIPLET_PIECE_ANCHORS; the last one takes the rest (so none is short)
        anchors = TRIPLET_PIECE_ANCHORS if n - start >= 2 * TRIPLET_PIECE_ANCHORS else n - start
        piece = _sliced(peaks, start, start + anchors + reach)
        parts.append(triplets(piece, cfg, fanout, anchors=anchors))
        start += anchors
    return Hashes(
        hashes=np.concatenate([h.hashes for h in parts]),
        anchor_frames=np.concatenate([h.anchor_frames for h in parts]),
        end_frames=np.concatenate([h.end_frames for h in parts]),
    )


def _sliced(peaks: Peaks, start: int, stop: int) -> Peaks:
    return Peaks(
        peaks.time_frames[start:stop], peaks.freq_hz[start:stop], peaks.strength[start:stop]
    )


def reference_hashes(samples: np.ndarray, cfg: FingerprintConfig) -> Hashes:
    """The pair hashes of a reference recording."""
    return reference_pairs(reference_peaks(samples, cfg), cfg)


def query_peaks(samples: np.ndarray, cfg: FingerprintConfig) -> Peaks:
    """The (denser) peaks of a query; hash them with `hashes(..., cfg.query_fanout, speed)`
    and `triplets(..., cfg.query_triplet_fanout, speed)`."""
    return find_peaks(spectrogram(samples, cfg), cfg, cfg.query_peaks_per_s)
