"""How many live streams one songscan server monitors: `python -m bench.streams`.

A local Icecast (Debian's icecast2, its client limit raised to the streams asked for) serves
one mount. Its source is one small process of its own that sends a pre-encoded MP3 file (128
kbit/s CBR by default; 22.05 kHz mono, the synthetic music of the tests) by HTTP PUT, paced by
bytes in real time: it costs next to no CPU and keeps time exactly, so the ground truth (when
each piece played) is the send start plus the piece's place in the file. The programme loops
three catalog songs of 30 s, each after 10 s of music not in the catalog.

The server is `songscan serve` (a process per core, `--workers`, as deployed: the streams
split between the worker processes by their fair share), over a data directory with the
catalog of the tests. For each N of `--levels` it gets N streams of that mount (N listener
connections, N decodes, N recognitions: the same work as N different stations) and a callback
receiver on loopback, and runs for `--seconds`. For each N: the plays expected (songs that
started and ended well inside the run, per stream), those received, the delay of each callback
after its song's real end, the CPU of the server's processes, of the source and of Icecast (in
cores: CPU seconds per wall second), and the server's resident memory sampled through the run
(first sample after a minute, the last, and its slope in MB a minute over the level's second
half). It stops at the first N whose p99 delay is over 15 s or that misses a play.

`--costs` measures instead, in this process, what one stream costs the server: decoding the
MP3 in the listener's way (CPU ms per second of audio) and recognising one 12-s window with its
4-s head check (CPU ms per window).
"""

from __future__ import annotations

import argparse
import calendar
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tests.api.conftest import build_catalog
from tests.api.music import RATE, excerpt, music
from tests.servers import free_port
from tests.streams.radio import CallbackReceiver, Icecast, Piece, encoded, icecast_put

OUT = Path(__file__).parent / "out"
DELAY_LIMIT_S = 15.0
TAIL_S = 30.0  # after a level's listening time: callbacks of plays that ended just before
RSS_EVERY_S = 10.0
SEND_EVERY_S = 0.1  # the source sends the file in slices of this much audio


@dataclass(frozen=True)
class Level:
    streams: int
    expected: int
    received: int
    missed: int
    wrong: int
    p50_delay_s: float
    p99_delay_s: float
    max_delay_s: float
    server_cores: float  # CPU seconds of the server's processes per wall second
    source_cores: float
    icecast_cores: float
    rss_1min_mb: float  # the server's processes, a minute into the level
    rss_end_mb: float
    rss_by_minute_mb: list[float]  # sampled each minute of the level
    rss_slope_mb_per_min: float  # least-squares slope of the samples of the level's second half


def programme(songs: dict[int, np.ndarray], loops: int) -> list[Piece]:
    one = []
    for audio_id in (1, 2, 3):
        one.append(Piece("unknown", music(5000 + audio_id, 10.0)))
        one.append(Piece(f"song{audio_id}", excerpt(songs[audio_id], 0.0, 30.0)))
    return one * loops


# -- the source: one process sending the file in real time -------------------------------------
def feed(port: int, mount: str, path: str, bytes_per_s: float, started: Any) -> None:
    """Send the file at `path` to Icecast's `mount` by HTTP PUT, `bytes_per_s` (the CBR rate),
    in slices of `SEND_EVERY_S`; `started.value` is set to the time the first byte went."""
    data = Path(path).read_bytes()
    with icecast_put(port, mount, "audio/mpeg") as sock:
        step = int(bytes_per_s * SEND_EVERY_S)
        t0 = time.time()
        started.value = t0
        for k, lo in enumerate(range(0, len(data), step)):
            ahead = t0 + k * SEND_EVERY_S - time.time()
            if ahead > 0:
                time.sleep(ahead)
            sock.sendall(data[lo : lo + step])


