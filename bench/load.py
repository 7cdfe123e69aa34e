"""Load on a real `songscan serve`: standard recognitions under concurrency, enterprise scans.

`python -m bench.load` (issue #4 item 8):

1. a fresh data dir (`bench/out/load-data`): `songscan add` of the corpus's reference tracks,
   a `songscan.toml` that lifts the enterprise plan's rate limit (`[plans.enterprise]
   rate_limit_per_s`), one account on the enterprise plan (`songscan accounts create --plan
   enterprise`) credited with enough requests (`songscan accounts credit`);
2. test clips: ~10 s MP3s (128 kbit/s stereo 44.1 kHz) cut from reference tracks at a seeded
   position, with white noise at 10 dB SNR, so that each one matches a known catalog track;
3. for each worker count (`--workers`, default 0: `songscan serve` as a user starts it, one
   worker process per core): `songscan serve` as a subprocess on a free loopback port, warmed
   up, then
   - standard recognition (`POST /`, multipart `file` + `api_token`) from an async httpx load
     generator at each concurrency level (`--levels`, default 1, 16, 64: closed loop, every
     client sends its next request when the previous answer is in), bounded by time and count;
     then at each arrival rate (`--rates`, default 60/s: open loop, Poisson arrivals, each
     request sent at its scheduled time whatever the server's backlog, its latency counted
     from that time); requests/s, latency percentiles, errors (HTTP status != 200 or `status`
     != success) and wrong answers (not the clip's track); CPU seconds of the server's process
     tree (split: event-loop threads / worker threads) and of the load generator;
   - enterprise scans of the 1-hour MP3 (`bench/broadcast.py`'s `build_long_mp3`): one upload
     alone, then `--concurrent-scans` uploads at once, against `songscan scan` of the same file
     (a CLI subprocess, process start included) timed in the same run before and after;
4. with `--baseline REV`: the same standard levels, before the primary run, on a server
   running REV's `src/` (`git archive`, its own PYTHONPATH, the same interpreter, data dir and
   clips), and a table of this revision against it: ratios from one run;
5. with `--profile`: cProfile of the standard request's work (`Recognition.run`, what a server
   worker thread does) in this process, and a time breakdown of its stages.

Results go to stdout, `bench/out/load.json` and the "Load" section of BENCHMARKS.md.
The load generator runs on the same 2 cores as the server: its CPU share is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import hashlib
import io
import json
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np

from . import broadcast
from .report import OUT, machine, pct, process_tree, update_section, verdict

ROOT = Path(__file__).resolve().parent.parent
CLIP_S = 10.0
CLIP_SNR_DB = 10.0
CLIP_SR = 44100
CLIP_KBPS = 128
N_CLIPS = 24
TICKS = os.sysconf("SC_CLK_TCK")

TARGET_RPS = 150.0  # standard recognitions/s at 64 closed-loop clients, with 0 errors
TARGET_CPU_MS = 10.0  # server CPU per standard request
TARGET_OPEN_RATE = 60.0  # Poisson arrivals/s ...
TARGET_OPEN_P99_MS = 100.0  # ... answered within this at the 99th percentile
TARGET_RATIO = 80.0  # API scan x RT / CLI scan x RT, percent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def songscan_cli() -> str:
    return str(Path(sys.executable).with_name("songscan"))


# ---- setup ----------------------------------------------------------------------------------
def make_data_dir(data: Path, corpus: Path, rate_limit: float) -> dict[str, Any]:
    """A fresh data dir: the reference tracks, the config, one enterprise account."""
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    # Request media in a dir of its own: other songscan processes on the machine never see it.
    (data / "songscan.toml").write_text(
        f'[api]\ntmp_dir = "{data / "tmp"}"\n'
        f"[plans.enterprise]\nrate_limit_per_s = {rate_limit:g}\n"
    )
    (data / "tmp").mkdir()
    cli = songscan_cli()
    t0 = time.perf_counter()
    subprocess.run(
        [cli, "--data", str(data), "add", str(corpus / "reference")],
        check=True,
        capture_output=True,
        text=True,
    )
    add_s = time.perf_counter() - t0
    out = subprocess.run(
        [cli, "--data", str(data), "accounts", "create", "--plan", "enterprise"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = out.strip().splitlines()
    token = lines[-1].strip()
    account = lines[0].split()[2]  # "created account N (...), plan enterprise"
    credit = subprocess.run(
        [cli, "--data", str(data), "accounts", "credit", account, "2000000", "--note", "bench"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    log(f"data dir {data}: add {add_s:.1f} s; account {account}; {credit}")
    return {"token": token, "account": account, "add_s": add_s}


@dataclass(frozen=True)
class Clip:
    name: str
    body: bytes  # the whole multipart body, built once
    content_type: str
    audio_id: int  # the catalog track it was cut from
    bytes: int


def _encode_mp3(x: np.ndarray, path: Path) -> None:
    """Stereo float samples (2, n) at CLIP_SR to a CBR MP3."""
    with av.open(str(path), "w", format="mp3") as c:
        st = c.add_stream("libmp3lame", rate=CLIP_SR, layout="stereo")
        st.bit_rate = CLIP_KBPS * 1000
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(x, dtype=np.float32), format="fltp", layout="stereo"
        )
        frame.sample_rate = CLIP_SR
        frame.pts = 0
        for p in st.encode(frame):
            c.mux(p)
        for p in st.encode(None):
            c.mux(p)


def _decode_stereo(path: Path, start_s: float, seconds: float) -> np.ndarray:
    n = int(seconds * CLIP_SR)
    res = av.AudioResampler(format="fltp", layout="stereo", rate=CLIP_SR)
    parts, have = [], 0
    with av.open(str(path)) as c:
        for frame in c.decode(audio=0):
            for f in res.resample(frame):
                a = f.to_ndarray()
                parts.append(a)
                have += a.shape[1]
            if have >= int((start_s + seconds) * CLIP_SR):
                break
    x = np.concatenate(parts, axis=1)
    lo = int(start_s * CLIP_SR)
    return x[:, lo : lo + n]


def multipart(fields: dict[str, str], file_name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for k, v in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode())
        out.write(v.encode() + b"\r\n")
    out.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
        "Content-Type: audio/mpeg\r\n\r\n".encode()
    )
    out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def make_clips(corpus: Path, data: Path, token: str, out: Path, seed: int) -> list[Clip]:
    """N_CLIPS 10-second noisy MP3 clips of reference tracks, with their catalog audio_id."""
    from songscan.catalog import Catalog

    catalog = Catalog(data)
    by_name = {Path(t.source or "").name: t for t in catalog.tracks()}
    catalog.close()
    rng = np.random.default_rng(seed)
    names = sorted(n for n, t in by_name.items() if t.duration_s >= CLIP_S + 20)
    picked = rng.choice(names, size=min(N_CLIPS, len(names)), replace=False)
    clip_dir = out / "load-clips"
    clip_dir.mkdir(parents=True, exist_ok=True)
    clips = []
    for name in picked:
        track = by_name[name]
        start = float(rng.uniform(5.0, track.duration_s - CLIP_S - 5.0))
        x = _decode_stereo(corpus / "reference" / name, start, CLIP_S)
        p_sig = float(np.mean(x**2)) or 1e-6
        noise = rng.standard_normal(x.shape).astype(np.float32)
        x = x + noise * np.sqrt(p_sig / 10 ** (CLIP_SNR_DB / 10))
        x = np.clip(x, -1.0, 1.0)
        path = clip_dir / f"{Path(name).stem}-{start:.0f}s.mp3"
        _encode_mp3(x, path)
        data_bytes = path.read_bytes()
        body, ctype = multipart({"api_token": token}, path.name, data_bytes)
        clips.append(Clip(path.name, body, ctype, track.audio_id, len(data_bytes)))
    log(f"{len(clips)} clips of {CLIP_S:g} s, {np.mean([c.bytes for c in clips]) / 1e3:.0f} kB")
    return clips


# ---- the server -----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(
        self,
        data: Path,
        workers: int,
        log_path: Path,
        floor_mode: str | None = None,
        src: Path | None = None,
    ) -> None:
        """`workers` 0: none given, `songscan serve`'s default (one per core). `floor_mode`:
        instead of songscan, `bench.floor_app` in that mode on Uvicorn as `serve` runs it.
        `src`: songscan's code from that `src/` directory (a baseline revision's)."""
        from songscan.api.serve import default_workers

        self.port = free_port()
        self.workers = workers or default_workers()
        self.leaked: list[str] = []
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        env = None
        if floor_mode is None:
            cli = [songscan_cli()]
            if src is not None:
                cli = [sys.executable, "-m", "songscan.cli"]
                env = {**os.environ, "PYTHONPATH": str(src)}
            cmd = [*cli, "--data", str(data), "serve", "--host", "127.0.0.1"]
            cmd += ["--port", str(self.port)] + (["--workers", str(workers)] if workers else [])
        else:
            cmd = [sys.executable, "-m", "bench.floor_app", str(self.port)]
            env = {**os.environ, "FLOOR_MODE": floor_mode}
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Until /healthz answers and every worker process has finished its start-up."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: see {self.log_path}")
            started = self.log_path.read_text().count("Application startup complete")
            try:
                healthy = httpx.get(self.url + "/healthz", timeout=2.0).status_code == 200
            except httpx.HTTPError:
                healthy = False
            if healthy and started >= self.workers:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the server did not start in {timeout_s} s: see {self.log_path}")

    def cpu_s(self) -> float:
        """CPU seconds (user + system) of the server's live process tree."""
        return tree_cpu_s(self.proc.pid)

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        """SIGTERM, as a service manager stops it; then ends any of its processes that
        outlived it (recorded in `leaked`)."""
        tree = {pid: _start_time(pid) for pid in process_tree(self.proc.pid)}
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 10.0  # a pool's processes take a moment to wind down

        def still_up() -> list[int]:
            return [
                pid
                for pid, started in tree.items()
                if started is not None and _start_time(pid) == started and not _zombie(pid)
            ]

        while still_up() and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in still_up():
            self.leaked.append(_cmdline(pid)[:120])
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        self._log.close()


