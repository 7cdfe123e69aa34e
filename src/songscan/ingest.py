"""Adding reference tracks: decode + fingerprint on all cores, write in batches."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .catalog import (
    Catalog,
    FingerprintedTrack,
    Track,
    TrackMetadata,
    metadata_from_tags,
    posting_frames,
    stored,
)
from .config import EngineConfig, MediaLimits
from .errors import AudioTooLong, DecodeFailed, FingerprintFailed, SongscanError
from .fingerprint import reference_triplets, streamed_reference_peaks
from .media import MediaInfo, checked_probe, decode
from .settings import INGEST_BATCH_POSTINGS
from .workers import init_worker

# A segment is written once a batch holds this many postings (or the input ends); the settings'
# `ingest_batch_postings` (`$SONGSCAN_INGEST_BATCH_POSTINGS`) on the command line.
BATCH_POSTINGS = INGEST_BATCH_POSTINGS


@dataclass
class IngestItem:
    path: Path
    metadata: TrackMetadata | None = None  # overrides what the tags say
    audio_id: int | None = None
    owner: str = ""


@dataclass
class IngestOutcome:
    item: IngestItem
    track: Track | None
    error: SongscanError | None
    audio_s: float = 0.0


def fingerprint_file(item: IngestItem, cfg: EngineConfig) -> FingerprintedTrack:
    """Decode and fingerprint one reference file (runs in a worker process), streamed: memory
    does not grow with the track's length."""
    check_reference(checked_probe(item.path, cfg.limits), cfg.limits)
    rate = cfg.fingerprint.sample_rate_hz
    audio = _Bounded(decode(item.path, rate), cfg.limits, rate)
    peaks = streamed_reference_peaks(audio, cfg.fingerprint)
    found = reference_triplets(stored(peaks), cfg.fingerprint)  # as `Catalog.reindex` would
    if len(found) == 0:
        raise FingerprintFailed("no fingerprint: the audio is too short or silent")
    metadata = metadata_from_tags(item.path)
    if item.metadata is not None:
        metadata = metadata.merged(item.metadata)
    return FingerprintedTrack(
        metadata=metadata,
        hashes=found.hashes,
        frames=posting_frames(found),
        duration_s=audio.samples / rate,
        peaks=peaks,
        audio_id=item.audio_id,
        owner=item.owner,
        source=str(item.path),
    )


def check_reference(info: MediaInfo, limits: MediaLimits) -> None:
    """Refuse, from its (checked) probe, a reference longer than `limits.max_reference_s`."""
    if info.duration_s is not None and info.duration_s > limits.max_reference_s:
        raise _too_long(limits)


def _too_long(limits: MediaLimits) -> AudioTooLong:
    return AudioTooLong(
        f"a reference track may be {limits.max_reference_s:g} s long at most "
        "([media] max_reference_s)"
    )


class _Bounded:
    """A reference's decoded blocks, counted; past `max_reference_s` (a header that claimed
    less) the decode stops with AudioTooLong."""

    def __init__(self, blocks: Iterator[np.ndarray], limits: MediaLimits, rate: int) -> None:
        self._blocks = blocks
        self._limits = limits
        self._max_samples = limits.max_reference_s * rate
        self.samples = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for block in self._blocks:
            self.samples += block.shape[0]
            if self.samples > self._max_samples:
                raise _too_long(self._limits)
            yield block


def _work(args: tuple[IngestItem, EngineConfig]) -> FingerprintedTrack | SongscanError:
    item, cfg = args
    try:
        return fingerprint_file(item, cfg)
    except SongscanError as exc:
        return exc
    except Exception as exc:  # a worker must report, never die, on one bad file
        return DecodeFailed(f"cannot read {item.path.name}: {type(exc).__name__}")


def ingest(
    catalog: Catalog,
    items: Iterable[IngestItem],
    cfg: EngineConfig,
    *,
    workers: int = 0,
    on_done: Callable[[IngestOutcome], None] | None = None,
    vet: Callable[[FingerprintedTrack], None] | None = None,
    batch_postings_max: int = BATCH_POSTINGS,
) -> list[IngestOutcome]:
    """Fingerprint `items` (in parallel) and add them to `catalog` in batches (a segment once a
    batch holds `batch_postings_max` postings), in input order. `vet` sees each fingerprinted
    track before it is written: it may change its audio_id, or raise a SongscanError that
    becomes the item's outcome (a duplicate, say)."""
    items = list(items)
    outcomes: list[IngestOutcome] = []
    batch: list[tuple[IngestItem, FingerprintedTrack]] = []
    batch_postings = 0

    def flush() -> None:
        nonlocal batch, batch_postings
        tracks = catalog.add([fp for _, fp in batch])
        for (item, fp), track in zip(batch, tracks, strict=True):
            outcome = IngestOutcome(item, track, None, fp.duration_s)
            outcomes.append(outcome)
            if on_done:
                on_done(outcome)
        batch, batch_postings = [], 0

    for item, result in zip(items, _fingerprints(items, cfg, workers), strict=True):
        if vet is not None and not isinstance(result, SongscanError):
            try:
                vet(result)
            except SongscanError as exc:
                result = exc
        if isinstance(result, SongscanError):
            outcome = IngestOutcome(item, None, result)
            outcomes.append(outcome)
            if on_done:
                on_done(outcome)
            continue
        batch.append((item, result))
        batch_postings += result.hashes.shape[0]
        if batch_postings >= batch_postings_max:
            flush()
    if batch:
        flush()
    return outcomes


def _fingerprints(
    items: list[IngestItem], cfg: EngineConfig, workers: int
) -> Iterator[FingerprintedTrack | SongscanError]:
    n = workers or os.cpu_count() or 1
    if n <= 1 or len(items) <= 1:
        for item in items:
            yield _work((item, cfg))
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(n, len(items)), mp_context=ctx, initializer=init_worker
    ) as pool:  # its processes end if this one is killed (`songscan.workers`)
        yield from pool.map(_work, [(item, cfg) for item in items], chunksize=1)
