"""Synthesised music for tests: reproducible, distinct per seed, written with PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

RATE = 22050


def synth_song(seed: int, seconds: float, rate: int = RATE) -> np.ndarray:
    """A 'song': notes of random pitch and length with harmonics and envelopes, plus a beat."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    out = np.zeros(n, dtype=np.float64)
    t0 = 0
    while t0 < n:
        length = int(rng.uniform(0.12, 0.5) * rate)
        for _ in range(rng.integers(1, 4)):  # a chord of 1-3 notes
            f = 110.0 * 2 ** (rng.integers(0, 36) / 12)
            t = np.arange(min(length, n - t0)) / rate
            env = np.exp(-t * rng.uniform(2, 8))
            tone = sum(np.sin(2 * np.pi * f * k * t) / k for k in (1, 2, 3))
            out[t0 : t0 + t.shape[0]] += env * tone * rng.uniform(0.2, 0.5)
        t0 += length
    beat = int(rate * 60 / rng.uniform(90, 140))
    for start in range(0, n, beat):
        m = min(n - start, 800)
        out[start : start + m] += rng.normal(0, 0.3, m) * np.exp(-np.arange(m) / 150)
    return (0.3 * out / np.max(np.abs(out))).astype(np.float32)


def write_audio(
    path: Path, samples: np.ndarray, rate: int = RATE, codec: str | None = None
) -> Path:
    """Write mono float samples as FLAC, WAV, MP3 or Ogg/Opus (by suffix)."""
    codec = codec or {".flac": "flac", ".wav": "pcm_s16le", ".mp3": "libmp3lame"}[path.suffix]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")  # type: ignore[call-overload]
        if codec == "libmp3lame":
            stream.bit_rate = 96000
        fmt = stream.codec_context.format.name
        block = 4096
        for i in range(0, samples.shape[0], block):
            part = samples[i : i + block]
            if fmt == "s16":
                frame = av.AudioFrame.from_ndarray(
                    (np.clip(part, -1, 1) * 32767).astype(np.int16)[None, :],
                    format="s16",
                    layout="mono",
                )
            else:
                frame = av.AudioFrame.from_ndarray(
                    part.astype(np.float32)[None, :], format="fltp", layout="mono"
                )
                if fmt != "fltp":
                    frame = av.AudioFrame.from_ndarray(
                        (np.clip(part, -1, 1) * 32767).astype(np.int16)[None, :],
                        format="s16p" if fmt == "s16p" else "s16",
                        layout="mono",
                    )
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
