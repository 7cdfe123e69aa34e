"""Tiny synthetic "music" for API tests: random chords with harmonics, distinct per seed.

Real enough for the landmark fingerprinter (many sharp spectral peaks that change every few
hundred milliseconds), small enough to make in milliseconds. Rate 22 050 Hz mono, 16-bit WAV.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np

RATE = 22_050


def music(seed: int, seconds: float) -> np.ndarray:
    """`seconds` of random chords (3 notes, 3 harmonics each, 0.15-0.4 s long) plus a little
    noise, as float32 in [-0.8, 0.8]."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE), dtype=np.float32)
    start = 0
    while start < out.size:
        n = min(int(RATE * rng.uniform(0.15, 0.4)), out.size - start)
        t = np.arange(n) / RATE
        block = np.zeros(n)
        for _ in range(3):
            freq = 220 * 2 ** (rng.integers(0, 36) / 12)
            for harmonic in (1, 2, 3):
                block += np.sin(2 * np.pi * freq * harmonic * t + rng.uniform(0, 6.28)) / harmonic
        envelope = np.minimum(1, np.minimum(t * 50, (t[-1] - t) * 50 + 0.01))
        out[start : start + n] = block * envelope
        start += n
    out += rng.normal(0, 0.02, out.size).astype(np.float32)
    return (out / np.abs(out).max() * 0.8).astype(np.float32)


def excerpt(samples: np.ndarray, start_s: float, end_s: float) -> np.ndarray:
    return samples[int(start_s * RATE) : int(end_s * RATE)]


def wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def wav_8k(samples: np.ndarray) -> bytes:
    """`samples` as an 8 kHz WAV (the rate the engine works at): a long file in a small body."""
    from scipy.signal import resample_poly

    resampled = resample_poly(samples, 160, RATE // 50)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes((np.clip(resampled, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def write_wav(path: Path, samples: np.ndarray) -> Path:
    path.write_bytes(wav_bytes(samples))
    return path


def zero_channel_wav() -> bytes:
    """A WAV whose header claims 0 channels (the `wave` module refuses to write one)."""
    data = b"\x00\x01" * 4000
    fmt = (
        (1).to_bytes(2, "little")  # PCM
        + (0).to_bytes(2, "little")  # channels
        + RATE.to_bytes(4, "little")
        + (0).to_bytes(4, "little")  # byte rate
        + (0).to_bytes(2, "little")  # block align
        + (16).to_bytes(2, "little")
    )
    chunks = b"fmt " + len(fmt).to_bytes(4, "little") + fmt
    chunks += b"data" + len(data).to_bytes(4, "little") + data
    return b"RIFF" + (4 + len(chunks)).to_bytes(4, "little") + b"WAVE" + chunks