def _zombie(pid: int) -> bool:
    """An exited process not yet reaped by its parent (it holds no resources but its entry)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime, stime


def tree_cpu_s(root: int) -> float:
    return sum(_cpu_ticks(p) for p in process_tree(root)) / TICKS


def tree_cpu_split(root: int) -> dict[str, float]:
    """CPU seconds of the tree's processes: their main threads (in the Uvicorn workers, the
    event loop: HTTP parsing, the multipart body, responses, logging) and their other threads
    (the worker threads doing `Recognition.run`; exited threads stay in the process total)."""
    total = main = 0
    for pid in process_tree(root):
        total += _cpu_ticks(pid)
        main += _cpu_ticks_path(f"/proc/{pid}/task/{pid}/stat")
    return {"main_threads": main / TICKS, "other_threads": (total - main) / TICKS}


def _cpu_ticks_path(path: str) -> int:
    try:
        with open(path) as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


# ---- standard recognition load ----------------------------------------------------------------
@dataclass
class Sample:
    started: float
    latency_s: float
    http_status: int
    ok: bool  # HTTP 200 and status success
    correct: bool  # the clip's track
    error: str = ""


async def _one(client: httpx.AsyncClient, url: str, clip: Clip) -> Sample:
    t0 = time.perf_counter()
    try:
        r = await client.post(
            url + "/", content=clip.body, headers={"content-type": clip.content_type}
        )
        lat = time.perf_counter() - t0
        body = r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        return Sample(t0, time.perf_counter() - t0, 0, False, False, type(exc).__name__)
    ok = r.status_code == 200 and isinstance(body, dict) and body.get("status") == "success"
    result = body.get("result") if ok and isinstance(body, dict) else None
    correct = isinstance(result, dict) and result.get("audio_id") == clip.audio_id
    err = "" if ok else f"http {r.status_code}: {r.text[:200]}"
    return Sample(t0, lat, r.status_code, ok, correct, err)


async def closed_loop(
    url: str, clips: list[Clip], clients: int, seconds: float, max_requests: int
) -> tuple[list[Sample], float]:
    """`clients` clients, each sending its next request as soon as it has the previous answer,
    until `seconds` have passed or `max_requests` were sent. Returns the samples and the wall
    time from the first request to the last answer."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(60.0)
    samples: list[Sample] = []
    sent = 0
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        t0 = time.perf_counter()
        deadline = t0 + seconds

        async def worker(k: int) -> None:
            nonlocal sent
            i = k
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                samples.append(await _one(client, url, clips[i % len(clips)]))
                i += clients

        await asyncio.gather(*(worker(k) for k in range(clients)))
        wall = time.perf_counter() - t0
    return samples, wall


async def open_loop(
    url: str, clips: list[Clip], rate: float, seconds: float, seed: int
) -> tuple[list[Sample], float]:
    """Poisson arrivals at `rate` per second for `seconds`: each request starts at its
    scheduled time whatever is still unanswered (an open system, as independent users are),
    and its latency runs from that time, so a generator that falls behind cannot hide the
    queueing (coordinated omission). Returns the samples and the wall time to the last answer."""
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=int(rate * seconds * 2) + 16))
    arrivals = arrivals[arrivals < seconds]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    samples: list[Sample] = []
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0)) as client:
        t0 = time.perf_counter()

        async def arrive(i: int, at: float) -> None:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            sample = await _one(client, url, clips[i % len(clips)])
            scheduled = t0 + at
            sample.latency_s = sample.started + sample.latency_s - scheduled
            samples.append(sample)

        await asyncio.gather(*(arrive(i, float(at)) for i, at in enumerate(arrivals)))
        wall = time.perf_counter() - t0
    return samples, wall


