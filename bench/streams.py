"""How many live streams one songscan server process monitors: `python -m bench.streams`.

A local Icecast (Debian's icecast2) serves one mount, fed in real time by one source client
(PyAV, MP3 at `--bit-rate`, 128 kbit/s by default; 22.05 kHz mono, the synthetic music of the
tests) playing a looped programme: three catalog songs of 30 s, each after 10 s of music not in
the catalog. A songscan app (uvicorn in this process, its listeners in threads) gets N streams
of that mount (N listener connections, N decodes, N recognitions: the same work as N different
stations), a callback receiver on loopback, and runs for `--seconds`. For each N of `--levels`:
the plays expected (songs that started and ended well inside the run, per stream), those
received, the delay of each callback after its song's real end, the process's CPU use and
resident memory. It stops at the first N whose p99 delay is over 15 s or that misses a play.

Everything runs on the same machine (the source client, Icecast, the receiver): the figures
are this machine's, under whatever else runs on it.
"""

from __future__ import annotations

import argparse
import calendar
import json
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tests.api.conftest import build_catalog
from tests.api.music import excerpt, music
from tests.servers import UvicornThread
from tests.streams.radio import CallbackReceiver, Icecast, Piece, SourceClient

from songscan.api.app import create_app

OUT = Path(__file__).parent / "out"
DELAY_LIMIT_S = 15.0


@dataclass(frozen=True)
class Level:
    streams: int
    expected: int
    received: int
    missed: int
    wrong: int
    p50_delay_s: float
    p99_delay_s: float
    cpu_share: float  # CPU seconds of this process per wall second (2.0 = both cores)
    rss_mb: float


def programme(songs: dict[int, np.ndarray], loops: int) -> list[Piece]:
    one = []
    for audio_id in (1, 2, 3):
        one.append(Piece("unknown", music(5000 + audio_id, 10.0)))
        one.append(Piece(f"song{audio_id}", excerpt(songs[audio_id], 0.0, 30.0)))
    return one * loops


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_level(
    base_url: str, app: Any, icecast: Icecast, source: SourceClient, n: int, seconds: float
) -> Level:
    import httpx

    accounts = app.state.accounts
    token = accounts.identity.create_account(plan="enterprise").token
    with CallbackReceiver() as receiver, httpx.Client(base_url=base_url, timeout=60) as http:
        http.post("/setCallbackUrl/", data={"api_token": token, "url": receiver.url()})
        listen_from = time.time()
        for radio_id in range(n):
            body = http.post(
                "/addStream/",
                data={"api_token": token, "url": icecast.url("bench.mp3"), "radio_id": radio_id},
            ).json()
            assert body["status"] == "success", body
        usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        time.sleep(seconds)
        listen_to = time.time()
        usage1, wall1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        time.sleep(30)  # callbacks of plays that ended just before the end
        memory = rss_mb()
        for radio_id in range(n):
            http.post("/deleteStream/", data={"api_token": token, "radio_id": radio_id})
        received = [r for r in receiver.received if "result" in r.body]
    plays = [
        (source.started[i], source.started[i] + p.seconds, f"Song {p.name[4:]}")
        for i, p in enumerate(source.programme[: len(source.started)])
        if p.name.startswith("song")
    ]
    # A play counts when the stream was listened to from 15 s before it to 25 s after it.
    expected = [p for p in plays if p[0] >= listen_from + 15 and p[1] <= listen_to - 25]
    delays, wrong, found = [], 0, 0
    for record in received:
        result = record.body["result"]
        start = calendar.timegm(time.strptime(result["timestamp"], "%Y-%m-%d %H:%M:%S"))
        title = result["results"][0]["title"]
        match = [p for p in plays if abs(p[0] - start) <= 4]
        if not match or match[0][2] != title:
            wrong += 1
            continue
        if match[0] in expected:
            found += 1
            delays.append(record.at - match[0][1])
    cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    ordered = sorted(delays) or [float("nan")]
    return Level(
        streams=n,
        expected=len(expected) * n,
        received=found,
        missed=len(expected) * n - found,
        wrong=wrong,
        p50_delay_s=round(float(np.percentile(ordered, 50)), 2),
        p99_delay_s=round(float(np.percentile(ordered, 99)), 2),
        cpu_share=round(cpu / (wall1 - wall0), 2),
        rss_mb=round(memory, 1),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="4,16,32", help="stream counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=150.0, help="listening time per level")
    parser.add_argument("--bit-rate", type=int, default=128_000)
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="songscan-bench-streams-") as tmp:
        root = Path(tmp)
        (root / "data").mkdir()
        (root / "files").mkdir()
        songs = build_catalog(root / "data", root / "files")
        loops = int(sum(args.seconds + 60 for _ in levels) / 120) + 2
        config = {
            "plans": {"enterprise": {"rate_limit_per_s": 1000, "stream_slots": 10_000}},
            "api": {"url_allow": ["127.0.0.1"], "tmp_dir": str(root)},
            "streams": {"max_streams": 10_000, "probe_s": 0.0},
        }
        app = create_app(root / "data", config)
        report: list[Level] = []
        with Icecast() as icecast, UvicornThread(app) as server:
            source = SourceClient(
                icecast.source_url("bench.mp3"), programme(songs, loops), args.bit_rate
            ).play()
            for n in levels:
                level = run_level(server.base_url, app, icecast, source, n, args.seconds)
                report.append(level)
                print(json.dumps(level.__dict__), flush=True)
                if level.missed or level.wrong or level.p99_delay_s > DELAY_LIMIT_S:
                    break
            source.stop()
    OUT.mkdir(exist_ok=True)
    (OUT / "streams.json").write_text(json.dumps([lv.__dict__ for lv in report], indent=2))


if __name__ == "__main__":
    main()
