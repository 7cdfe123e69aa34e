"""From a live stream's consecutive 12-second windows to plays: song, start, length, timecode.

`WindowRecognizer` recognises each window with the scan's engine (`scan.py`: the matcher, the
neighbour checks of `check_neighbours_songs`, weak matches kept only where a neighbour confirms
them), looking one window back: window i is checked with window i-1, and i-1's verdict may be
revised by i (a song that starts late in i-1, too faint there alone, is confirmed by i).

`PlayTracker` merges windows into plays. A window continues the open play when it holds the
same song at the position the play predicts (`scan.continues`); a play ends at the first window
that does not continue it, or when the stream has been away longer than the gap tolerance; a
shorter gap (a reconnect) does not end it. Each play is reported once it has ended, and also
when it starts for `callbacks=before`.

Times are seconds on the listener's timeline (wall clock since the listener started), so they
stay comparable across reconnects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from songscan.chunks import Chunk
from songscan.config import EngineConfig
from songscan.fingerprint import Peaks, query_peaks
from songscan.matcher import Match, match_peaks, match_tracks
from songscan.scan import (
    ChunkResult,
    SongMatch,
    catalog_for,
    check_neighbours_songs,
    confirm_weak,
    continues,
    song_matches,
)

SILENCE_RMS = 1e-3  # -60 dBFS: a window quieter than this is silence, not music
# A play whose song stops this long before its window's end may have ended inside it.
EARLY_END_S = 3.0
# Otherwise, once this much of the next window is in, a song not heard there has ended.
HEAD_S = 4.0
# Positions across a reconnect are compared by wall clock: allow for its estimation error.
GAP_CONTINUITY_S = 3.0


@dataclass(frozen=True)
class Window:
    chunk: Chunk  # index in the listener's life, start and end on its timeline
    songs: list[SongMatch]  # confident matches, best first
    silent: bool


@dataclass
class _Heard:
    chunk: Chunk
    peaks: Peaks
    matches: list[Match]


class WindowRecognizer:
    """Recognise consecutive windows of one stream (one instance per listener)."""

    def __init__(
        self,
        data_dir: Path,
        cfg: EngineConfig,
        owners: tuple[str, ...],
        limiter: threading.Semaphore | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.cfg = cfg
        self.owners = owners
        self.limiter = limiter or threading.Semaphore(1)
        self._prev: _Heard | None = None

    def reset(self) -> None:
        """The stream was interrupted: the next window has no neighbour before it."""
        self._prev = None

    def plays_on(self, track_id: int, from_s: float) -> bool:
        """Whether song `track_id` is heard in the last window after `from_s` seconds into
        it (any match of it there, even a weak one: a quiet passage is not an end)."""
        if self._prev is None:
            return True
        peaks = self._prev.peaks
        keep = peaks.time_frames >= from_s * self.cfg.fingerprint.frames_per_s
        tail = Peaks(peaks.time_frames[keep], peaks.freq_hz[keep], peaks.strength[keep])
        leads = self._leads(track_id)
        if not leads:
            return True
        catalog = catalog_for(self.data_dir, self.cfg)
        with self.limiter:
            return bool(match_tracks(tail, catalog, leads, self.cfg))

    def heard(self, track_id: int, samples: np.ndarray) -> bool:
        """Whether song `track_id` is heard in `samples` (the first seconds of a window)."""
        leads = self._leads(track_id)
        if not leads:  # no window before to follow it from: the whole window decides
            return True
        peaks = query_peaks(samples, self.cfg.fingerprint)
        catalog = catalog_for(self.data_dir, self.cfg)
        with self.limiter:
            found = match_tracks(peaks, catalog, leads, self.cfg)
        # A weak match is no proof here: checked at its lead's speed and the steps beside it,
        # a few seconds of other music can line up weakly with the song that just ended.
        return any(not m.weak for m in found)

    def _leads(self, track_id: int) -> list[Match]:
        """The last window's match of song `track_id` (it is checked at that match's speed)."""
        if self._prev is None:
            return []
        return [m for m in self._prev.matches if m.track_id == track_id][:1]

    def add(self, chunk: Chunk, samples: np.ndarray) -> tuple[Window | None, Window]:
        """(the previous window's revised verdict or None, this window's verdict)."""
        silent = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) < SILENCE_RMS
        catalog = catalog_for(self.data_dir, self.cfg)
        with self.limiter:  # recognitions at once, across this process's listeners
            live = catalog.live_ids(self.owners)
            peaks = query_peaks(samples, self.cfg.fingerprint)
            here = _Heard(chunk, peaks, match_peaks(peaks, catalog, live, self.cfg))
            prev = self._prev if self._prev and self._prev.chunk.index == chunk.index - 1 else None
            heard = [prev, here] if prev else [here]
            checked = check_neighbours_songs(
                [(h.chunk.start_s, h.peaks, h.matches) for h in heard], catalog, self.cfg
            )
            for h, matches in zip(heard, checked, strict=True):
                h.matches = matches
            results = [
                ChunkResult(h.chunk, song_matches(h.matches, h.chunk, catalog, self.cfg))
                for h in heard
            ]
        results = confirm_weak(results, self.cfg.match.continuity_tolerance_s)
        self._prev = here
        windows = [Window(r.chunk, [s for s in r.songs if not s.weak], False) for r in results]
        windows[-1] = replace(windows[-1], silent=silent)
        return (windows[0] if prev else None), windows[-1]


@dataclass
class Play:
    """A song played on the stream: from `start_s` to `end_s` (listener timeline)."""

    song: SongMatch  # the play's song in its first window (metadata, score, placement)
    first: Chunk  # the play's first window
    start_s: float
    end_s: float
    timecode_ms: int  # where in the song the play starts
    last: tuple[Chunk, SongMatch]  # the last window that held it, and where
    score: int = 0
    settled: bool = False  # its start is known as well as it will be (see `_settle`)
    announced: bool = False  # its "started" event was given
    windows: int = 1

    @property
    def track_id(self) -> int:
        return self.song.track.id

    @property
    def length_s(self) -> float:
        return max(0.0, self.end_s - self.start_s)


@dataclass(frozen=True)
class PlayEvent:
    kind: str  # "started" | "ended"
    play: Play


@dataclass
class PlayTracker:
    tolerance_s: float  # song positions of neighbouring windows agree this well
    gap_tolerance_s: float  # an interruption longer than this ends the play in progress
    # Whether a song is heard in the last window after a moment (`WindowRecognizer.plays_on`):
    # a play whose song stops early in a window ends with that window, not the next one.
    plays_on: Callable[[int, float], bool] | None = None
    play: Play | None = None
    _last_end: float = float("-inf")  # where the last play ended
    _ended_here: tuple[int, int] = (-1, -1)  # (window, track) of a play ended at its head

    def add(self, revised_prev: Window | None, window: Window) -> list[PlayEvent]:
        """What `window` (and the revised verdict of the one before) changes. A play's
        "started" event comes once its start is settled (its second window, or its end)."""
        events: list[PlayEvent] = []
        best = window.songs[0] if window.songs else None
        if best is not None and (window.chunk.index, best.track.id) == self._ended_here:
            best = None  # its play ended at this window's head: not a new play of it
        if self.play is not None:
            continued = self._continuation(window)
            if continued is not None:
                self._extend(window.chunk, continued)
            if continued is not None and self._ended_inside(window, continued):
                events += self._end()
                if best is not None and best.track.id == continued.track.id:
                    best = None  # the song that just ended here does not start again here
            elif continued is None or (best is not None and best.track.id != self.play.track_id):
                events += self._end()
        if self.play is None and best is not None:
            self.play = self._start(best, window.chunk, revised_prev)
        if self.play is not None and self.play.settled and not self.play.announced:
            self.play.announced = True
            events.append(PlayEvent("started", self.play))
        return events

    def _ended_inside(self, window: Window, song: SongMatch) -> bool:
        """Whether the song stopped inside `window`: its matched fragment ends more than
        `EARLY_END_S` before the window does and nothing of it is heard after that. Saves
        waiting for the next window (12 s) to learn that the play is over."""
        stops_s = song.end_offset_ms / 1000
        window_s = window.chunk.end_s - window.chunk.start_s
        if self.plays_on is None or stops_s > window_s - EARLY_END_S:
            return False
        return not self.plays_on(song.track.id, stops_s + 0.5)

    def next_window_begins(self, index: int, heard: Callable[[int], bool]) -> list[PlayEvent]:
        """The first `HEAD_S` seconds of window `index` are in. When the open play was heard
        to the end of the window before (it did not end inside it) and its song is not heard
        in them (`heard(track_id)`), it is over now, not when the whole window is in."""
        play = self.play
        if play is None or play.last[0].index != index - 1 or heard(play.track_id):
            return []
        self._ended_here = (index, play.track_id)
        return self._end()

    def interrupted(self, away_s: float) -> list[PlayEvent]:
        """The stream has been away `away_s` seconds so far: a play in progress ends once
        that is past the gap tolerance."""
        if self.play is not None and away_s > self.gap_tolerance_s:
            return self._end()
        return []

    def finish(self) -> list[PlayEvent]:
        """The stream is over: the play in progress ends where it was last heard."""
        return self.interrupted(float("inf"))

    def _end(self) -> list[PlayEvent]:
        assert self.play is not None
        ended, self.play = self.play, None
        self._last_end = ended.end_s
        events = []
        if not ended.announced:  # a play of one window: its start is what that window says
            ended.announced = ended.settled = True
            events.append(PlayEvent("started", ended))
        return [*events, PlayEvent("ended", ended)]

    def _start(self, best: SongMatch, chunk: Chunk, revised_prev: Window | None) -> Play:
        """A play of `best` from `chunk` or, when the revised window before holds the same
        song leading into this one (a start too faint to match alone), from that window."""
        if revised_prev is not None:
            for song in revised_prev.songs:
                if song.track.id == best.track.id and continues(
                    song, revised_prev.chunk, best, chunk, self.tolerance_s
                ):
                    self.play = _play(song, revised_prev.chunk, self._last_end)
                    self._extend(chunk, best)  # its second window: settles its start
                    return self.play
        return _play(best, chunk, self._last_end)

    def _settle(self, play: Play, full: SongMatch) -> None:
        """Fix the start of `play` from its first window's evidence against `full`, the same
        song in the next window. The first matched hit is a poor guide to where a song cut
        in (one chance hit at the right offset reaches seconds back), so the start is where
        the song's hit rate in the next window says it must be to give the first window's
        hits; unless the hits fill the first window from the song's own beginning
        (position < 0): then that beginning is exact. Never before the last play ended."""
        first, window_s = play.song, play.first.end_s - play.first.start_s
        ratio = min(1.0, first.aligned_hits / max(1, full.aligned_hits))
        from_density_s = window_s * (1 - ratio)
        begins_s = -first.position_ms / 1000 / first.speed  # where song position 0 falls
        if first.position_ms < 0 and ratio >= 0.7 * (window_s - begins_s) / window_s:
            offset_s = begins_s
        else:
            offset_s = max(from_density_s, begins_s)
        _place(play, play.first.start_s + offset_s, self._last_end)
        play.settled = True

    def _continuation(self, window: Window) -> SongMatch | None:
        """The play's song in `window`, where the play predicts it, or None."""
        assert self.play is not None
        last_chunk, last_song = self.play.last
        adjacent = window.chunk.index == last_chunk.index + 1
        tolerance = self.tolerance_s if adjacent else max(self.tolerance_s, GAP_CONTINUITY_S)
        if not adjacent and window.chunk.start_s - last_chunk.end_s > self.gap_tolerance_s:
            return None
        for song in window.songs:
            if song.track.id != self.play.track_id:
                continue
            for place in (song, *song.alternatives):
                if continues(last_song, last_chunk, place, window.chunk, tolerance):
                    return place
        return None

    def _extend(self, chunk: Chunk, song: SongMatch) -> None:
        play = self.play
        if play is None:
            return
        if not play.settled and chunk.index == play.first.index + 1:
            self._settle(play, song)
        play.end_s = chunk.start_s + song.end_offset_ms / 1000
        play.last = (chunk, song)
        play.score = max(play.score, song.score)
        play.windows += 1


def _play(first: SongMatch, chunk: Chunk, not_before_s: float) -> Play:
    """A new play of `first` in `chunk`, its start provisional: the song's beginning when it
    falls inside the window, else where its matched fragment begins."""
    begins_s = -first.position_ms / 1000 / first.speed
    offset_s = max(begins_s, first.start_offset_ms / 1000)
    play = Play(
        song=first,
        first=chunk,
        start_s=chunk.start_s,
        end_s=chunk.start_s + first.end_offset_ms / 1000,
        timecode_ms=max(0, first.position_ms),
        last=(chunk, first),
        score=first.score,
    )
    _place(play, chunk.start_s + offset_s, not_before_s)
    return play


def _place(play: Play, start_s: float, not_before_s: float) -> None:
    """Start `play` at `start_s`, but not before `not_before_s` (a play starts no earlier
    than the one before it ended), nor before its first window; its timecode follows."""
    start_s = max(start_s, not_before_s, play.first.start_s)
    play.start_s = start_s
    moved_ms = (start_s - play.first.start_s) * 1000 * play.song.speed
    play.timecode_ms = max(0, round(play.song.position_ms + moved_ms))