class Source:
    """`feed` in a process of its own (spawned: nothing of this process's threads)."""

    def __init__(self, icecast: Icecast, mount: str, path: Path, bit_rate: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.started = ctx.Value("d", 0.0)
        self.proc = ctx.Process(
            target=feed,
            args=(icecast.port, mount, str(path), bit_rate / 8, self.started),
            daemon=True,
        )

    def __enter__(self) -> Source:
        self.proc.start()
        deadline = time.monotonic() + 30
        while not self.started.value:
            if not self.proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the source process did not start")
            time.sleep(0.05)
        time.sleep(1.0)  # the mount is up once the first slices reached Icecast
        return self

    @property
    def t0(self) -> float:
        return float(self.started.value)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.join(10)


# -- the server: `songscan serve` ----------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def session_usage(session: int) -> tuple[float, float]:
    """(CPU seconds, resident MB) of the live processes of a session (a process tree started
    with `start_new_session`)."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    cpu = rss = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        got = _stat_fields(int(entry))
        if got is None or int(got[3]) != session:  # field 6: the session id
            continue
        cpu += (int(got[11]) + int(got[12])) / tick  # fields 14, 15: utime, stime
        rss += int(got[21]) * page / 2**20  # field 24: rss in pages
    return cpu, rss


def process_cpu(pid: int) -> float:
    got = _stat_fields(pid)
    return 0.0 if got is None else (int(got[11]) + int(got[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def songscan_server(data: Path, workers: int) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    log = (data / "server.log").open("wb")
    command = [sys.executable, "-m", "songscan.cli", "--data", str(data), "serve"]
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--workers", str(workers)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{base_url}/healthz", timeout=5)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("songscan serve did not start: see server.log") from None
                time.sleep(0.2)
        yield proc, base_url
    finally:
        proc.terminate()
        proc.wait(60)


def create_token(data: Path) -> str:
    command = [sys.executable, "-m", "songscan.cli", "--data", str(data), "accounts", "create"]
    made = subprocess.run(
        [*command, "--plan", "enterprise"], capture_output=True, text=True, check=True
    )
    return made.stdout.strip().splitlines()[-1]


def write_config(data: Path, tmp: Path) -> None:
    (data / "songscan.toml").write_text(
        "[plans.enterprise]\nrate_limit_per_s = 1000\nstream_slots = 100000\n"
        f'[api]\nurl_allow = ["127.0.0.1"]\ntmp_dir = "{tmp}"\n'
        "[streams]\nmax_streams = 100000\nprobe_s = 0.0\n"
    )


# -- one level -------------------------------------------------------------------------------
def run_level(
    server: tuple[subprocess.Popen[bytes], str],
    token: str,
    icecast: Icecast,
    source: Source,
    pieces: list[Piece],
    n: int,
    seconds: float,
) -> Level:
    proc, base_url = server
    rss: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample_rss() -> None:
        while not stop.wait(RSS_EVERY_S):
            rss.append((time.monotonic(), session_usage(proc.pid)[1]))

    with CallbackReceiver() as receiver, httpx.Client(base_url=base_url, timeout=60) as http:
        http.post("/setCallbackUrl/", data={"api_token": token, "url": receiver.url()})
        listen_from = time.time()
        for radio_id in range(n):
            body = http.post(
                "/addStream/",
                data={"api_token": token, "url": icecast.url("bench.mp3"), "radio_id": radio_id},
            ).json()
            assert body["status"] == "success", body
        began = time.monotonic()
        server0, source0, ice0 = (
            session_usage(proc.pid)[0],
            process_cpu(source.proc.pid or 0),
            session_usage(icecast.proc.pid)[0],
        )
        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        time.sleep(seconds)
        listen_to = time.time()
        wall = time.monotonic() - began
        server1, source1, ice1 = (
            session_usage(proc.pid)[0],
            process_cpu(source.proc.pid or 0),
            session_usage(icecast.proc.pid)[0],
        )
        time.sleep(TAIL_S)
        stop.set()
        for radio_id in range(n):
            http.post("/deleteStream/", data={"api_token": token, "radio_id": radio_id})
        received = [r for r in receiver.received if "result" in r.body]
    starts = np.cumsum([0.0] + [p.seconds for p in pieces])[:-1] + source.t0
    plays = [
        (float(start), float(start) + p.seconds, f"Song {p.name[4:]}")
        for start, p in zip(starts, pieces, strict=True)
        if p.name.startswith("song")
    ]
    # A play counts when the stream was listened to from 15 s before it to 25 s after it.
    expected = [p for p in plays if p[0] >= listen_from + 15 and p[1] <= listen_to - 25]
    delays, wrong, found = [], 0, 0
    for record in received:
        result = record.body["result"]
        start = calendar.timegm(time.strptime(result["timestamp"], "%Y-%m-%d %H:%M:%S"))
        title = result["results"][0]["title"]
        match = [p for p in plays if abs(p[0] - start) <= 4 and p[2] == title]
        if match and match[0] in expected:
            found += 1
            delays.append(record.at - match[0][1])
        elif not match and not any(
            p[2] == title and p[0] < listen_from + 15 and p[0] <= start <= p[1] for p in plays
        ):
            wrong += 1  # (a song already playing when its stream was added starts late)
    ordered = sorted(delays) or [float("nan")]
    after_1min = [mb for at, mb in rss if at - began >= 60] or [mb for _, mb in rss] or [0.0]
    return Level(
        streams=n,
        expected=len(expected) * n,
        received=found,
        missed=len(expected) * n - found,
        wrong=wrong,
        p50_delay_s=round(float(np.percentile(ordered, 50)), 2),
        p99_delay_s=round(float(np.percentile(ordered, 99)), 2),
        max_delay_s=round(max(ordered), 2),
        server_cores=round((server1 - server0) / wall, 3),
        source_cores=round((source1 - source0) / wall, 3),
        icecast_cores=round((ice1 - ice0) / wall, 3),
        rss_1min_mb=round(after_1min[0], 1),
        rss_end_mb=round(after_1min[-1], 1),
        rss_by_minute_mb=[round(mb, 1) for at, mb in rss if round(at - began) % 60 < RSS_EVERY_S],
        rss_slope_mb_per_min=rss_slope(
            [(at - began, mb) for at, mb in rss if at - began >= max(60.0, seconds / 2)]
        ),
    )


def rss_slope(samples: list[tuple[float, float]]) -> float:
    """MB a minute: the least-squares slope of (seconds, MB) samples (0 for fewer than 2)."""
    if len(samples) < 2:
        return 0.0
    at, mb = np.array(samples).T
    return round(float(np.polyfit(at / 60, mb, 1)[0]), 1)


# -- --costs ---------------------------------------------------------------------------------
def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def costs(data: Path, songs: dict[int, np.ndarray], bit_rate: int) -> dict[str, float]:
    """CPU of one stream in the server: decode (ms per audio second) and recognition (ms per
    12-s window, its 4-s head check included), over 4 minutes of the programme."""
    from scipy.signal import resample_poly

    from songscan.chunks import Chunk
    from songscan.config import DEFAULT
    from songscan.streams.plays import HEAD_S, WindowRecognizer
    from songscan.streams.source import StreamEnded, decoding

    audio = np.concatenate([p.samples for p in programme(songs, 2)])
    mp3 = encoded(audio, bit_rate=bit_rate)
    seconds = audio.shape[0] / RATE
    slice_n = int(bit_rate / 8 * SEND_EVERY_S)  # as the source sends it
    began = _cpu()
    slices = (mp3[lo : lo + slice_n] for lo in range(0, len(mp3), slice_n))
    with decoding(slices, DEFAULT.fingerprint.sample_rate_hz) as blocks:
        try:
            for _ in blocks:
                pass
        except StreamEnded:
            pass
    decode_ms = (_cpu() - began) / seconds * 1000
    rate = DEFAULT.fingerprint.sample_rate_hz
    samples = resample_poly(audio, rate, RATE).astype(np.float32)
    window_n, head_n = round(DEFAULT.scan.chunk_s * rate), round(HEAD_S * rate)
    recognizer = WindowRecognizer(data, DEFAULT, ("",))
    windows = samples.shape[0] // window_n
    began, matched = _cpu(), 0
    for i in range(windows):
        lo = i * window_n
        window = samples[lo : lo + window_n]
        chunk = Chunk(i, i * DEFAULT.scan.chunk_s, (i + 1) * DEFAULT.scan.chunk_s)
        _, verdict = recognizer.add(chunk, window)
        matched += bool(verdict.songs)
        for song in verdict.songs[:1]:
            recognizer.heard(song.track.id, samples[lo + window_n : lo + window_n + head_n])
    window_ms = (_cpu() - began) / windows * 1000
    per_stream = decode_ms / 1000 + window_ms / 1000 / DEFAULT.scan.chunk_s
    return {
        "decode_ms_per_audio_s": round(decode_ms, 2),
        "window_ms": round(window_ms, 2),
        "windows_matched": matched / windows,
        "cores_per_stream": round(per_stream, 5),
        "streams_per_core": round(1 / per_stream),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="50,100,200", help="stream counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=130.0, help="listening time per level")
    parser.add_argument("--bit-rate", type=int, default=128_000)
    parser.add_argument("--workers", type=int, default=0, help="server processes (0: per core)")
    parser.add_argument("--costs", action="store_true", help="one stream's CPU, in-process")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="songscan-bench-streams-") as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        (root / "files").mkdir()
        songs = build_catalog(data, root / "files")
        if args.costs:
            found = costs(data, songs, args.bit_rate)
            print(json.dumps(found), flush=True)
            (OUT / "streams-costs.json").write_text(json.dumps(found, indent=2))
            return
        write_config(data, root)
        token = create_token(data)
        loops = int(sum(args.seconds + TAIL_S + 30 for _ in levels) / 120) + 2
        pieces = programme(songs, loops)
        audio = np.concatenate([p.samples for p in pieces])
        (root / "programme.mp3").write_bytes(encoded(audio, bit_rate=args.bit_rate))
        workers = args.workers or len(os.sched_getaffinity(0))
        report: list[Level] = []
        with (
            Icecast(clients=max(levels) + 50) as icecast,
            songscan_server(data, workers) as server,
            Source(icecast, "bench.mp3", root / "programme.mp3", args.bit_rate) as source,
        ):
            for n in levels:
                level = run_level(server, token, icecast, source, pieces, n, args.seconds)
                report.append(level)
                print(json.dumps(level.__dict__), flush=True)
                if level.missed or level.wrong or level.p99_delay_s > DELAY_LIMIT_S:
                    break
    (OUT / "streams.json").write_text(json.dumps([lv.__dict__ for lv in report], indent=2))


if __name__ == "__main__":
    main()
