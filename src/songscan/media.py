"""Media in, mono float32 PCM at the engine's rate out, streamed in bounded blocks.

Anything FFmpeg reads (audio or video containers) is decoded through PyAV, downmixed and
resampled by libswresample. Positions are exact: output sample `n` of a decode that starts at
`start_s` is at file time `start_s + n / sample_rate`, whatever the seek landed on, and two
decodes that overlap produce the same samples where they overlap (after a short pre-roll), so a
file can be split between processes with results identical to one pass.
"""

from __future__ import annotations

import errno
import io
import itertools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av
import av.error
import av.filter
import numpy as np

from .config import MediaLimits
from .errors import DecodeFailed, NotARecording

# Decoders that fail on the first packets of a damaged file keep going; so do we, up to a point.
_MAX_DECODE_ERRORS = 50
_SETTLE_FRAMES = 4
# Resampled audio is handed on in blocks of about this many samples (fewer, larger arrays).
_BLOCK_SAMPLES = 16384
# Decoded frames are resampled this many seconds at a time.
_RESAMPLE_BATCH_S = 0.25
_MAX_SETTLE_FRAMES = 500


@dataclass(frozen=True)
class MediaInfo:
    duration_s: float | None
    sample_rate_hz: int
    channels: int
    codec: str
    container: str
    size_bytes: int = 0
    pcm_bit_rate_bps: int = 0  # PCM's exact rate (0 for compressed audio)


# A seekable binary file object read in place of a path: a file served by another host
# (`songscan.distributed.media_link`).
Source = str | os.PathLike[str] | io.IOBase