async def warm_up(url: str, clips: list[Clip], clients: int, n: int) -> list[Sample]:
    samples, _ = await closed_loop(url, clips, clients, 120.0, n)
    return samples


def healthz_latency(url: str, n: int = 30) -> float:
    """Median latency of `GET /healthz` over one keep-alive connection, one at a time."""
    lat = []
    with httpx.Client(timeout=30.0) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            client.get(url + "/healthz").raise_for_status()
            lat.append((time.perf_counter() - t0) * 1000)
    return float(np.median(lat))


def summarise(samples: list[Sample], wall: float) -> dict[str, Any]:
    lat = [s.latency_s * 1000 for s in samples]
    errors = [s for s in samples if not s.ok]
    return {
        "requests": len(samples),
        "wall_s": wall,
        "rps": len(samples) / wall if wall else 0.0,
        "ok_rps": sum(s.ok for s in samples) / wall if wall else 0.0,
        "p50_ms": pct(lat, 50),
        "p95_ms": pct(lat, 95),
        "p99_ms": pct(lat, 99),
        "max_ms": max(lat) if lat else None,
        "mean_ms": float(np.mean(lat)) if lat else None,
        "errors": len(errors),
        "error_examples": sorted({e.error for e in errors})[:5],
        "wrong_or_no_match": sum(s.ok and not s.correct for s in samples),
    }


def run_level(
    server: Server,
    clips: list[Clip],
    clients: int,
    seconds: float,
    max_requests: int,
    rate: float | None = None,
    seed: int = 1,
) -> dict[str, Any]:
    """One closed-loop level of `clients`, or with `rate` one open-loop level of Poisson
    arrivals at that rate."""
    others = set(other_benchmarks())
    split0 = tree_cpu_split(server.proc.pid)
    per0 = {pid: _cpu_ticks(pid) for pid in server.pids()}
    cpu0, own0 = server.cpu_s(), time.process_time()
    if rate is None:
        load = closed_loop(server.url, clips, clients, seconds, max_requests)
    else:
        load = open_loop(server.url, clips, rate, seconds, seed)
    samples, wall = asyncio.run(load)
    cpu1, own1 = server.cpu_s(), time.process_time()
    split1 = tree_cpu_split(server.proc.pid)
    per1 = {pid: _cpu_ticks(pid) for pid in per0}
    res = summarise(samples, wall)
    res["clients"] = clients
    res["arrival_rate"] = rate
    res["server_cpu_s"] = cpu1 - cpu0
    res["client_cpu_s"] = own1 - own0
    n = max(res["requests"], 1)
    res["server_cpu_ms_per_request"] = (cpu1 - cpu0) / n * 1000
    res["client_cpu_ms_per_request"] = (own1 - own0) / n * 1000
    res["server_cores"] = (cpu1 - cpu0) / wall
    res["server_cores_per_process"] = sorted(
        ((per1[p] - per0[p]) / TICKS / wall for p in per0), reverse=True
    )
    res["server_cpu_ms_per_request_split"] = {k: (split1[k] - split0[k]) / n * 1000 for k in split0}
    res["client_cores"] = (own1 - own0) / wall
    res["loadavg"] = os.getloadavg()
    res["others"] = sorted(others | set(other_benchmarks()))
    what = f"{clients:>3} clients" if rate is None else f"{rate:g}/s Poisson arrivals"
    log(
        f"  {what}: {res['rps']:.1f} req/s, p50 {res['p50_ms']:.0f} p95 "
        f"{res['p95_ms']:.0f} p99 {res['p99_ms']:.0f} ms, errors {res['errors']}, wrong "
        f"{res['wrong_or_no_match']}; server {res['server_cores']:.2f} cores "
        f"({res['server_cpu_ms_per_request']:.1f} ms/req), client {res['client_cores']:.2f} cores "
        f"({res['client_cpu_ms_per_request']:.1f} ms/req)"
    )
    return res


def standard_levels(
    server: Server,
    clips: list[Clip],
    levels: list[int],
    rates: list[float],
    a: argparse.Namespace,
) -> dict[str, list[dict[str, Any]]]:
    """The closed-loop `levels`, then the open-loop `rates`."""
    return {
        "levels": [run_level(server, clips, n, a.seconds, a.max_requests) for n in levels],
        "open_levels": [
            run_level(server, clips, 0, a.seconds, a.max_requests, rate=r, seed=a.seed)
            for r in rates
        ],
    }


def run_baseline(
    rev: str,
    data: Path,
    workers: int,
    clips: list[Clip],
    levels: list[int],
    rates: list[float],
    a: argparse.Namespace,
    out: Path,
) -> dict[str, Any]:
    """The standard levels on a server running revision `rev`'s code."""
    from .startup import export

    with tempfile.TemporaryDirectory(prefix="songscan-baseline-") as tmp:
        src = export(rev, Path(tmp))
        server = Server(data, workers, out / f"load-baseline-w{workers}.log", src=src)
        base: dict[str, Any] = {"rev": rev, "workers": workers}
        try:
            server.wait_ready()
            log(f"baseline {rev} on {server.url}")
            asyncio.run(warm_up(server.url, clips, 8, 8 * len(clips)))
            base.update(standard_levels(server, clips, levels, rates, a))
        finally:
            server.stop()
    return base


# ---- floors ---------------------------------------------------------------------------------
FLOOR_MODES = {
    "bare": "a bare FastAPI endpoint: reads the body, answers a fixed JSON",
    "decode": "the same, plus the clip written to a temp file and decoded as songscan does "
    "(first 25 s, mono 8 kHz), in a worker thread (at most one per core at once per process, "
    "as songscan's default `concurrent_scans`)",
}


def run_floor(
    data: Path,
    mode: str,
    clips: list[Clip],
    levels: list[int],
    rates: list[float],
    seconds: float,
    max_requests: int,
    seed: int,
    out: Path,
) -> dict[str, Any]:
    """The same load on `bench.floor_app` in `mode` (Uvicorn as `songscan serve` runs it):
    what a request costs at least, before songscan's own work."""
    server = Server(data, 0, out / f"load-floor-{mode}.log", floor_mode=mode)
    floor: dict[str, Any] = {"mode": mode, "server_cmd": " ".join(server.cmd)}
    try:
        server.wait_ready()
        log(f"floor {mode!r} on {server.url}")
        asyncio.run(warm_up(server.url, clips, 8, 4 * len(clips)))
        floor["levels"] = [run_level(server, clips, n, seconds, max_requests) for n in levels]
        floor["open_levels"] = [
            run_level(server, clips, 0, seconds, max_requests, rate=r, seed=seed) for r in rates
        ]
    finally:
        server.stop()
    return floor


