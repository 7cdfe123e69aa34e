"""Whether a file about to be added is audio the catalog already holds (found by its
fingerprint, not its name): `songscan add` refuses such a file, or replaces the track.

The new track's own peaks are cut into chunk-long windows spread over it, and each window is
matched against the owner's tracks like a scan's chunk. It is the same audio as a track when
most windows find that track, confidently, and the two last about as long (an excerpt, a
radio edit or a mix that contains the song is a different track).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .catalog import Catalog, FingerprintedTrack, Track, stored
from .config import EngineConfig
from .fingerprint import Peaks
from .matcher import match_peaks

# Windows matched per track (fewer when it is short): enough to say "most of the track".
WINDOWS = 8
# Share of the windows that must find the same track.
MIN_SHARE = 0.75
# Durations that differ by more than this share (or 2 s, whichever is more) are different tracks.
DURATION_TOLERANCE = 0.05


def find_duplicate(catalog: Catalog, track: FingerprintedTrack, cfg: EngineConfig) -> Track | None:
    """The track of `track.owner` (shared catalog or an account's uploads) whose audio
    `track` is, or None."""
    live = catalog.live_ids((track.owner,))
    if live.shape[0] == 0:
        return None
    peaks = stored(track.peaks)  # as the catalog keeps a track's peaks
    found: Counter[int] = Counter()
    windows = _windows(peaks, track.duration_s, cfg)
    for window in windows:
        matches = match_peaks(window, catalog, live, cfg)
        if matches and not matches[0].weak:
            found[matches[0].track_id] += 1
    if not found:
        return None
    track_id, count = found.most_common(1)[0]
    candidate = catalog.track(track_id)
    tolerance = max(2.0, DURATION_TOLERANCE * track.duration_s)
    if count >= MIN_SHARE * len(windows) and abs(candidate.duration_s - track.duration_s) <= (
        tolerance
    ):
        return candidate
    return None


def _windows(peaks: Peaks, duration_s: float, cfg: EngineConfig) -> list[Peaks]:
    """Up to WINDOWS chunk-long stretches of `peaks`, evenly spread, each in its own frames
    (frame 0 at the window's start, as a chunk's query peaks are)."""
    fp = cfg.fingerprint
    window_s = cfg.scan.chunk_s
    count = max(1, min(WINDOWS, int(duration_s // window_s)))
    starts_s = np.linspace(0.0, max(0.0, duration_s - window_s), count)
    out = []
    for start_s in starts_s:
        lo, hi = start_s * fp.frames_per_s, (start_s + window_s) * fp.frames_per_s
        keep = (peaks.time_frames >= lo) & (peaks.time_frames < hi)
        out.append(
            Peaks(
                time_frames=(peaks.time_frames[keep] - np.float32(lo)).astype(np.float32),
                freq_hz=peaks.freq_hz[keep],
                strength=peaks.strength[keep],
            )
        )
    return out
