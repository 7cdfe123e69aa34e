"""Every tunable of the recognition engine, in one place.

Units are in the names: `_hz`, `_s` (seconds), `_ms`, `_frames` (STFT hops), `_bins` (FFT bins),
`_steps` (log-frequency steps of `log_step`, i.e. 1 % each by default).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class FingerprintConfig:
    sample_rate_hz: int = 8000
    n_fft: int = 1024
    hop: int = 256
    min_freq_hz: float = 120.0
    max_freq_hz: float = 3700.0
    # Peak picking: a peak is the maximum of its neighbourhood and stands above the local level.
    peak_time_radius_frames: int = 4
    peak_freq_radius_bins: int = 12
    # Density: the strongest peaks per second survive (reference vs query side).
    ref_peaks_per_s: float = 14.0
    query_peaks_per_s: float = 28.0
    # Pairing (target zone): anchor -> the next `fanout` peaks within these bounds.
    ref_fanout: int = 4
    query_fanout: int = 10
    # Triplets (anchor + two of its next targets) find candidates in the index; pairs verify.
    ref_triplet_fanout: int = 4
    query_triplet_fanout: int = 8
    speed_triplet_fanout: int = 6
    # The speed pass's far speeds (beyond +-3 %) look up fewer triplets: those of the strongest
    # peaks only, at most this many per second (the ones a reference most likely has too),
    # with this fanout. Set from the benchmark: every chunk of the +-8 % recordings found at
    # 10/s and 3; at 7/s 3 of 99 lost; the speed pass costs about what it did at +-3 %.
    far_speed_peaks_per_s: float = 10.0
    far_speed_triplet_fanout: int = 3
    max_dt_frames: int = 63
    max_df_steps: int = 100
    # Hash frequencies are quantised on a log scale: a speed change (pitch and tempo together)
    # by a factor a shifts every quantised frequency by log(a)/log(1 + log_step) steps and keeps
    # their differences, so a query can be re-hashed for a few candidate speeds without a new FFT.
    log_step: float = 0.01

    @property
    def frames_per_s(self) -> float:
        return self.sample_rate_hz / self.hop

    def frames_to_s(self, frames: float) -> float:
        return frames * self.hop / self.sample_rate_hz


@dataclass(frozen=True)
class Speed:
    """A playback speed that a query is re-hashed for, in log steps of `log_step`: the tempo
    is `speed_factor(tempo_steps)` times the reference's, the pitch `pitch_steps` steps higher
    (the same number when pitch and tempo change together, as on a turntable; 0 under key
    lock, a time-stretch that keeps the pitch)."""

    tempo_steps: int = 0
    pitch_steps: int = 0


NOMINAL = Speed()


@dataclass(frozen=True)
class MatchConfig:
    # A candidate needs this many distinct query anchors with time-aligned hits. Set from the
    # benchmark: music that is not in the catalog reaches about 10 (shared drum loops, motifs).
    min_aligned_hits: int = 12
    # A weaker candidate counts only where the neighbouring chunk plays the same song on at a
    # consistent position (a song that starts or ends inside a chunk leaves less evidence).
    weak_aligned_hits: int = 7
    # Offsets within this many frames of the best one count as aligned (timing jitter).
    offset_tolerance_frames: int = 1
    # Hits at which the score reaches 100.
    full_score_hits: int = 40
    # Speeds tried when nothing matches at the nominal speed, as steps of
    # FingerprintConfig.log_step (1 % each by default): pitch and tempo together (radio plays
    # songs a few % fast, PAL TV 4.17 %, a turntable's pitch fader +-8 %) ...
    speed_steps: tuple[int, ...] = (1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8, -8)
    # ... and tempo alone, pitch kept (key lock: DJ software, time-stretched programmes).
    key_lock_steps: tuple[int, ...] = (1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6, 7, -7, 8, -8)
    # The speed pass looks up the triplets of the near speeds (+-3 %, which radio and the
    # existing recordings need) with every peak of the query, and of the far ones with the
    # strongest (see FingerprintConfig.far_speed_peaks_per_s), all at once.
    near_speed_steps: tuple[int, ...] = (1, -1, 2, -2, 3, -3)
    # Key lock keeps every frequency, so a tempo a step off still hashes most triplets alike
    # (their frame steps move by under a frame): the triplets are looked up at every third
    # key-lock step only, and a nominee is verified at the steps either side of its own.
    key_lock_lookup_steps: tuple[int, ...] = (2, -2, 5, -5, 8, -8)
    max_candidates: int = 3
    # Tracks whose pairs are checked: the ones with the most aligned triplet hits, with at least
    # this many (one hit is aligned with nothing: any track has one by chance), at the nominal
    # speed and in the speed pass. (Under heavy noise a song's chunk may keep a single one; the
    # scan's neighbour checks find such chunks from the chunks around them.)
    max_nominees: int = 10
    min_nominee_hits: int = 2
    # Postings gathered per lookup at most; beyond it the commonest hashes are left out. Bounds
    # time and memory per chunk on a large index (a small one never reaches it). With 100k
    # tracks, 200k scanned 20 % slower and found fewer chunks under noise (85 against 91 of 99
    # at 0 dB): the rarest hashes say the most about which song plays.
    max_postings_per_lookup: int = 70_000
    # The same for the speed pass's one lookup of every speed step's triplets (with 100k
    # tracks, 45k lost 1 chunk of 96 played 3 % fast).
    max_speed_postings_per_lookup: int = 65_000
    # A second song in the same chunk must reach this share of the best song's hits.
    secondary_min_share: float = 0.25
    # Another position of the same song (a repeated passage) is kept as an alternative when it
    # reaches this share of the best position's hits (and weak_aligned_hits); continuity
    # across chunks decides.
    repeat_min_share: float = 0.5
    max_alternatives: int = 6
    # Positions with at least this share of the best evidence count as the same audio.
    repeat_tie_share: float = 0.9
    # A chunk's song position may follow the previous chunk's within this tolerance.
    continuity_tolerance_s: float = 1.5
    # A song followed from a neighbouring chunk at its predicted position needs this many times
    # the coinciding peaks it has at positions these many frames either side (and at least
    # min_aligned_hits). Uneven shifts, so that a beat or bar of repetition is not all of them.
    follow_min_ratio: float = 2.0
    follow_null_shifts_frames: tuple[int, ...] = (7, 13, 23, 37, 53)
    # A neighbour's song going on at the very place the neighbour predicts (a crossfade's other
    # song) needs this many aligned pair hits there, the line allowed to move this many frames.
    continuation_min_hits: int = 5
    continuation_slack_frames: int = 1
    # ... counting only the hits within this many seconds of the neighbour's chunk
    continuation_reach_s: float = 6.0

    @property
    def speeds(self) -> tuple[Speed, ...]:
        """Every speed a match may be verified at: pitch and tempo together, then key lock."""
        return tuple(Speed(k, k) for k in self.speed_steps) + tuple(
            Speed(k, 0) for k in self.key_lock_steps
        )

    @property
    def near_lookup_speeds(self) -> tuple[Speed, ...]:
        """The speeds whose triplets the speed pass looks up with every peak of the query."""
        return tuple(Speed(k, k) for k in self.near_speed_steps)

    @property
    def far_lookup_speeds(self) -> tuple[Speed, ...]:
        """The speeds whose triplets the speed pass looks up with the strongest peaks."""
        near = set(self.near_speed_steps)
        return tuple(Speed(k, k) for k in self.speed_steps if k not in near) + tuple(
            Speed(k, 0) for k in self.key_lock_lookup_steps
        )


@dataclass(frozen=True)
class ScanConfig:
    chunk_s: float = 12.0
    # A final chunk shorter than this is not recognised (nor billed).
    min_final_chunk_s: float = 3.0
    standard_max_s: float = 25.0
    # A standard clip shorter than this is error 300, too short to fingerprint (nothing under
    # 1.25 s matched a clean catalog song in tests; 1.5 s sometimes, 2 s always).
    min_clip_s: float = 1.0
    workers: int = 0  # 0: one per core
    # A scan's units of work: runs of at most this many consecutive chunks (decoded in one pass).
    max_chunks_per_unit: int = 25
    # Decoding restarts this early before a segment so that decoder and resampler settle.
    preroll_s: float = 2.0


@dataclass(frozen=True)
class MediaLimits:
    """What the engine accepts, checked from the file's header before anything is decoded
    (`[media]` in songscan.toml)."""

    # Recordings are sampled at 8 kHz or more: a lower rate is a lying header or no recording,
    # and resampling it to the engine's rate would cost thousands of times its size.
    min_sample_rate_hz: int = 4000
    # The least a compressed stream averages (speech codecs 4.75 kbps and up): a duration its
    # size cannot hold at this rate is a lying header, and what it can hold is planned instead.
    # PCM is exact: its size at its own rate.
    min_bitrate_bps: int = 2000
    # A reference track (`songscan add`, `/upload/`) may be this long at most.
    max_reference_s: float = 4 * 3600.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MediaLimits:
        section = config.get("media", {})
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in section.items():
            if key not in types:
                raise ConfigError(f"[media]: unknown key {key!r} (known: {', '.join(types)})")
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not numeric or value <= 0 or (types[key] == "int" and not isinstance(value, int)):
                raise ConfigError(f"[media].{key}: expected a positive {types[key]}, got {value!r}")
            values[key] = value
        return cls(**values)


@dataclass(frozen=True)
class RemoteScans:
    """An API node's enterprise scans run on Celery workers (`songscan.distributed`): the
    broker they share, where the workers fetch a scan's media from this node, and the secret
    that signs those fetches."""

    broker_url: str
    node_url: str  # this node's base URL, as its workers reach it (http://HOST:PORT)
    media_secret: str = field(repr=False)
    # A run a worker took but did not acknowledge (the worker died) is delivered again after
    # this long: longer than any run takes.
    visibility_timeout_s: float = 900.0
    # A scan whose runs are not all back by then fails (error 100); its media URLs expire then.
    scan_timeout_s: float = 3600.0


@dataclass(frozen=True)
class EngineConfig:
    fingerprint: FingerprintConfig = field(default_factory=FingerprintConfig)
    match: MatchConfig = field(default_factory=MatchConfig)
    scan: ScanConfig = field(default_factory=ScanConfig)
    limits: MediaLimits = field(default_factory=MediaLimits)
    # Where the catalog's tracks live: None is catalog.sqlite in the data directory, else the
    # database URL of the settings (pool workers open the catalog from this).
    catalog_url: str | None = None
    # Its index: None is the segment files in the data directory, else a redis-cluster:// URL.
    index_url: str | None = None
    # Where a scan's runs of chunks go: None is this host (one process or the pool).
    remote: RemoteScans | None = None

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], catalog_url: str | None = None, index_url: str | None = None
    ) -> EngineConfig:
        """The engine's settings with songscan.toml's `[media]` section applied."""
        return cls(
            limits=MediaLimits.from_config(config), catalog_url=catalog_url, index_url=index_url
        )

    def with_workers(self, workers: int) -> EngineConfig:
        return replace(self, scan=replace(self.scan, workers=workers))


DEFAULT = EngineConfig()


def speed_factor(step: int, log_step: float = DEFAULT.fingerprint.log_step) -> float:
    """The playback speed that shifts quantised frequencies by `step` log steps."""
    return math.exp(step * math.log1p(log_step))