# ---- enterprise scans -----------------------------------------------------------------------
def cli_scan(data: Path, mp3: Path) -> dict[str, Any]:
    cmd = [songscan_cli(), "--data", str(data), "scan", str(mp3), "--format", "json"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    body = json.loads(out.stdout)
    return {"wall_s": wall, "matched_chunks": len(body.get("result") or []), "cmd": " ".join(cmd)}


def _stream_file(path: Path, token: str) -> tuple[Any, str, int]:
    """A multipart body for /enterprise streamed from disk (head, file, tail)."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="api_token"\r\n\r\n{token}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: audio/mpeg\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = len(head) + path.stat().st_size + len(tail)

    async def gen() -> Any:
        yield head
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                yield block
        yield tail

    return gen(), f"multipart/form-data; boundary={boundary}", size


async def enterprise_scans(
    url: str, token: str, mp3: Path, n: int, params: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], float]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(1800.0)) as client:

        async def one() -> dict[str, Any]:
            body, ctype, size = _stream_file(mp3, token)
            t0 = time.perf_counter()
            r = await client.post(
                url + "/enterprise",
                params=params or {},
                content=body,
                headers={"content-type": ctype, "content-length": str(size)},
            )
            wall = time.perf_counter() - t0
            js = r.json() if r.status_code == 200 else {}
            return {
                "wall_s": wall,
                "http_status": r.status_code,
                "status": js.get("status"),
                "matched_chunks": len(js.get("result") or []),
                "execution_time": js.get("execution_time"),
                "error": None if js.get("status") == "success" else r.text[:300],
            }

        t0 = time.perf_counter()
        res = await asyncio.gather(*(one() for _ in range(n)))
        return list(res), time.perf_counter() - t0


def run_enterprise(
    server: Server, data: Path, token: str, mp3: Path, duration_s: float, concurrent: int
) -> dict[str, Any]:
    # warm-up: start the scan pools of the server's worker processes
    asyncio.run(enterprise_scans(server.url, token, mp3, 2 * concurrent, {"limit": "50"}))
    res: dict[str, Any] = {"file": mp3.name, "duration_s": duration_s}
    others = set(other_benchmarks())
    cli_a = cli_scan(data, mp3)
    log(f"  CLI scan: {duration_s / cli_a['wall_s']:.0f}x RT ({cli_a['wall_s']:.2f} s)")
    cpu0 = server.cpu_s()
    single, single_wall = asyncio.run(enterprise_scans(server.url, token, mp3, 1))
    res["single"] = {"runs": single, "wall_s": single_wall, "server_cpu_s": server.cpu_s() - cpu0}
    log(f"  API scan alone: {duration_s / single_wall:.0f}x RT ({single_wall:.2f} s)")
    cpu0 = server.cpu_s()
    many, many_wall = asyncio.run(enterprise_scans(server.url, token, mp3, concurrent))
    res["concurrent"] = {
        "n": concurrent,
        "runs": many,
        "wall_s": many_wall,
        "server_cpu_s": server.cpu_s() - cpu0,
    }
    log(
        f"  API {concurrent} scans at once: {duration_s * concurrent / many_wall:.0f}x RT in all "
        f"({many_wall:.2f} s); each {[round(duration_s / r['wall_s']) for r in many]}x"
    )
    cli_b = cli_scan(data, mp3)
    log(f"  CLI scan again: {duration_s / cli_b['wall_s']:.0f}x RT ({cli_b['wall_s']:.2f} s)")
    res["cli"] = [cli_a, cli_b]
    cli_x = duration_s / float(np.mean([cli_a["wall_s"], cli_b["wall_s"]]))
    res["cli_x_rt"] = cli_x
    res["single_x_rt"] = duration_s / single_wall
    res["concurrent_x_rt_each"] = [duration_s / r["wall_s"] for r in many]
    res["concurrent_x_rt_total"] = duration_s * concurrent / many_wall
    res["ratio_single_pct"] = res["single_x_rt"] / cli_x * 100
    res["ratio_concurrent_pct"] = res["concurrent_x_rt_total"] / cli_x * 100
    res["errors"] = sum(r["status"] != "success" for r in [*single, *many])
    res["others"] = sorted(others | set(other_benchmarks()))
    return res


# ---- profile of the standard request's work ---------------------------------------------------
def profile_standard(
    data: Path, token: str, clips: list[Clip], n: int, out: Path
) -> dict[str, Any]:
    """What one server worker thread does per standard request, in this process (CPU time of
    this process, so that other load on the machine does not count)."""
    from songscan import settings
    from songscan.api.app import create_app
    from songscan.api.recognition import RECOGNIZE, Call
    from songscan.media import decode
    from songscan.scan import recognize_clip

    app = create_app(data, settings.load_config(data))
    service = app.state.recognition
    accounts = service.accounts
    tmp = Path(tempfile.mkdtemp(prefix="load-prof-", dir=out))
    try:
        paths = []
        for c in clips:
            p = tmp / c.name
            p.write_bytes((out / "load-clips" / c.name).read_bytes())
            paths.append(p)

        def job(i: int) -> Call:
            p = paths[i % len(paths)]
            fields = {"api_token": token}
            return Call(RECOGNIZE, "POST", fields, p, p.stat().st_size, tmp, "127.0.0.1", 0.0)

        for i in range(len(paths)):  # warm
            service.run(job(i))
        names = (
            "auth+rate",
            "check what is left",
            "recognize_clip",
            "charge",
            "whole run()",
            "decode alone (part of recognize_clip)",
        )
        stages: dict[str, list[float]] = {k: [] for k in names}
        for i in range(n):
            t0 = time.process_time()
            acct = accounts.authenticate(token, "127.0.0.1")
            accounts.check_rate(acct)
            accounts.entitlements(acct)
            t1 = time.process_time()
            accounts.ledger.check_available(acct, 1)  # as `billed_after`, before the work
            t3 = time.process_time()
            recognize_clip(
                paths[i % len(paths)], data, service.engine_config, owners=("", str(acct.id))
            )
            t4 = time.process_time()
            accounts.ledger.charge(acct, 1, RECOGNIZE, 1)  # and after it
            t5 = time.process_time()
            service.run(job(i))
            t6 = time.process_time()
            rate = service.engine_config.fingerprint.sample_rate_hz
            end_s = service.engine_config.scan.standard_max_s
            np.concatenate(list(decode(paths[i % len(paths)], rate, end_s=end_s)))
            t7 = time.process_time()
            times = (t1 - t0, t3 - t1, t4 - t3, t5 - t4, t6 - t5, t7 - t6)
            for k, v in zip(stages, times, strict=True):
                stages[k].append(v * 1000)
        prof = cProfile.Profile()
        prof.enable()
        t0 = time.process_time()
        for i in range(n):
            service.run(job(i))
        wall = time.process_time() - t0
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(30)
        s2 = io.StringIO()
        pstats.Stats(prof, stream=s2).sort_stats("tottime").print_stats(25)
        (out / "load-profile.txt").write_text(s.getvalue() + "\n\n" + s2.getvalue())
    finally:
        accounts.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "n": n,
        "run_ms_mean_profiled": wall / n * 1000,
        "stages_ms_median": {k: pct(v, 50) for k, v in stages.items()},
    }


# ---- the run --------------------------------------------------------------------------------
def other_benchmarks() -> list[str]:
    """Command lines of other running benchmarks that would share the cores."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry}/stat") as fh:
                stopped = fh.read().rpartition(")")[2].split()[0] == "T"  # SIGSTOPped: no CPU
        except OSError:
            continue
        if stopped:
            continue
        if any(f"bench.{m}" in cmd for m in ("throughput", "accuracy")) and "bench.load" not in cmd:
            found.append(cmd)
    return found