def _open(path: Source) -> av.container.InputContainer:
    target: str | io.IOBase
    if isinstance(path, str | os.PathLike):
        p = Path(path)
        if not p.is_file():
            raise DecodeFailed(f"not a file: {p.name}" if p.exists() else f"no such file: {p.name}")
        if p.stat().st_size == 0:
            raise DecodeFailed("the file is empty")
        target = str(p)
    else:
        path.seek(0)
        target = path
    try:
        container = av.open(target, mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise DecodeFailed(f"not a media file FFmpeg can read ({_reason(exc)})") from None
    if not isinstance(container, av.container.InputContainer):  # pragma: no cover
        container.close()
        raise DecodeFailed("not a readable media file")
    if not container.streams.audio:
        container.close()
        raise DecodeFailed("the media has no audio stream")
    stream = container.streams.audio[0]
    if not stream.codec_context or (stream.codec_context.channels or 0) < 1:
        container.close()
        raise DecodeFailed("the audio stream has no channels")
    return container


def _size(source: Source) -> int:
    """The file's size in bytes (a file object's position is left where it was)."""
    if isinstance(source, str | os.PathLike):
        return Path(source).stat().st_size
    position = source.tell()
    try:
        return source.seek(0, io.SEEK_END)
    finally:
        source.seek(position)


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return text.split(":")[0].strip() or type(exc).__name__


def sample_index(seconds: float, sample_rate_hz: int) -> int:
    """The first output sample at or after `seconds` (the one time -> sample conversion)."""
    return math.ceil(seconds * sample_rate_hz - 1e-6)


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """What the file holds, without decoding it. Raises DecodeFailed if it holds no audio."""
    with Media(path) as media:
        return media.info()


def checked_probe(path: str | os.PathLike[str], limits: MediaLimits) -> MediaInfo:
    """`checked(probe(path), limits)`."""
    return checked(probe(path), limits)


def checked(info: MediaInfo, limits: MediaLimits) -> MediaInfo:
    """`info`, refusing a sample rate no recording has (before a resampler multiplies it up to
    the engine's rate), with the duration cut to what the file's size can hold: a header may
    claim any duration, and the duration drives the work (and the bill) of a scan."""
    if info.sample_rate_hz < limits.min_sample_rate_hz:
        raise NotARecording(
            f"the audio's sample rate ({info.sample_rate_hz} Hz) is under "
            f"{limits.min_sample_rate_hz} Hz: not a recording songscan can fingerprint"
        )
    bits_per_s = info.pcm_bit_rate_bps or limits.min_bitrate_bps
    size_bound_s = info.size_bytes * 8 / bits_per_s
    if info.duration_s is not None and info.duration_s > size_bound_s:
        info = replace(info, duration_s=size_bound_s)
    return info


class Media:
    """An open media file whose ranges are decoded one after another. Seeks reuse what the
    demuxer learned reading the file, so decoding the parts of a long file in order costs no
    more than one pass (a fresh open seeks by reading from the top in formats without an index,
    such as MP3)."""

    def __init__(self, path: Source) -> None:
        self._path = path
        self._container = _open(path)
        self._fresh = True

    def __enter__(self) -> Media:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def info(self) -> MediaInfo:
        """What the file holds (from its headers: nothing is decoded)."""
        container = self._container
        stream = container.streams.audio[0]
        duration: float | None = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        codec = stream.codec_context.name
        pcm = codec.startswith("pcm_")
        return MediaInfo(
            duration_s=duration,
            sample_rate_hz=stream.codec_context.sample_rate or 0,
            channels=stream.codec_context.channels or 0,
            codec=codec,
            container=container.format.name,
            size_bytes=_size(self._path),
            pcm_bit_rate_bps=(stream.codec_context.bit_rate or 0) if pcm else 0,
        )

    def decode(
        self,
        sample_rate_hz: int,
        *,
        start_s: float = 0.0,
        end_s: float | None = None,
        preroll_s: float = 2.0,
    ) -> Iterator[np.ndarray]:
        """Yield mono float32 blocks at `sample_rate_hz` covering [start_s, end_s) of the file.

        Seeks when `start_s` is past the pre-roll, then decodes from `preroll_s` before
        `start_s` so that the decoder and resampler state match a decode from the top of the
        file. Raises DecodeFailed when the audio cannot be decoded at all.
        """
        seek = start_s > preroll_s
        if not seek and not self._fresh:  # from the top again: as a fresh open does
            self._container.close()
            self._container = _open(self._path)
        self._fresh = False
        container = self._container
        stream = container.streams.audio[0]
        time_base = stream.time_base or Fraction(1, stream.codec_context.sample_rate or 1)
        origin = stream.start_time if stream.start_time is not None else 0
        first_sample = sample_index(start_s, sample_rate_hz)
        end_sample = None if end_s is None else sample_index(end_s, sample_rate_hz)
        settle_frames = 0
        if seek:
            target = origin + int((start_s - preroll_s) / time_base)
            try:
                container.seek(target, stream=stream, backward=True, any_frame=False)
                # The first frames after a seek may carry approximate timestamps (decoder
                # priming): anchor the timeline on a later one.
                settle_frames = _SETTLE_FRAMES
            except av.error.FFmpegError:
                container.seek(0, stream=stream)
        yield from _resampled(
            container,
            stream,
            sample_rate_hz,
            time_base,
            origin,
            first_sample,
            end_sample,
            settle_frames,
        )


def decode(
    path: str | os.PathLike[str],
    sample_rate_hz: int,
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
    preroll_s: float = 2.0,
) -> Iterator[np.ndarray]:
    """`Media.decode` of a file opened for this decode alone."""
    with Media(path) as media:
        yield from media.decode(sample_rate_hz, start_s=start_s, end_s=end_s, preroll_s=preroll_s)


def _resampled(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    rate: int,
    time_base: Fraction,
    origin: int,
    first_sample: int,
    end_sample: int | None,
    settle_frames: int,
) -> Iterator[np.ndarray]:
    resampler: _Resampler | None = None
    batch = av.AudioFifo()
    batch_samples = 0
    position: int | None = None  # output sample index (file timeline) of the next resampled sample
    errors = 0
    decoded_any = False
    history: list[tuple[int, int]] = []
    pending: list[np.ndarray] = []  # resampled samples not yet yielded, from `position` on
    pending_n = 0
    for frame in _frames(container, stream):
        decoded_any = True
        if settle_frames:
            # Some decoders (Vorbis after a block-size change) stamp frames inexactly: after a
            # seek, anchor the timeline on a frame whose timestamp agrees with the two before.
            if frame.pts is not None:
                position_in = _frame_position(frame, time_base, origin, frame.sample_rate)
                history.append((position_in, frame.samples))
            settle_frames -= 1
            if settle_frames > 0 or not _consistent(history[-3:]):
                settle_frames = max(settle_frames, 1)
                if len(history) > _MAX_SETTLE_FRAMES:
                    raise DecodeFailed("the media's timestamps are inconsistent") from None
                continue
            settle_frames = 0
        if resampler is None:
            in_rate = frame.sample_rate
            # Start the resampler on an input sample that falls on the output grid, so that
            # every decode of this file, wherever it starts, samples the same instants.
            period = in_rate // math.gcd(in_rate, rate)
            in_pos = _frame_position(frame, time_base, origin, in_rate)
            skip = (-in_pos) % period
            if skip >= frame.samples:
                continue
            if skip:
                frame = _drop_leading(frame, skip)
                in_pos += skip
            position = in_pos * rate // in_rate
            resampler = _Resampler(frame, rate)
            batch_samples = round(in_rate * _RESAMPLE_BATCH_S)
        # Frames are resampled in batches: one call per frame costs as much as the decoding (the
        # output is the same, the resampler is a stream filter). Positions are counted here, so
        # the FIFO need not check the frames' timestamps.
        frame.pts = None
        try:
            batch.write(frame)
            if batch.samples < batch_samples:
                continue
            outputs = resampler.resample(batch.read())
        except (av.error.FFmpegError, ValueError):
            errors += 1
            if errors > _MAX_DECODE_ERRORS:
                raise DecodeFailed("the audio stream is damaged") from None
            continue
        assert position is not None
        for out in outputs:
            pending.append(_samples(out))
            pending_n += out.samples
        if pending_n >= _BLOCK_SAMPLES:
            block = _trim(np.concatenate(pending), position, first_sample, end_sample)
            position += pending_n
            pending, pending_n = [], 0
            if block is not None:
                yield block
            if end_sample is not None and position >= end_sample:
                return
    if not decoded_any:
        raise DecodeFailed("no audio could be decoded from the media")
    if resampler is not None and position is not None:
        if batch.samples:
            pending.extend(_samples(out) for out in resampler.resample(batch.read()))
        pending.extend(_samples(out) for out in resampler.resample(None))
        if pending:
            block = _trim(np.concatenate(pending), position, first_sample, end_sample)
            if block is not None:
                yield block


class _Resampler:
    """Frames shaped like `template` in, packed mono float32 frames at `rate` out:
    libswresample (its defaults) in a filter graph of one thread. PyAV's `AudioResampler`
    builds the same graph with a thread per core, started and joined on every decode (~0.4 ms
    of a 10-s clip's decode, for nothing: the graph has no filter that uses threads)."""

    def __init__(self, template: av.AudioFrame, rate: int) -> None:
        graph = av.filter.Graph()
        graph.threads = 1
        chain = [
            graph.add(
                "abuffer",
                sample_rate=str(template.sample_rate),
                sample_fmt=template.format.name,
                channel_layout=template.layout.name,
            ),
            graph.add("aformat", sample_rates=str(rate), sample_fmts="flt", channel_layouts="mono"),
            graph.add("abuffersink"),
        ]
        for before, after in itertools.pairwise(chain):
            before.link_to(after)
        graph.configure()
        self._graph = graph

    def resample(self, frame: av.AudioFrame | None) -> list[av.AudioFrame]:
        """The output `frame` completes (all that is left when `frame` is None)."""
        self._graph.push(frame)
        out: list[av.AudioFrame] = []
        while True:
            try:
                pulled = self._graph.pull()
            except av.error.FFmpegError as exc:
                if isinstance(exc, EOFError) or exc.errno == errno.EAGAIN:
                    return out
                raise
            assert isinstance(pulled, av.AudioFrame)
            out.append(pulled)


def _samples(frame: av.AudioFrame) -> np.ndarray:
    """A packed mono float32 frame's samples, without a copy."""
    return np.frombuffer(memoryview(frame.planes[0]), dtype=np.float32, count=frame.samples)


def _trim(samples: np.ndarray, position: int, first: int, end: int | None) -> np.ndarray | None:
    """The part of `samples` (starting at output sample `position`) inside [first, end)."""
    lo = max(first - position, 0)
    hi = samples.shape[0] if end is None else min(end - position, samples.shape[0])
    return samples[lo:hi] if hi > lo else None


def _frames(
    container: av.container.InputContainer, stream: av.AudioStream
) -> Iterator[av.AudioFrame]:
    """Decoded frames; damaged packets are skipped, a file that never decodes is an error."""
    errors = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError:
            errors += 1
            if errors > _MAX_DECODE_ERRORS:
                raise DecodeFailed("the media is damaged beyond decoding") from None
            continue
        try:
            frames = packet.decode()
        except av.error.FFmpegError:
            errors += 1
            if errors > _MAX_DECODE_ERRORS:
                raise DecodeFailed("the audio stream is damaged") from None
            continue
        yield from frames


def _consistent(history: list[tuple[int, int]]) -> bool:
    """Whether each frame starts where the one before ended (positions in input samples)."""
    if len(history) < 3:
        return False
    return all(b[0] == a[0] + a[1] for a, b in itertools.pairwise(history))


def _frame_position(frame: av.AudioFrame, time_base: Fraction, origin: int, in_rate: int) -> int:
    if frame.pts is None:
        return 0
    return round((frame.pts - origin) * time_base * in_rate)


def _drop_leading(frame: av.AudioFrame, n: int) -> av.AudioFrame:
    planes = frame.to_ndarray()
    layout = frame.layout.name
    fmt = frame.format.name
    trimmed = (
        planes[:, n:] if frame.format.is_planar else planes[:, n * len(frame.layout.channels) :]
    )
    out = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(trimmed),  # type: ignore[arg-type]
        format=fmt,
        layout=layout,
    )
    out.sample_rate = frame.sample_rate
    return out


def decode_all(path: str | os.PathLike[str], sample_rate_hz: int, **kwargs: float) -> np.ndarray:
    """The whole (bounded) range as one array: for short clips and reference tracks only."""
    blocks = list(decode(path, sample_rate_hz, **kwargs))
    if not blocks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(blocks)
