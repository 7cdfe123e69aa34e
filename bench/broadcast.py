"""Broadcast-style test recordings with exact ground truth.

A *programme* is a seeded random sequence of catalog excerpts (reference tracks, the songs
the engine should find), distractor music (never indexed: must come back as no match),
speech runs (several short voice clips back to back) and silence gaps, with crossfades,
per-segment levels and slow gain ramps. The programme is then optionally played fast or slow
(``speed``: resampling, pitch and tempo together), pink (default) or white Gaussian noise is
added at the requested SNR, and the result is encoded (mp3, aac in .m4a, flac or wav).

Everything is generated and encoded in blocks of ~3 s: sources are decoded on demand with
PyAV, so memory stays flat however long the output is. Beside the audio file a JSON ground
truth (same stem, ``.truth.json``) says which source plays where, exact to the sample.

Times in the truth are *file* times (seconds in the output file, after ``speed``). A segment
plays ``source`` from ``source_start_s`` at ``file_start_s``; at file time ``x`` inside the
segment the source position is ``source_start_s + (x - file_start_s) * speed``. Segments
overlap during crossfades (and the overlap is the fade, see ``fade_in_s``/``fade_out_s``).

The programme (constants below): each next item is catalog 45 %, distractor 20 %, speech 20 %
or silence 15 % (never speech after speech or silence after silence). Catalog excerpts last
20-150 s (shorter only when the track is), distractor excerpts 20-90 s, both from a random
start; speech runs 5-30 s of whole clips back to back (one truth segment per clip); gaps
0.5-4 s. 40 % of music-to-music transitions (never distractor-to-distractor) are 2-6 s
crossfades (linear or equal-power); other music boundaries are hard cuts (30 %) or short
fades (5 ms-1.5 s). Every item has a level in -12..0 dB; 25 % of music items glide linearly
in dB to another level over their length.

Conventions (the scorer relies on these):

- ``duration_s`` passed to :func:`build_broadcast` is the programme length at normal speed,
  so the file lasts ``duration_s / speed`` and the same seed gives the same programme at any
  speed, codec or SNR (only the noise and the encoding differ).
- The speed applied is a rational approximation (``Fraction.limit_denominator(1000)``), and
  the truth's ``speed`` is that exact ratio (1.03 stays 1.03).
- SNR: ``10·log10(P_signal / P_noise)``, where ``P_signal`` is the mean power of the clean
  programme over the whole file (silences included, after speed and master gain) and
  ``P_noise`` the mean power of the added noise. Pink noise (1/f, -3 dB/octave; RBJ's
  pinking filter) by default, because broadcast noise (hiss, hum, crowd, road) puts most of
  its power where music is; white noise at the same SNR is much easier (most of its power
  lies above the fingerprint band).
- Output is mono at ``sample_rate``; the programme has a master gain of -6 dB for headroom,
  and the final signal is clipped to [-1, 1] (``clipped_samples`` counts clipped samples).
- Files are cached: the file name carries the parameters and a hash of them, the generator
  version and the corpus listing; an existing file with a matching truth is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from scipy.signal import firwin, lfilter, resample_poly

GENERATOR_VERSION = 1

KINDS = ("catalog", "distractor", "speech", "silence")
MUSIC = ("catalog", "distractor")
ROLE_DIRS: dict[str, str] = {"catalog": "reference", "distractor": "distractor", "speech": "speech"}
AUDIO_SUFFIXES = frozenset({".ogg", ".oga", ".opus", ".flac", ".mp3", ".wav", ".m4a", ".aac"})
# codec name -> (PyAV encoder, container format, file suffix)
CODECS: dict[str, tuple[str, str, str]] = {
    "mp3": ("libmp3lame", "mp3", ".mp3"),
    "aac": ("aac", "ipod", ".m4a"),  # "ipod" is FFmpeg's mp4 muxer flavour for .m4a
    "flac": ("flac", "flac", ".flac"),
    "wav": ("pcm_s16le", "wav", ".wav"),
}
LOSSY = ("mp3", "aac")
NOISE_KINDS = ("pink", "white")
FADE_SHAPES = ("linear", "equal_power")

# The programme's statistics (seconds, dB, probabilities).
KIND_WEIGHTS: dict[str, float] = {
    "catalog": 0.45,
    "distractor": 0.2,
    "speech": 0.2,
    "silence": 0.15,
}
EXCERPT_S: dict[str, tuple[float, float]] = {"catalog": (20.0, 150.0), "distractor": (20.0, 90.0)}
SPEECH_RUN_S = (5.0, 30.0)
SILENCE_S = (0.5, 4.0)
CROSSFADE_S = (2.0, 6.0)
P_CROSSFADE = 0.4  # of music -> music transitions (never distractor -> distractor)
SHORT_FADE_S = (0.005, 1.5)  # fade in/out at a plain (non-crossfade) music boundary
P_HARD_CUT = 0.3  # a plain music boundary without any fade
SPEECH_FADE_S = 0.005
GAIN_DB = (-12.0, 0.0)
P_GAIN_RAMP = 0.25  # a music segment whose level glides linearly (in dB) to another level
MASTER_GAIN_DB = -6.0
SOURCE_MARGIN_S = 0.3  # music excerpts end at least this far before the source's end

# A DJ set ("dj" mix): music back to back, every music-to-music transition an 8-s crossfade.
DJ_KIND_WEIGHTS: dict[str, float] = {
    "catalog": 0.6,
    "distractor": 0.25,
    "speech": 0.1,
    "silence": 0.05,
}
DJ_CROSSFADE_S = 8.0
MIXES = ("broadcast", "dj")
STRETCHES = ("resample", "tempo")

BLOCK = 1 << 17  # samples per processing block (~3 s at 44.1 kHz)
MP3_SPF = 1152

# RBJ's pinking filter (1/f within ±0.05 dB above ~9 Hz at 44.1 kHz).
_PINK_B = np.array([0.049922035, -0.095993537, 0.050612699, -0.004408786])
_PINK_A = np.array([1.0, -2.494956002, 2.017265875, -0.522189400])


# ---------------------------------------------------------------------------------------------
# Ground truth


@dataclass(frozen=True)
class Segment:
    """One source playing in the file (file times in seconds, after speed)."""

    kind: str  # "catalog" | "distractor" | "speech" | "silence"
    source: str | None  # file name inside the corpus role dir; None for silence
    file_start_s: float
    file_end_s: float
    source_start_s: float  # source position at file_start_s
    fade_in_s: float  # file seconds from file_start_s over which the level rises from 0
    fade_out_s: float  # file seconds before file_end_s over which the level falls to 0
    fade_in_shape: str = "linear"  # "linear" | "equal_power"
    fade_out_shape: str = "linear"
    gain_db_start: float = 0.0  # level at file_start_s (before fades and master gain)
    gain_db_end: float = 0.0  # level at file_end_s (linear ramp in dB in between)
    # This segment's own speed (source seconds per programme second), on top of the file's:
    # "resample" plays pitch and tempo together (a turntable), "tempo" keeps the pitch (key lock).
    speed: float = 1.0
    stretch: str = "resample"

    def source_time(self, file_time_s: float, speed: float) -> float:
        """Position in the source (seconds) heard at ``file_time_s`` (``speed``: the file's)."""
        return self.source_start_s + (file_time_s - self.file_start_s) * speed * self.speed


@dataclass(frozen=True)
class Truth:
    """The ground truth of one generated file (the ``.truth.json`` beside it)."""

    duration_s: float  # of the output file (content; AAC decoders may pad the last frame)
    speed: float
    snr_db: float | None
    codec: str
    bitrate_kbps: int  # 0 for lossless codecs
    segments: tuple[Segment, ...]
    sample_rate: int = 44100
    seed: int = 0
    noise: str = "pink"
    programme_duration_s: float = 0.0  # at normal speed (= duration_s * speed)
    signal_power_db: float | None = None  # mean power of the clean programme, dBFS
    noise_power_db: float | None = None
    clipped_samples: int = 0
    generator_version: int = GENERATOR_VERSION
    key: str = ""  # hash of every parameter, the generator version and the corpus listing
    repeat_times: int = 1  # > 1 for files made by repeat_mp3
    repeat_period_s: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def segments_at(self, file_time_s: float) -> list[Segment]:
        """The segments heard at ``file_time_s`` (two during a crossfade)."""
        return [s for s in self.segments if s.file_start_s <= file_time_s < s.file_end_s]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["segments"] = [asdict(s) for s in self.segments]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Truth:
        known = {f.name for f in fields(cls)}
        seg_known = {f.name for f in fields(Segment)}
        kw = {k: v for k, v in d.items() if k in known}
        kw["segments"] = tuple(
            Segment(**{k: v for k, v in s.items() if k in seg_known}) for s in d["segments"]
        )
        return cls(**kw)


@dataclass(frozen=True)
class Broadcast:
    path: Path  # the audio file
    truth_path: Path  # the .truth.json beside it
    truth: Truth


def truth_path_for(audio: Path) -> Path:
    """``x/name.mp3`` -> ``x/name.truth.json``."""
    return audio.with_name(audio.stem + ".truth.json")


def load_truth(path: Path) -> Truth:
    """Reads a ``.truth.json`` (or the truth beside an audio file)."""
    if not path.name.endswith(".truth.json"):
        path = truth_path_for(path)
    return Truth.from_json(json.loads(path.read_text()))


def default_cache_dir() -> Path:
    """``$SONGSCAN_BENCH_CACHE``, else ``bench/out/`` in the repository (git-ignored)."""
    env = os.environ.get("SONGSCAN_BENCH_CACHE")
    return Path(env) if env else Path(__file__).resolve().parent / "out"


def find_corpus() -> Path:
    """``$SONGSCAN_CORPUS``, else ``~/.cache/songscan-corpus``, else ``scripts/fetch-corpus``."""
    env = os.environ.get("SONGSCAN_CORPUS")
    if env:
        return Path(env)
    home = Path.home() / ".cache" / "songscan-corpus"
    if (home / "reference").is_dir():
        return home
    script = Path(__file__).resolve().parent.parent / "scripts" / "fetch-corpus"
    out = subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# Corpus


class _Corpus:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.names: dict[str, list[str]] = {}
        for kind, role in ROLE_DIRS.items():
            d = root / role
            self.names[kind] = (
                sorted(p.name for p in d.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
                if d.is_dir()
                else []
            )
        if not self.names["catalog"]:
            raise ValueError(f"no reference tracks in {root / ROLE_DIRS['catalog']}")
        self._durations: dict[tuple[str, str], float] = {}
        self._samples: dict[tuple[str, str, int], int] = {}

    def path(self, kind: str, name: str) -> Path:
        return self.root / ROLE_DIRS[kind] / name

    def duration(self, kind: str, name: str) -> float:
        key = (kind, name)
        if key not in self._durations:
            with av.open(str(self.path(kind, name))) as c:
                st = c.streams.audio[0]
                if st.duration is not None and st.time_base is not None:
                    self._durations[key] = float(st.duration * st.time_base)
                else:
                    self._durations[key] = (c.duration or 0) / 1e6
        return self._durations[key]

    def samples(self, kind: str, name: str, sr: int) -> int:
        """Exact length at ``sr`` of a (short) source, by decoding it as the renderer does.

        Container metadata can overstate a Vorbis stream by up to a block (~3 ms).
        """
        key = (kind, name, sr)
        if key not in self._samples:
            r = _SourceReader(self.path(kind, name), sr, 0)
            try:
                while r._pull():
                    pass
                self._samples[key] = r._n
            finally:
                r.close()
        return self._samples[key]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for kind, names in self.names.items():
            for n in names:
                h.update(f"{kind}/{n}:{self.path(kind, n).stat().st_size}\n".encode())
        return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The programme plan (programme samples at the output rate, before speed)


@dataclass(frozen=True)
class _Style:
    """How a programme mixes its items (the default: the broadcast described above)."""

    kind_weights: dict[str, float] = field(default_factory=lambda: dict(KIND_WEIGHTS))
    p_crossfade: float = P_CROSSFADE
    crossfade_s: tuple[float, float] = CROSSFADE_S


STYLES: dict[str, _Style] = {
    "broadcast": _Style(),
    "dj": _Style(dict(DJ_KIND_WEIGHTS), 1.0, (DJ_CROSSFADE_S, DJ_CROSSFADE_S)),
}


@dataclass
class _Item:
    kind: str
    source: str | None
    start: int
    length: int
    src_start: int = 0
    fade_in: int = 0
    fade_out: int = 0
    fade_in_shape: str = "linear"
    fade_out_shape: str = "linear"
    gain0: float = 0.0
    gain1: float = 0.0
    speed: float = 1.0  # source samples per programme sample (see Segment.speed)
    stretch: str = "resample"

    @property
    def end(self) -> int:
        return self.start + self.length


def _pick(rng: np.random.Generator, names: list[str], avoid: str | None) -> str:
    choices = [n for n in names if n != avoid] or names
    return choices[int(rng.integers(len(choices)))]


def _plan(
    corpus: _Corpus, total: int, sr: int, rng: np.random.Generator, style: _Style = _Style()
) -> list[_Item]:
    """A random programme of exactly ``total`` samples (segments tile [0, total))."""
    usable: dict[str, list[str]] = {
        k: [n for n in corpus.names[k] if corpus.duration(k, n) - SOURCE_MARGIN_S >= 1.0]
        for k in MUSIC
    }
    kinds = [k for k in KINDS if k == "silence" or (usable[k] if k in MUSIC else corpus.names[k])]
    if not usable["catalog"]:
        raise ValueError("no reference track is longer than 1.3 s")
    items: list[_Item] = []
    last_source: dict[str, str | None] = {k: None for k in KINDS}
    t = 0
    while t < total:
        prev = items[-1] if items else None
        allowed = [k for k in kinds if not (prev and prev.kind == k and k in ("speech", "silence"))]
        w = np.array([style.kind_weights[k] for k in allowed])
        kind = allowed[int(rng.choice(len(allowed), p=w / w.sum()))]
        if kind in MUSIC:
            name = _pick(rng, usable[kind], last_source[kind])
            last_source[kind] = name
            avail = int((corpus.duration(kind, name) - SOURCE_MARGIN_S) * sr)
            length = min(int(rng.uniform(*EXCERPT_S[kind]) * sr), avail)
            src_start = int(rng.integers(0, avail - length + 1))
            g0 = float(rng.uniform(*GAIN_DB))
            g1 = float(rng.uniform(*GAIN_DB)) if rng.random() < P_GAIN_RAMP else g0
            item = _Item(kind, name, t, length, src_start, gain0=g0, gain1=g1)
            crossfade = (
                prev is not None
                and prev.kind in MUSIC
                and not (prev.kind == kind == "distractor")
                and rng.random() < style.p_crossfade
            )
            if crossfade:
                assert prev is not None
                d = min(int(rng.uniform(*style.crossfade_s) * sr), prev.length // 3, length // 3)
                shape = FADE_SHAPES[int(rng.integers(len(FADE_SHAPES)))]
                item.start = prev.end - d
                prev.fade_out, item.fade_in = d, d
                prev.fade_out_shape, item.fade_in_shape = shape, shape
            else:
                if prev is not None and prev.kind in MUSIC:
                    _short_fade(rng, prev, sr, "out")
                _short_fade(rng, item, sr, "in")
            items.append(item)
        elif kind == "speech":
            if prev is not None and prev.kind in MUSIC:
                _short_fade(rng, prev, sr, "out")
            target = rng.uniform(*SPEECH_RUN_S) * sr
            gain = float(rng.uniform(*GAIN_DB))
            run = 0
            misses = 0
            while run < target and t < total and misses < 100:
                name = _pick(rng, corpus.names["speech"], last_source["speech"])
                last_source["speech"] = name
                n = corpus.samples("speech", name, sr)
                if n < sr // 20:  # skip clips shorter than 50 ms
                    misses += 1
                    continue
                f = min(int(SPEECH_FADE_S * sr), n // 3)
                items.append(_Item("speech", name, t, n, 0, f, f, gain0=gain, gain1=gain))
                t += n
                run += n
            if run:
                continue
            kind = "silence"  # no usable speech clip: fall through to a gap
        if kind == "silence":
            if prev is not None and prev.kind in MUSIC:
                _short_fade(rng, prev, sr, "out")
            items.append(_Item("silence", None, t, int(rng.uniform(*SILENCE_S) * sr)))
        t = items[-1].end
    # The programme ends at `total`: cut whatever plays on.
    for it in items:
        if it.end > total:
            it.length = total - it.start
            it.fade_out = 0
            it.fade_in = min(it.fade_in, it.length)
    return [it for it in items if it.length > 0]


def _song_speeds(
    corpus: _Corpus, items: list[_Item], sr: int, spread: float, stretch: str, seed: int
) -> None:
    """Gives every music item its own speed, uniform in [1 - spread, 1 + spread] (its own
    generator, so the programme is the one of the same seed without), and moves its excerpt
    back in the source where the faster playback would run past the end (shortening it only
    when the whole source is too short: then a gap follows)."""
    rng = np.random.default_rng([seed, 0x5BEED])
    for it in items:
        if it.kind not in MUSIC or it.source is None:
            continue
        # the speed the renderer can realise exactly (see _SourceReader)
        it.speed = _exact_song_speed(float(rng.uniform(1 - spread, 1 + spread)), sr, stretch)
        it.stretch = stretch
        avail = int((corpus.duration(it.kind, it.source) - SOURCE_MARGIN_S) * sr)
        need = math.ceil(it.length * it.speed)
        if need > avail:
            it.length = int(avail / it.speed)
            it.fade_in = min(it.fade_in, it.length // 3)
            it.fade_out = min(it.fade_out, it.length // 3)
            need = math.ceil(it.length * it.speed)
        it.src_start = max(0, min(it.src_start, avail - need))


def _exact_song_speed(speed: float, sr: int, stretch: str) -> float:
    """Resampling plays the source decoded at ``round(sr / speed)`` Hz as if at ``sr``."""
    return sr / round(sr / speed) if stretch == "resample" else round(speed, 6)


def _short_fade(rng: np.random.Generator, it: _Item, sr: int, which: str) -> None:
    if rng.random() < P_HARD_CUT:
        n = 0
    else:
        n = min(int(rng.uniform(*SHORT_FADE_S) * sr), it.length // 3)
    shape = FADE_SHAPES[int(rng.integers(len(FADE_SHAPES)))]
    if which == "in":
        it.fade_in, it.fade_in_shape = n, shape
    else:
        it.fade_out, it.fade_out_shape = n, shape


def _truth_segments(items: list[_Item], sr: int, up: int, down: int) -> tuple[Segment, ...]:
    def ft(n: int) -> float:  # programme samples -> file seconds
        return n * up / (down * sr)

    return tuple(
        Segment(
            kind=it.kind,
            source=it.source,
            file_start_s=ft(it.start),
            file_end_s=ft(it.end),
            source_start_s=it.src_start / sr,
            fade_in_s=ft(it.fade_in),
            fade_out_s=ft(it.fade_out),
            fade_in_shape=it.fade_in_shape,
            fade_out_shape=it.fade_out_shape,
            gain_db_start=it.gain0,
            gain_db_end=it.gain1,
            speed=it.speed,
            stretch=it.stretch,
        )
        for it in items
    )


# ---------------------------------------------------------------------------------------------
# Rendering


class _SourceReader:
    """Sequential mono float32 samples of one source at ``sr``, from sample ``skip`` on
    (samples at ``sr`` of the source itself), played ``speed`` times as fast: resampled
    (``stretch="resample"``: the source decoded at ``sr / speed`` Hz, pitch and tempo together)
    or time-stretched by FFmpeg's ``atempo`` (``"tempo"``: pitch kept)."""

    def __init__(
        self, path: Path, sr: int, skip: int, speed: float = 1.0, stretch: str = "resample"
    ) -> None:
        self.path = path
        self._container = av.open(str(path))
        self._frames = self._container.decode(self._container.streams.audio[0])
        rate = round(sr / speed) if stretch == "resample" else sr
        self._resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
        skip = round(skip * rate / sr)
        self._tempo = _Atempo(sr, speed) if stretch == "tempo" and speed != 1.0 else None
        self._buf: list[np.ndarray] = []
        self._n = 0
        self._skip = skip
        self._eof = False
        self.shortfall = 0

    def _pull(self) -> bool:
        if self._eof:
            return False
        try:
            frames = self._resampler.resample(next(self._frames))
        except StopIteration:
            self._eof = True
            frames = self._resampler.resample(None)
        blocks = [f.to_ndarray()[0] for f in frames]
        if self._skip:
            for i, a in enumerate(blocks):
                k = min(self._skip, len(a))
                blocks[i], self._skip = a[k:], self._skip - k
        if self._tempo is not None:
            blocks = [self._tempo.run(a) for a in blocks if len(a)]
            if self._eof:
                blocks.append(self._tempo.run(None))
        for a in blocks:
            if len(a):
                self._buf.append(a)
                self._n += len(a)
        return True

    def read(self, n: int) -> np.ndarray:
        while self._n < n and self._pull():
            pass
        data = np.concatenate(self._buf) if self._buf else np.zeros(0, np.float32)
        out, rest = data[:n], data[n:]
        self._buf, self._n = ([rest] if len(rest) else []), len(rest)
        if len(out) < n:
            self.shortfall += n - len(out)
            out = np.pad(out, (0, n - len(out)))
        return out

    def close(self) -> None:
        self._container.close()


class _Atempo:
    """FFmpeg's ``atempo`` filter (WSOLA time-stretch, pitch kept) through PyAV's filter graph,
    on a stream of mono float32 blocks at ``sr`` (one filter reaches 0.5..100)."""

    def __init__(self, sr: int, tempo: float) -> None:
        self.sr = sr
        self.graph = av.filter.Graph()
        src = self.graph.add_abuffer(
            format="fltp", sample_rate=sr, layout="mono", time_base=Fraction(1, sr)
        )
        stretch = self.graph.add("atempo", f"{tempo:.6f}")
        sink = self.graph.add("abuffersink")
        src.link_to(stretch)
        stretch.link_to(sink)
        self.graph.configure()
        self.pts = 0

    def run(self, x: np.ndarray | None) -> np.ndarray:
        """The stretched samples available after ``x`` (None: the end of the stream)."""
        if x is None:
            self.graph.push(None)
        else:
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(x, np.float32).reshape(1, -1), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = self.sr, self.pts
            frame.time_base = Fraction(1, self.sr)
            self.pts += len(x)
            self.graph.push(frame)
        out: list[np.ndarray] = []
        while True:
            try:
                out.append(self.graph.pull().to_ndarray()[0])
            except (av.BlockingIOError, av.EOFError):
                break
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def time_stretch(samples: np.ndarray, sr: int, tempo: float) -> np.ndarray:
    """``samples`` (mono float32 at ``sr``) played ``tempo`` times as fast, pitch kept (atempo)."""
    stretch = _Atempo(sr, tempo)
    return np.concatenate([stretch.run(samples), stretch.run(None)])


def _shape(u: np.ndarray, shape: str) -> np.ndarray:
    return np.sin(u * (np.pi / 2)) if shape == "equal_power" else u


def _envelope(it: _Item, lo: int, hi: int) -> np.ndarray:
    """Gain (linear) of item samples [lo, hi): level ramp in dB times fades."""
    idx = np.arange(lo, hi, dtype=np.float64)
    if it.gain0 == it.gain1:
        env = np.full(hi - lo, 10 ** (it.gain0 / 20))
    else:
        env = 10 ** ((it.gain0 + (it.gain1 - it.gain0) * idx / max(it.length - 1, 1)) / 20)
    if it.fade_in and lo < it.fade_in:
        k = min(hi, it.fade_in) - lo
        env[:k] *= _shape((idx[:k] + 0.5) / it.fade_in, it.fade_in_shape)
    fo = it.length - it.fade_out
    if it.fade_out and hi > fo:
        k = max(fo, lo) - lo
        env[k:] *= _shape((it.length - idx[k:] - 0.5) / it.fade_out, it.fade_out_shape)
    return env.astype(np.float32)


def _programme_blocks(
    corpus: _Corpus, items: list[_Item], sr: int, total: int
) -> Iterator[np.ndarray]:
    """The clean programme, block by block (master gain applied)."""
    master = np.float32(10 ** (MASTER_GAIN_DB / 20))
    readers: dict[int, _SourceReader] = {}
    active: list[int] = []
    nxt = 0
    try:
        for b0 in range(0, total, BLOCK):
            b1 = min(total, b0 + BLOCK)
            out = np.zeros(b1 - b0, np.float32)
            while nxt < len(items) and items[nxt].start < b1:
                active.append(nxt)
                nxt += 1
            still: list[int] = []
            for i in active:
                it = items[i]
                a, e = max(b0, it.start), min(b1, it.end)
                if a < e and it.source is not None:
                    if i not in readers:
                        readers[i] = _SourceReader(
                            corpus.path(it.kind, it.source), sr, it.src_start, it.speed, it.stretch
                        )
                    x = readers[i].read(e - a)
                    out[a - b0 : e - b0] += x * _envelope(it, a - it.start, e - it.start)
                if it.end > b1:
                    still.append(i)
                elif i in readers:
                    r = readers.pop(i)
                    r.close()
                    if r.shortfall:
                        warnings.warn(
                            f"{r.path.name}: {r.shortfall} samples short of the plan",
                            stacklevel=2,
                        )
            active = still
            out *= master
            yield out
    finally:
        for r in readers.values():
            r.close()


def _speed_ratio(speed: float) -> tuple[int, int]:
    """(up, down) with down/up ≈ speed: the file is the programme resampled by up/down."""
    if not 0.5 <= speed <= 2.0:
        raise ValueError(f"speed {speed} outside [0.5, 2]")
    f = Fraction(speed).limit_denominator(1000)
    return f.denominator, f.numerator


class _StreamResampler:
    """``resample_poly(x, up, down)`` of an arbitrarily long stream, block by block.

    resample_poly commutes with shifting the input by a multiple of ``down`` (the output
    shifts by the same multiple of ``up``), so each output chunk is computed from its input
    span plus a margin wider than the filter's half-length, and matches the one-shot result.
    """

    def __init__(self, up: int, down: int) -> None:
        self.up, self.down = up, down
        max_rate = max(up, down)
        half = 10 * max_rate  # as resample_poly's default design
        self.h = firwin(2 * half + 1, 1.0 / max_rate, window=("kaiser", 5.0))
        self.margin = down * math.ceil((half / up + 2) / down)  # input samples
        self.step = down * max(1, BLOCK // down)  # input samples per output chunk

    def run(self, blocks: Iterable[np.ndarray], n_in: int) -> Iterator[np.ndarray]:
        up, down, margin, step = self.up, self.down, self.margin, self.step
        n_out = -(-n_in * up // down)
        buf = np.zeros(margin, np.float32)
        buf_start = -margin  # input index of buf[0]
        it = iter(blocks)
        exhausted = False
        produced = 0
        pos = 0  # input index of the current chunk (a multiple of down)
        while produced < n_out:
            need = pos + step + margin
            parts = [buf]
            have = buf_start + len(buf)
            while have < need and not exhausted:
                b = next(it, None)
                if b is None:
                    exhausted = True
                else:
                    parts.append(b)
                    have += len(b)
            buf = np.concatenate(parts) if len(parts) > 1 else buf
            seg = buf[pos - margin - buf_start : need - buf_start]
            if len(seg) < step + 2 * margin:
                seg = np.pad(seg, (0, step + 2 * margin - len(seg)))
            y = resample_poly(seg, up, down, window=self.h)
            o0 = margin * up // down
            chunk = y[o0 : o0 + step * up // down]
            take = min(len(chunk), n_out - produced)
            yield chunk[:take].astype(np.float32)
            produced += take
            pos += step
            drop = pos - margin - buf_start
            buf, buf_start = buf[drop:], buf_start + drop


def _file_blocks(
    corpus: _Corpus, items: list[_Item], sr: int, total: int, up: int, down: int
) -> Iterator[np.ndarray]:
    """The clean output signal (after speed), block by block."""
    prog = _programme_blocks(corpus, items, sr, total)
    if up == down:
        return prog
    return _StreamResampler(up, down).run(prog, total)


class _Noise:
    """Seeded Gaussian noise of a given power, white or pink, generated block by block."""

    def __init__(self, kind: str, power: float, seed: int) -> None:
        self.kind = kind
        self.rng = np.random.default_rng([seed, 0x5EED])
        if kind == "pink":
            impulse = np.zeros(1 << 16)
            impulse[0] = 1.0
            gain = float(np.sum(lfilter(_PINK_B, _PINK_A, impulse) ** 2))
            _, self.zi = lfilter(_PINK_B, _PINK_A, self.rng.standard_normal(1 << 14), zi=[0.0] * 3)
        else:
            gain = 1.0
        self.scale = math.sqrt(power / gain)

    def __call__(self, n: int) -> np.ndarray:
        w = self.rng.standard_normal(n)
        if self.kind == "pink":
            w, self.zi = lfilter(_PINK_B, _PINK_A, w, zi=self.zi)
        return (w * self.scale).astype(np.float32)


class _Encoder:
    def __init__(self, path: Path, codec: str, sr: int, bitrate_kbps: int) -> None:
        encoder, fmt, _ = CODECS[codec]
        self.sr = sr
        self.container = av.open(str(path), "w", format=fmt)
        self.stream = self.container.add_stream(encoder, rate=sr, layout="mono")
        if codec in LOSSY:
            self.stream.bit_rate = bitrate_kbps * 1000
        self.pts = 0

    def write(self, x: np.ndarray) -> None:
        frame = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="fltp", layout="mono")
        frame.sample_rate = self.sr
        frame.pts = self.pts
        self.pts += len(x)
        for p in self.stream.encode(frame):
            self.container.mux(p)

    def close(self) -> None:
        for p in self.stream.encode(None):
            self.container.mux(p)
        self.container.close()


# ---------------------------------------------------------------------------------------------
# Public API


def _fmt(x: float) -> str:
    return f"{x:g}".replace("-", "m")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _cached(audio: Path, key: str) -> Broadcast | None:
    tpath = truth_path_for(audio)
    if not (audio.is_file() and tpath.is_file()):
        return None
    try:
        truth = load_truth(tpath)
    except (ValueError, KeyError, TypeError):
        return None
    return Broadcast(audio, tpath, truth) if truth.key == key else None


def build_broadcast(
    corpus: Path,
    out: Path,
    *,
    duration_s: float,
    seed: int,
    snr_db: float | None,
    codec: str,
    bitrate_kbps: int = 64,
    speed: float = 1.0,
    sample_rate: int = 44100,
    noise: str = "pink",
    song_speed: float = 0.0,
    stretch: str = "resample",
    mix: str = "broadcast",
    force: bool = False,
) -> Broadcast:
    """Builds (or reuses from ``out``) one broadcast recording and its ground truth.

    ``song_speed`` > 0 plays every music excerpt at its own random speed within
    ``1 ± song_speed`` (``stretch``: "resample", pitch and tempo together, or "tempo", FFmpeg's
    atempo, pitch kept), on top of ``speed``; ``mix="dj"`` makes a DJ set (music back to back,
    every music-to-music transition an 8-s crossfade).

    ``out`` is a directory; the file name carries the parameters and a key hashing them, the
    generator version and the corpus listing, so ``out`` works as a cache.
    ``duration_s`` is the programme length at normal speed (the file lasts duration_s/speed).
    """
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r} not in {sorted(CODECS)}")
    if noise not in NOISE_KINDS:
        raise ValueError(f"noise {noise!r} not in {NOISE_KINDS}")
    if duration_s <= 0:
        raise ValueError("duration_s must be positive")
    if stretch not in STRETCHES or mix not in MIXES or not 0 <= song_speed < 0.5:
        raise ValueError(f"stretch {stretch!r}, mix {mix!r} or song_speed {song_speed} invalid")
    up, down = _speed_ratio(speed)
    speed_exact = down / up
    bitrate = bitrate_kbps if codec in LOSSY else 0
    corp = _Corpus(Path(corpus))
    params: dict[str, Any] = {
        "duration_s": float(duration_s),
        "seed": int(seed),
        "snr_db": None if snr_db is None else float(snr_db),
        "codec": codec,
        "bitrate_kbps": bitrate,
        "speed": speed_exact,
        "sample_rate": int(sample_rate),
        "noise": noise if snr_db is not None else "none",
    }
    # Only when set, so that the recordings without keep their keys (and caches).
    variant = ""
    if song_speed:
        params.update(song_speed=float(song_speed), stretch=stretch)
        variant += f"-ss{_fmt(100 * song_speed)}{'t' if stretch == 'tempo' else ''}"
    if mix != "broadcast":
        params["mix"] = mix
        variant += f"-{mix}"
    key = hashlib.sha256(
        json.dumps([GENERATOR_VERSION, params, corp.fingerprint()], sort_keys=True).encode()
    ).hexdigest()[:16]
    snr_part = "none" if snr_db is None else _fmt(snr_db)
    stem = (
        f"broadcast-{codec}-{_fmt(duration_s)}s-snr{snr_part}-x{_fmt(speed_exact)}"
        f"{variant}-seed{seed}-{key[:10]}"
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    audio = out / (stem + CODECS[codec][2])
    if not force and (hit := _cached(audio, key)) is not None:
        return hit

    sr = int(sample_rate)
    total = round(duration_s * sr)
    items = _plan(corp, total, sr, np.random.default_rng(seed), STYLES[mix])
    if song_speed:
        _song_speeds(corp, items, sr, song_speed, stretch, seed)
    n_file = -(-total * up // down)

    signal_power: float | None = None
    noise_power: float | None = None
    noise_gen: _Noise | None = None
    if snr_db is not None:
        acc = 0.0
        for b in _file_blocks(corp, items, sr, total, up, down):
            acc += float(np.dot(b.astype(np.float64), b))
        signal_power = acc / n_file
        noise_power = signal_power / 10 ** (snr_db / 10)
        noise_gen = _Noise(noise, noise_power, seed)

    tmp = out / f".{stem}.{os.getpid()}.tmp{CODECS[codec][2]}"
    enc = _Encoder(tmp, codec, sr, bitrate)
    clipped = 0
    written = 0
    try:
        for b in _file_blocks(corp, items, sr, total, up, down):
            if noise_gen is not None:
                b = b + noise_gen(len(b))
            over = np.abs(b) > 1.0
            if over.any():
                clipped += int(over.sum())
                b = np.clip(b, -1.0, 1.0)
            enc.write(b)
            written += len(b)
        enc.close()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    assert written == n_file, (written, n_file)
    os.replace(tmp, audio)

    def db(p: float | None) -> float | None:
        return None if p is None else 10 * math.log10(max(p, 1e-20))

    truth = Truth(
        duration_s=n_file / sr,
        speed=speed_exact,
        snr_db=params["snr_db"],
        codec=codec,
        bitrate_kbps=bitrate,
        segments=_truth_segments(items, sr, up, down),
        sample_rate=sr,
        seed=int(seed),
        noise=params["noise"],
        programme_duration_s=total / sr,
        signal_power_db=db(signal_power),
        noise_power_db=db(noise_power),
        clipped_samples=clipped,
        key=key,
        params=params,
    )
    tpath = truth_path_for(audio)
    _write_json_atomic(tpath, truth.to_json())
    return Broadcast(audio, tpath, truth)


def build_long_mp3(
    corpus: Path,
    out: Path,
    *,
    hours: float,
    seed: int,
    bitrate_kbps: int = 64,
    snr_db: float | None = 10.0,
) -> Broadcast:
    """A realistic programme of ``hours`` hours as MP3 (cached in ``out`` like the others)."""
    return build_broadcast(
        corpus,
        out,
        duration_s=hours * 3600.0,
        seed=seed,
        snr_db=snr_db,
        codec="mp3",
        bitrate_kbps=bitrate_kbps,
    )


# ---------------------------------------------------------------------------------------------
# Repeating an MP3 without re-encoding

_MP3_BITRATES = {
    1: [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320],  # MPEG-1 layer III
    2: [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],  # MPEG-2/2.5 layer III
}
_MP3_RATES = {3: [44100, 48000, 32000], 2: [22050, 24000, 16000], 0: [11025, 12000, 8000]}


@dataclass(frozen=True)
class _Mp3Header:
    mpeg1: bool
    sample_rate: int
    length: int  # bytes of the frame
    mono: bool

    @property
    def samples(self) -> int:
        return 1152 if self.mpeg1 else 576

    @property
    def side_info(self) -> int:
        if self.mpeg1:
            return 17 if self.mono else 32
        return 9 if self.mono else 17


def _mp3_header(data: bytes | memoryview, pos: int) -> _Mp3Header | None:
    if pos + 4 > len(data):
        return None
    b1, b2, b3 = data[pos + 1], data[pos + 2], data[pos + 3]
    if data[pos] != 0xFF or (b1 & 0xE0) != 0xE0 or ((b1 >> 1) & 3) != 1:  # sync, layer III
        return None
    version = (b1 >> 3) & 3
    br_idx, sr_idx = b2 >> 4, (b2 >> 2) & 3
    if version == 1 or br_idx in (0, 15) or sr_idx == 3:
        return None
    mpeg1 = version == 3
    rate = _MP3_RATES[version][sr_idx]
    bitrate = _MP3_BITRATES[1 if mpeg1 else 2][br_idx] * 1000
    pad = (b2 >> 1) & 1
    length = (144 if mpeg1 else 72) * bitrate // rate + pad
    return _Mp3Header(mpeg1, rate, length, (b3 >> 6) == 3)


def _crc16(data: bytes) -> int:
    """CRC-16/ARC, as in the LAME tag."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _lame_tag_crc(frame: bytearray, crc_pos: int) -> int:
    """The LAME tag CRC: over the frame's first 190 bytes, the CRC field taken as zero."""
    b = bytearray(frame[:190].ljust(190, b"\0"))
    b[crc_pos : crc_pos + 2] = b"\0\0"
    return _crc16(bytes(b[:190]))


def repeat_mp3(src: Path, out: Path, times: int, *, verify: bool = True) -> Broadcast:
    """``out`` = ``src`` played ``times`` times back to back, without re-encoding.

    The MP3 frames are concatenated byte for byte; the Xing/Info + LAME header is rewritten
    (frame and byte counts, seek table, tag CRC), so decoders get the exact duration, trim
    the encoder delay once at the start and the padding once at the end. Repeat ``k`` of
    the source's sample ``j`` sits at sample ``k·P + j``, ``P`` = frames·1152 of the source
    (the ~56 ms between repeats is the encoder's padding, marked as silence in the truth).
    ``src`` needs its ``.truth.json``; ``out`` gets one (segments repeated) and is reused if
    it is already there for the same source and count.
    """
    if times < 1:
        raise ValueError("times must be >= 1")
    src, out = Path(src), Path(out)
    src_truth = load_truth(truth_path_for(src))
    key = hashlib.sha256(f"repeat:{src_truth.key}:{times}".encode()).hexdigest()[:16]
    if (hit := _cached(out, key)) is not None:
        return hit

    data = src.read_bytes()
    pos = 0
    if data[:3] == b"ID3":
        size = 0
        for b in data[6:10]:
            size = (size << 7) | (b & 0x7F)
        pos = 10 + size + (10 if data[5] & 0x10 else 0)
    head = _mp3_header(data, pos)
    if head is None:
        raise ValueError(f"{src}: no MPEG layer III frame after the ID3 tag")
    tag = pos + 4 + head.side_info
    if data[tag : tag + 4] not in (b"Xing", b"Info"):
        raise ValueError(f"{src}: no Xing/Info header (needed for gapless repeats)")
    end = len(data) - (128 if data[-128:-125] == b"TAG" else 0)
    audio_start = pos + head.length
    audio = memoryview(data)[audio_start:end]
    n_frames = 0
    p = 0
    while p < len(audio):
        h = _mp3_header(audio, p)
        if h is None:
            raise ValueError(f"{src}: lost frame sync at byte {audio_start + p}")
        n_frames += 1
        p += h.length

    original = bytearray(data[pos:audio_start])
    info = bytearray(original)
    t = tag - pos
    flags = int.from_bytes(info[t + 4 : t + 8], "big")
    if flags & 3 != 3:
        raise ValueError(f"{src}: Xing header without frame and byte counts")
    total_frames = n_frames * times
    total_bytes = len(info) + len(audio) * times
    info[t + 8 : t + 12] = total_frames.to_bytes(4, "big")
    info[t + 12 : t + 16] = total_bytes.to_bytes(4, "big")
    q = t + 16
    if flags & 4:  # seek table: % of the file -> position in 1/256 of the file (CBR: linear)
        info[q : q + 100] = bytes(min(255, i * 256 // 100) for i in range(100))
        q += 100
    if flags & 8:
        q += 4
    lame = q  # LAME extension: music length at +28, music CRC at +32, tag CRC at +34
    if lame + 36 <= len(info) and info[lame : lame + 4] in (b"LAME", b"Lavf", b"Lavc"):
        crc_pos = lame + 34
        if _lame_tag_crc(original, crc_pos) != int.from_bytes(info[crc_pos : crc_pos + 2], "big"):
            warnings.warn(f"{src}: LAME tag CRC did not match before patching", stacklevel=2)
        info[lame + 28 : lame + 32] = total_bytes.to_bytes(4, "big")
        info[crc_pos : crc_pos + 2] = _lame_tag_crc(info, crc_pos).to_bytes(2, "big")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(data[:pos])
        f.write(info)
        for _ in range(times):
            f.write(audio)
    os.replace(tmp, out)

    sr = head.sample_rate
    period = n_frames * head.samples
    content = round(src_truth.duration_s * sr)
    segments: list[Segment] = []
    for k in range(times):
        shift = k * period / sr
        for s in src_truth.segments:
            segments.append(
                Segment(
                    **{
                        **asdict(s),
                        "file_start_s": s.file_start_s + shift,
                        "file_end_s": s.file_end_s + shift,
                    }
                )
            )
        if k < times - 1:
            gap = Segment(
                kind="silence",
                source=None,
                file_start_s=(k * period + content) / sr,
                file_end_s=(k + 1) * period / sr,
                source_start_s=0.0,
                fade_in_s=0.0,
                fade_out_s=0.0,
            )
            segments.append(gap)
    duration = ((times - 1) * period + content) / sr
    truth = Truth(
        **{
            **{f.name: getattr(src_truth, f.name) for f in fields(Truth)},
            "duration_s": duration,
            "programme_duration_s": duration * src_truth.speed,
            "segments": tuple(segments),
            "key": key,
            "repeat_times": times,
            "repeat_period_s": period / sr,
            "params": {**src_truth.params, "repeat_of": src.name, "repeat_times": times},
        }
    )
    tpath = truth_path_for(out)
    _write_json_atomic(tpath, truth.to_json())
    if verify:
        verify_duration(out, duration, tolerance_s=head.samples / sr)
    return Broadcast(out, tpath, truth)


def verify_duration(path: Path, expected_s: float, *, tolerance_s: float = 0.05) -> float:
    """Checks with PyAV that ``path`` says it lasts ``expected_s`` and decodes at both ends.

    Decodes the first seconds and, after a seek, the last ones up to the end of the stream;
    returns the end time of the last decoded frame. Raises ValueError on a mismatch.
    """
    with av.open(str(path)) as c:
        st = c.streams.audio[0]
        meta = (c.duration or 0) / 1e6
        if abs(meta - expected_s) > tolerance_s:
            raise ValueError(f"{path}: container says {meta:.3f} s, expected {expected_s:.3f} s")
        n = 0
        for frame in c.decode(st):
            n += frame.samples
            if n >= 2 * st.rate:
                break
        c.seek(max(0, int((expected_s - 30) * 1e6)))
        last_end = 0.0
        for frame in c.decode(st):
            if frame.pts is not None and frame.time_base is not None:
                last_end = float(frame.pts * frame.time_base) + frame.samples / frame.sample_rate
    # After a seek, timestamps come from the demuxer's estimate: allow one second.
    if abs(last_end - expected_s) > max(tolerance_s, 1.0):
        raise ValueError(f"{path}: decoding ends at {last_end:.3f} s, expected {expected_s:.3f} s")
    return last_end


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.broadcast",
        description="Build a broadcast-style test recording with its ground truth (cached).",
    )
    ap.add_argument("out_dir", type=Path, help="output (cache) directory")
    ap.add_argument("--duration", type=float, default=600.0, help="programme seconds")
    ap.add_argument("--snr", default="none", help="SNR in dB, or 'none' for no noise")
    ap.add_argument("--codec", choices=sorted(CODECS), default="mp3")
    ap.add_argument("--bitrate", type=int, default=64, help="kbit/s (mp3, aac)")
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sample-rate", type=int, default=44100)
    ap.add_argument("--noise", choices=NOISE_KINDS, default="pink")
    ap.add_argument("--corpus", type=Path, default=None, help="default: find_corpus()")
    ap.add_argument("--repeat", type=int, default=1, help="mp3 only: repeat the file N times")
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    a = ap.parse_args(argv)
    snr = None if a.snr.lower() in ("none", "off", "") else float(a.snr)
    corpus = a.corpus or find_corpus()
    t0 = time.monotonic()
    b = build_broadcast(
        corpus,
        a.out_dir,
        duration_s=a.duration,
        seed=a.seed,
        snr_db=snr,
        codec=a.codec,
        bitrate_kbps=a.bitrate,
        speed=a.speed,
        sample_rate=a.sample_rate,
        noise=a.noise,
        force=a.force,
    )
    print(f"built {b.path.name} in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    if a.repeat > 1:
        if a.codec != "mp3":
            ap.error("--repeat needs --codec mp3")
        t0 = time.monotonic()
        name = b.path.stem + f"-x{a.repeat}rep.mp3"
        b = repeat_mp3(b.path, b.path.with_name(name), a.repeat)
        print(f"repeated into {b.path.name} in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    print(b.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