def wait_for_others(max_wait_s: float, poll_s: float = 30.0) -> dict[str, Any]:
    t0 = time.monotonic()
    while (others := other_benchmarks()) and time.monotonic() - t0 < max_wait_s:
        log(f"waiting for {others[0][:80]} ({time.monotonic() - t0:.0f} s)")
        time.sleep(poll_s)
    return {"waited_s": time.monotonic() - t0, "still_running": others}


def src_version() -> str:
    """HEAD and a digest of src/ as it is on disk (the server and CLI import it anew)."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    h = hashlib.sha256()
    for f in sorted((ROOT / "src").rglob("*.py")):
        h.update(f.read_bytes())
    return f"{head or '?'}+src:{h.hexdigest()[:10]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    ap.add_argument(
        "--workers",
        default="0",
        help="server worker counts, the first is primary (0: serve's default, one per core)",
    )
    ap.add_argument("--levels", default="1,16,64", help="closed loop: concurrent clients")
    ap.add_argument("--rates", default="60", help="open loop: Poisson arrivals per second")
    ap.add_argument("--seconds", type=float, default=20.0, help="per level")
    ap.add_argument("--max-requests", type=int, default=20000, help="per level")
    ap.add_argument("--concurrent-scans", type=int, default=2, help="1-hour uploads at once")
    ap.add_argument("--no-enterprise", action="store_true")
    ap.add_argument(
        "--no-floors", action="store_true", help="skip the bare-app floors (bench.floor_app)"
    )
    ap.add_argument("--baseline", help="revision whose server runs the same standard levels first")
    ap.add_argument("--profile", type=int, default=100, help="profiled requests (0: none)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--wait-max-s", type=float, default=2400.0, help="for other benchmarks")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-md", action="store_true")
    ap.add_argument("--render", action="store_true", help="only rewrite the section from load.json")
    a = ap.parse_args(argv)
    out: Path = a.out
    argv_s = " ".join(sys.argv[1:] if argv is None else argv)
    command = f".venv/bin/python -m bench.load {argv_s}".strip()
    if a.render:
        res = json.loads((out / "load.json").read_text())
        update_section("load", render(res))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"command": command, "machine_start": machine()}
    res["level_seconds"], res["max_requests"] = a.seconds, a.max_requests
    res["src_start"] = src_version()
    res["wait"] = wait_for_others(a.wait_max_s)  # they would share the cores
    corpus = broadcast.find_corpus()
    data = out / "load-data"
    setup = make_data_dir(data, corpus, rate_limit=100000)
    token = setup["token"]
    res["setup"] = {k: v for k, v in setup.items() if k != "token"}
    clips = make_clips(corpus, data, token, out, a.seed)
    res["clips"] = {
        "n": len(clips),
        "seconds": CLIP_S,
        "snr_db": CLIP_SNR_DB,
        "format": f"MP3 {CLIP_KBPS} kbit/s stereo {CLIP_SR} Hz",
        "mean_bytes": float(np.mean([c.bytes for c in clips])),
    }
    mp3, duration_s = Path(), 3600.0
    if not a.no_enterprise:
        from songscan.media import probe

        cache = broadcast.default_cache_dir()
        mp3 = broadcast.build_long_mp3(corpus, cache, hours=1.0, seed=1).path
        duration_s = probe(mp3).duration_s or 3600.0
    res["machine_measure_start"] = machine()
    levels = [int(x) for x in a.levels.split(",") if x.strip()]
    rates = [float(x) for x in a.rates.split(",") if x.strip()]
    if a.baseline:
        res["baseline"] = run_baseline(
            a.baseline, data, int(a.workers.split(",")[0]), clips, levels, rates, a, out
        )
    res["runs"] = []
    for workers in [int(x) for x in a.workers.split(",") if x.strip()]:
        if workers != int(a.workers.split(",")[0]):
            res.setdefault("waits", []).append(wait_for_others(a.wait_max_s / 2))
        server = Server(data, workers, out / f"load-server-w{workers}.log")
        run: dict[str, Any] = {"workers": workers, "server_cmd": " ".join(server.cmd)}
        try:
            server.wait_ready()
            run["server_processes"] = len(server.pids())
            log(f"server --workers {workers} on {server.url} ({run['server_processes']} processes)")
            run["healthz_ms"] = healthz_latency(server.url)
            log(f"  GET /healthz, 1 client, keep-alive: median {run['healthz_ms']:.1f} ms")
            warm = asyncio.run(warm_up(server.url, clips, 8, 8 * len(clips)))
            run["warm_up"] = summarise(warm, 1.0)
            if run["warm_up"]["errors"] or run["warm_up"]["wrong_or_no_match"]:
                log(f"  warm-up: {run['warm_up']}")
            run.update(standard_levels(server, clips, levels, rates, a))
            if not a.no_enterprise:
                run["enterprise"] = run_enterprise(
                    server, data, token, mp3, duration_s, a.concurrent_scans
                )
            run["server_processes_end"] = len(server.pids())
        finally:
            server.stop()
        run["leaked_processes"] = server.leaked
        if server.leaked:
            log(f"  {len(server.leaked)} server processes outlived SIGTERM (ended by the bench)")
        res["runs"].append(run)
    if not a.no_floors:
        res["floors"] = [
            run_floor(data, mode, clips, levels, rates, a.seconds, a.max_requests, a.seed, out)
            for mode in FLOOR_MODES
        ]
    if a.profile:
        res["profile_others"] = other_benchmarks()
        log(f"profile: {a.profile} standard requests in this process")
        res["profile"] = profile_standard(data, token, clips, a.profile, out)
        log(f"  {res['profile']}")
    res["machine_end"] = machine()
    res["src_end"] = src_version()
    if res["src_end"].split("+")[1] != res["src_start"].split("+")[1]:
        log("src/ changed during the run: the figures mix two versions of the code")
    (out / "load.json").write_text(json.dumps(res, indent=1))
    body = render(res)
    print(body)
    if not a.no_md:
        update_section("load", body)
    return 0


def _workers(n: int) -> str:
    return f"`--workers {n}`" if n else "`songscan serve`'s default workers (one per core)"


def _dagger(phase: dict[str, Any]) -> str:
    return " †" if phase.get("others") else ""


def _split(lv: dict[str, Any]) -> str:
    sp = lv["server_cpu_ms_per_request_split"]
    return f"{sp['main_threads']:.1f} / {sp['other_threads']:.1f}"


def _f(x: float | None, fmt: str = ".0f") -> str:
    return "—" if x is None else format(x, fmt)


def render(res: dict[str, Any]) -> str:
    runs = res["runs"]
    primary = runs[0]
    wait = res["wait"]
    seen = sorted(
        {o for r in runs for lv in r["levels"] for o in lv.get("others", [])}
        | {o for r in runs for o in r.get("enterprise", {}).get("others", [])}
        | set(wait["still_running"])
    )
    contention = (
        f"another benchmark (`{seen[0][:70]}`) ran during the phases marked † (checked at the "
        "start and end of each): those figures are lower than on an idle machine"
        if seen
        else "no other benchmark (bench.throughput, bench.accuracy) ran at the start or end "
        "of any phase"
    )
    contention += f" (waited {wait['waited_s']:.0f} s for one to end before starting)"
    clips = res["clips"]
    lines = [
        "## Load (HTTP server)",
        "",
        f"Command: `{res['command']}` (one run, code at {res['src_start']}"
        + (
            ""
            if res["src_end"].split("+")[1] == res["src_start"].split("+")[1]
            else f", src/ changed during the run, to {res['src_end']}"
        )
        + "; raw numbers in `bench/out/load.json`, server logs "
        "in `bench/out/load-server-w*.log`, profile in `bench/out/load-profile.txt`). "
        f"Machine: {res['machine_end']}; load average when the measurement started: "
        f"{res['machine_measure_start'].split('load average at the end ')[1].split(',')[0]}; "
        f"{contention}.",
        "",
        "Set-up: `songscan serve` (as a user starts it: one worker process per core unless "
        "`--workers N`; Uvicorn with httptools and uvloop, as installed with songscan; "
        "songscan's JSON access log to the server's stderr) on a free loopback port, a fresh data "
        f"dir with the corpus's reference tracks (`songscan add`, {res['setup']['add_s']:.0f} s), "
        "a `songscan.toml` raising the enterprise plan's `rate_limit_per_s` to 100000 (and "
        "giving the request media a `tmp_dir` of its own), one "
        "account on the enterprise plan (`songscan accounts create --plan enterprise`, then "
        "`accounts credit`). The load generator is one Python process (async httpx, one "
        "connection per client, keep-alive) on the same 2 cores as the server; its CPU is "
        "reported beside the server's.",
        "",
        f"Standard requests: `POST /` with a multipart body (`api_token`, `file`) holding one of "
        f"{clips['n']} clips, {clips['seconds']:g} s of a reference track from a seeded position "
        f"with white noise at {clips['snr_db']:g} dB SNR, {clips['format']} "
        f"({clips['mean_bytes'] / 1e3:.0f} kB). Closed loop: each client sends its next request "
        f"when it has the previous answer; a level lasts {res['level_seconds']:g} s (or "
        f"{res['max_requests']:,} requests), after a warm-up. Open loop: Poisson arrivals at a "
        "given rate for as long, each request sent at its scheduled time however many are "
        "unanswered, its latency counted from that time. An *error* is "
        "an HTTP status other than 200 or a body whose `status` is not `success`; *wrong* is a "
        "success that does not name the clip's track. CPU: user + system seconds of the server's "
        "process tree (`/proc`) and of the load generator, over the level, per request and per "
        "second of wall time (cores).",
        "",
    ]
    for run in runs:
        lines += [
            f"### Standard recognition, {_workers(run['workers'])} "
            f"({run['server_processes']} server processes)",
            "",
            "| clients | requests | req/s | p50 | p95 | p99 | max | errors | wrong "
            "| server CPU / req (event-loop threads / worker threads) | server cores "
            "| client CPU / req | client cores |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        rows = [(str(lv["clients"]), lv) for lv in run["levels"]]
        rows += [(f"open loop, {lv['arrival_rate']:g}/s", lv) for lv in run.get("open_levels", [])]
        for name, lv in rows:
            lines.append(
                f"| {name}{_dagger(lv)} | {lv['requests']} | {lv['rps']:.1f} | "
                f"{_f(lv['p50_ms'])} ms | "
                f"{_f(lv['p95_ms'])} ms | {_f(lv['p99_ms'])} ms | {_f(lv['max_ms'])} ms | "
                f"{lv['errors']} | {lv['wrong_or_no_match']} | "
                f"{lv['server_cpu_ms_per_request']:.1f} ms ({_split(lv)}) | "
                f"{lv['server_cores']:.2f} | "
                f"{lv['client_cpu_ms_per_request']:.1f} ms | {lv['client_cores']:.2f} |"
            )
        lines.append("")
    lines += render_baseline(res.get("baseline"), primary)
    lines += render_floors(res.get("floors", []))
    ent_runs = [r for r in runs if "enterprise" in r]
    if ent_runs:
        e0 = ent_runs[0]["enterprise"]
        lines += [
            "### Enterprise scans of a 1-hour file",
            "",
            f"File: `{e0['file']}` ({e0['duration_s'] / 3600:.2f} h, MP3 64 kbit/s mono). "
            "API: `POST /enterprise` with the file uploaded as multipart (streamed from disk), "
            "default parameters, time from the first byte sent to the whole answer; first one "
            "upload alone, then several at once (after a warm-up that starts the scan pools of "
            "the server's worker processes). CLI: `songscan --data D scan FILE --format json`, a "
            "fresh process (start-up and its process pool included), once before and once after "
            "the API scans; its × real time is the mean of both. Aggregate × real time = "
            "audio hours of all uploads ÷ wall time of the batch.",
            "",
            "| workers | CLI × RT (before / after) | API alone × RT (÷ CLI) "
            "| API concurrent: each × RT | API concurrent: aggregate × RT (÷ CLI) | errors |",
            "|---|---|---|---|---|---|",
        ]
        for r in ent_runs:
            e = r["enterprise"]
            cli = "/".join(f"{e['duration_s'] / c['wall_s']:.0f}" for c in e["cli"])
            each = ", ".join(f"{x:.0f}" for x in e["concurrent_x_rt_each"])
            lines.append(
                f"| {r['workers'] or 'one per core'}{_dagger(e)} | {e['cli_x_rt']:.0f} ({cli}) | "
                f"{e['single_x_rt']:.0f} "
                f"({e['ratio_single_pct']:.0f} %) | {e['concurrent']['n']} uploads: {each} | "
                f"{e['concurrent_x_rt_total']:.0f} ({e['ratio_concurrent_pct']:.0f} %) | "
                f"{e['errors']} |"
            )
        lines.append("")
    # targets (primary worker count)
    top = max(primary["levels"], key=lambda lv: lv["clients"])
    one = min(primary["levels"], key=lambda lv: lv["clients"])
    lines += [
        f"### Against the targets ({_workers(primary['workers'])})",
        "",
        "| figure | target | measured | verdict |",
        "|---|---|---|---|",
        f"| server CPU per standard request, {one['clients']} client | ≤ {TARGET_CPU_MS:g} ms | "
        f"{one['server_cpu_ms_per_request']:.1f} ms | "
        f"{verdict(one['server_cpu_ms_per_request'], TARGET_CPU_MS, False, ' ms')} |",
        f"| standard recognitions/s, {top['clients']} clients | ≥ {TARGET_RPS:g}/s | "
        f"{top['rps']:.1f}/s | {verdict(top['rps'], TARGET_RPS, True, '/s')} |",
        f"| errors, {top['clients']} clients | 0 | {top['errors']} of {top['requests']} | "
        f"{verdict(top['errors'], 0, False)} |",
    ]
    for lv in primary.get("open_levels", []):
        if lv["arrival_rate"] == TARGET_OPEN_RATE:
            lines += [
                f"| p99 latency, open loop at {TARGET_OPEN_RATE:g}/s | "
                f"≤ {TARGET_OPEN_P99_MS:g} ms | {_f(lv['p99_ms'])} ms | "
                f"{verdict(lv['p99_ms'], TARGET_OPEN_P99_MS, False, ' ms')} |",
                f"| errors, open loop at {TARGET_OPEN_RATE:g}/s | 0 | "
                f"{lv['errors']} of {lv['requests']} | {verdict(lv['errors'], 0, False)} |",
            ]
    if "enterprise" in primary:
        e = primary["enterprise"]
        lines += [
            f"| API ÷ CLI, {e['concurrent']['n']} concurrent 1-hour scans (aggregate) | "
            f"≥ {TARGET_RATIO:g} % | {e['ratio_concurrent_pct']:.0f} % | "
            f"{verdict(e['ratio_concurrent_pct'], TARGET_RATIO, True, ' points')} |",
            f"| API ÷ CLI, one 1-hour scan alone | ≥ {TARGET_RATIO:g} % | "
            f"{e['ratio_single_pct']:.0f} % | "
            f"{verdict(e['ratio_single_pct'], TARGET_RATIO, True, ' points')} |",
        ]
    lines.append("")
    lines += findings(res)
    return "\n".join(lines)


def render_baseline(base: dict[str, Any] | None, primary: dict[str, Any]) -> list[str]:
    if not base:
        return []
    lines = [
        f"### Against `{base['rev']}` in the same run",
        "",
        f"The same levels, just before, on a server running `{base['rev']}`'s `src/` (same "
        "interpreter, data dir, clips and load generator).",
        "",
        "| load | req/s (baseline → this) | p99 | server CPU / req | CPU ÷ baseline |",
        "|---|---|---|---|---|",
    ]

    def rows(run: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        out = [(f"{lv['clients']} clients", lv) for lv in run["levels"]]
        return out + [(f"open loop, {lv['arrival_rate']:g}/s", lv) for lv in run["open_levels"]]

    for (name, old), (_, new) in zip(rows(base), rows(primary), strict=True):
        was, now = old["server_cpu_ms_per_request"], new["server_cpu_ms_per_request"]
        lines.append(
            f"| {name} | {old['rps']:.1f} → {new['rps']:.1f} | {_f(old['p99_ms'])} → "
            f"{_f(new['p99_ms'])} ms | {was:.1f} → {now:.1f} ms | {now / was:.2f} |"
        )
    lines.append("")
    return lines


def render_floors(floors: list[dict[str, Any]]) -> list[str]:
    if not floors:
        return []
    lines = [
        "### Floors: the same load on a bare app (`bench/floor_app.py`)",
        "",
        "Uvicorn as `songscan serve` runs it (its server config: uvloop, httptools, one worker "
        "process per core, no access log), the same clips and load generator: "
        + "; ".join(f"*{f['mode']}*: {FLOOR_MODES[f['mode']]}" for f in floors)
        + ". No parameters, accounts, fingerprint or match: what a standard request costs "
        "at least on this machine.",
        "",
        "| app | load | req/s | p50 | p99 | errors | server CPU / req | client CPU / req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in floors:
        rows = [(f"{lv['clients']} clients", lv) for lv in f["levels"]]
        rows += [(f"open loop, {lv['arrival_rate']:g}/s", lv) for lv in f["open_levels"]]
        for name, lv in rows:
            lines.append(
                f"| {f['mode']} | {name}{_dagger(lv)} | {lv['rps']:.1f} | {_f(lv['p50_ms'])} ms "
                f"| {_f(lv['p99_ms'])} ms | {lv['errors']} | "
                f"{lv['server_cpu_ms_per_request']:.1f} ms | "
                f"{lv['client_cpu_ms_per_request']:.1f} ms |"
            )
    lines.append("")
    return lines


def findings(res: dict[str, Any]) -> list[str]:
    """What the run's own numbers say about where the time goes."""
    primary = res["runs"][0]
    top = max(primary["levels"], key=lambda lv: lv["clients"])
    one = min(primary["levels"], key=lambda lv: lv["clients"])
    out = ["### Where the time goes", ""]
    cores = os.cpu_count() or 1
    cap = cores * 1000 / top["server_cpu_ms_per_request"] if top["server_cpu_ms_per_request"] else 0
    used = top["server_cores"] + top["client_cores"]
    state = "CPU bound" if used >= 0.9 * cores else "not CPU-saturated"
    per = top.get("server_cores_per_process", [])
    busy = ", ".join(f"{c:.2f}" for c in per if c >= 0.05)
    out.append(
        f"- {state}: at {top['clients']} clients the server used {top['server_cores']:.2f} "
        f"cores (per process: {busy}) and the load generator {top['client_cores']:.2f} (of "
        f"{cores}); the server spends "
        f"{top['server_cpu_ms_per_request']:.1f} ms of CPU per standard request, so even with "
        f"all {cores} cores and no client it could not exceed ~{cap:.0f} requests/s. Of "
        f"those ms, {_split(top)} are in the main threads of the server processes (the "
        "Uvicorn event loops) / in their other threads (the worker threads that run "
        "`Recognition.run`, and the GIL they share with the loop). The "
        f"{TARGET_RPS:g}/s target needs ≤ {cores * 1000 / TARGET_RPS:.1f} ms of CPU per request "
        "(less the load generator's share on the same machine)."
    )
    out.append(
        f"- Closed loop, Little's law: with {top['clients']} clients always waiting, mean latency "
        f"= clients ÷ throughput ({top['clients']} ÷ {top['rps']:.1f}/s = "
        f"{top['clients'] / max(top['rps'], 1e-9) * 1000:.0f} ms; measured mean "
        f"{top['mean_ms']:.0f} ms): the closed loop measures throughput; latency is taken "
        f"in the open loop, at {TARGET_OPEN_RATE:g} arrivals/s."
    )
    out.append(
        f"- Unloaded (1 client): p50 {_f(one['p50_ms'])} ms, "
        f"{one['server_cpu_ms_per_request']:.1f} ms of server CPU per request."
    )
    for r in res["runs"][1:]:
        t = max(r["levels"], key=lambda lv: lv["clients"])
        peak = max(lv["server_cores"] for lv in r["levels"])
        why = (
            "one process: its event loop and worker threads share one GIL"
            if r["workers"] == 1
            else "with the load generator, the 2 cores are full"
        )
        out.append(
            f"- `--workers {r['workers']}`: {t['rps']:.1f} requests/s at {t['clients']} clients "
            f"(`--workers {primary['workers']}`: {top['rps']:.1f}/s); its server used at most "
            f"{peak:.2f} cores ({why})."
        )
    hz = {r["workers"]: r.get("healthz_ms") for r in res["runs"] if r.get("healthz_ms")}
    multi = {w: v for w, v in hz.items() if w > 1}
    if 1 in hz and multi and min(multi.values()) > 5 * hz[1] and min(multi.values()) > 20:
        out.append(
            "- Unloaded latency with more than one worker process: `GET /healthz` over one "
            "keep-alive connection takes "
            + ", ".join(f"{v:.1f} ms (`--workers {w}`)" for w, v in sorted(hz.items()))
            + ". With `--workers N > 1`, Uvicorn binds the listening socket itself with "
            "`proto` 0, accepted sockets inherit it, and asyncio sets `TCP_NODELAY` only on "
            "sockets whose `proto` is TCP: Nagle's algorithm stays on, and each response "
            "written in two pieces (headers, body) waits for the client's delayed ACK (~40 ms "
            "on Linux). Known Uvicorn bug (Kludex/uvicorn#3149, open); it adds ~40 ms to every "
            "request after the first on a connection (the 1-client rows above), costs no CPU, "
            "and under saturation hides inside the queueing time."
        )
    e = primary.get("enterprise")
    if e and e["concurrent"]["n"] > 1:
        walls = sorted(x["wall_s"] for x in e["concurrent"]["runs"])
        out.append(
            f"- {e['concurrent']['n']} enterprise uploads at once finished after "
            + ", ".join(f"{w:.1f} s" for w in walls)
            + f" (one alone: {e['single']['wall_s']:.1f} s): the aggregate is what the cores "
            "allow; a scan's chunks are queued in order on its server process's pool, so "
            "uploads that land on the same process are served one after the other rather than "
            "side by side."
        )
    if e:
        cli_wall = float(np.mean([c["wall_s"] for c in e["cli"]]))
        out.append(
            f"- API above CLI: the CLI's {cli_wall:.1f} s include its own start-up (Python "
            "imports, its process pool, opening the catalog), which a running "
            f"server has already paid; the scan itself is the same `scan_file` (API alone "
            f"{e['single']['wall_s']:.1f} s, upload of the {e['duration_s'] / 3600:.0f}-hour "
            "file included)."
        )
    leaked = [x for r in res["runs"] for x in r.get("leaked_processes", [])]
    if leaked:
        out.append(
            f"- After SIGTERM, {len(leaked)} processes of the stopped servers were still running "
            f"(e.g. `{leaked[0][:70]}…`): the scan pools (forkserver and its workers) that "
            "enterprise scans start in each server process outlive the server; the bench ended "
            "them."
        )
    prof = res.get("profile")
    if prof:
        st = prof["stages_ms_median"]
        parts = ", ".join(
            f"{k} {v:.1f} ms" for k, v in st.items() if k != "whole run()" and "part" not in k
        )
        dec = st.get("decode alone (part of recognize_clip)")
        out.append(
            f"- The work of one standard request in a worker thread (`Recognition.run`, in one "
            f"process, no HTTP; median CPU times of {prof['n']}): {parts}; the whole `run()` "
            f"{st['whole run()']:.1f} ms"
            + (
                f"; of `recognize_clip`, decoding the MP3 (PyAV decode, downmix, resample to "
                f"8 kHz) alone takes {dec:.1f} ms, fingerprinting and matching the rest. "
                if dec is not None
                else ". "
            )
            + "The rest of the server's "
            f"{one['server_cpu_ms_per_request']:.1f} ms of CPU per request (1 client), "
            f"{one['server_cpu_ms_per_request'] - st['whole run()']:.1f} ms, is HTTP: "
            "Uvicorn's HTTP parsing, the multipart body streamed to a temp dir, the event loop, "
            "thread hand-off, JSON response, logging. cProfile: `bench/out/load-profile.txt`."
        )
    out += floor_findings(res.get("floors", []))
    return out


def floor_findings(floors: list[dict[str, Any]]) -> list[str]:
    """Each target against what the decode alone costs on a bare app."""
    decode = next((f for f in floors if f["mode"] == "decode"), None)
    if decode is None or not decode["levels"]:
        return []
    one = min(decode["levels"], key=lambda lv: lv["clients"])
    top = max(decode["levels"], key=lambda lv: lv["clients"])
    text = (
        f"- The floor (a bare app that only decodes the clip): "
        f"{one['server_cpu_ms_per_request']:.1f} ms of server CPU per request at "
        f"{one['clients']} client (target ≤ {TARGET_CPU_MS:g} ms for all of songscan's work), "
        f"{top['rps']:.1f}/s at {top['clients']} clients (target ≥ {TARGET_RPS:g}/s)"
    )
    for lv in decode["open_levels"]:
        if lv["arrival_rate"] == TARGET_OPEN_RATE:
            text += (
                f", p99 {_f(lv['p99_ms'])} ms in the open loop at {TARGET_OPEN_RATE:g}/s "
                f"(target ≤ {TARGET_OPEN_P99_MS:g} ms)"
            )
    return [text + ": a target the floor misses cannot be met with this decoder on this machine."]


if __name__ == "__main__":
    sys.exit(main())
