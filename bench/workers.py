"""A 1-hour enterprise scan through 2 Celery workers ÷ the same scan on a 2-process pool.

Both over the same shared catalog (PostgreSQL) and index (a Redis Cluster), started on
loopback, so the ratio is the cost of the executor alone: publishing runs on a Redis broker,
the workers reading the media over signed HTTP range requests, JSON results, against
forkserver pool processes reading the local file. A third scan, of the same catalog in an
embedded data dir (SQLite, segment files) on the 2-process pool, gives issue 13's figure:
the scan through the cluster on 2 workers ÷ the embedded scan. Each scan runs `--repeats`
times, the three alternating; the best of each is kept. The results are checked equal.

    python -m bench.workers [--songs 20] [--hours 1] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
from fastapi import FastAPI
from tests.audio import synth_song, write_audio
from tests.servers import UvicornThread, start_postgres, start_redis, start_redis_cluster

from bench.cluster import found_songs
from songscan.api import worker_media
from songscan.config import DEFAULT, RemoteScans
from songscan.scan import scan_file, shutdown_pools

SONG_S = 180.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--songs", type=int, default=20)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="songscan-bench-workers-"))
    with contextlib.ExitStack() as stack:
        postgres = start_postgres()
        stack.callback(postgres.stop)
        cluster = start_redis_cluster()
        stack.callback(cluster.stop)
        broker = start_redis()
        stack.callback(broker.stop)
        env = {
            "SONGSCAN_DATABASE_URL": postgres.create_database(),
            "SONGSCAN_INDEX_URL": f"{cluster.url}?prefix=b{uuid.uuid4().hex[:8]}",
            "SONGSCAN_BROKER_URL": broker.url,
        }
        songs = [synth_song(seed, SONG_S) for seed in range(args.songs)]
        paths = [write_audio(root / f"song{i}.flac", s) for i, s in enumerate(songs)]
        songscan = [sys.executable, "-m", "songscan.cli"]
        for data_dir, backends in ((root / "ingest", env), (root / "embedded", {})):
            subprocess.run(
                [*songscan, "--data", str(data_dir), "add", *map(str, paths)],
                check=True,
                capture_output=True,
                env={**os.environ, **backends},
            )
        n = int(args.hours * 3600 / SONG_S) + 1
        show = write_audio(
            root / "show.flac", np.concatenate([songs[i % len(songs)] for i in range(n)])
        )
        secret = secrets.token_hex(32)
        media_app = FastAPI()
        server = stack.enter_context(UvicornThread(media_app))
        remote = RemoteScans(broker.url, server.base_url, secret)
        worker_media.install(media_app, remote)
        for k in (1, 2):
            log = (root / f"worker{k}.log").open("wb")
            worker = subprocess.Popen(
                [*songscan, "--data", str(root / f"worker{k}"), "worker", "--concurrency", "1"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
            )
            stack.callback(worker.wait)
            stack.callback(worker.terminate)
            deadline = time.monotonic() + 120
            while " ready." not in (root / f"worker{k}.log").read_text(errors="replace"):
                assert worker.poll() is None and time.monotonic() < deadline, "worker down"
                time.sleep(0.1)
        local = replace(
            DEFAULT, catalog_url=env["SONGSCAN_DATABASE_URL"], index_url=env["SONGSCAN_INDEX_URL"]
        ).with_workers(2)
        on_workers = replace(local, remote=remote)
        embedded = DEFAULT.with_workers(2)
        data = root / "node"
        times: dict[str, list[float]] = {"embedded": [], "pool": [], "workers": []}
        results = {}
        for _ in range(args.repeats):
            for name, cfg, data_dir in (
                ("embedded", embedded, root / "embedded"),
                ("pool", local, data),
                ("workers", on_workers, data),
            ):
                started = time.perf_counter()
                result = scan_file(show, data_dir, cfg=cfg)
                times[name].append(time.perf_counter() - started)
                results[name] = replace(result, execution_time_s=0.0)
        shutdown_pools()
        assert results["pool"] == results["workers"], "the results differ"
        assert found_songs(results["pool"]) == found_songs(results["embedded"]), "not embedded's"
        chunks = len(results["pool"].chunks)
        alone, pool, workers = (min(times[k]) for k in ("embedded", "pool", "workers"))
        print(f"{args.hours:g} h of audio, {chunks} chunks, {args.songs} songs in the catalog")
        print(
            f"embedded, 2-process pool: {alone:.2f} s  ({args.hours * 3600 / alone:.0f}x real time)"
        )
        print(f"2-process pool:   {pool:.2f} s  ({args.hours * 3600 / pool:.0f}x real time)")
        print(f"2 Celery workers: {workers:.2f} s  ({args.hours * 3600 / workers:.0f}x real time)")
        print(f"workers / pool: {pool / workers:.2f} of the pool's speed")
        print(f"cluster on 2 workers / embedded: {alone / workers:.2f} of the embedded speed")
        print(f"all runs: {times}")


if __name__ == "__main__":
    main()
