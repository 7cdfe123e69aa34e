"""The least a standard request can cost on this machine, for `bench.load`'s floors.

`python -m bench.floor_app PORT`: a bare FastAPI app on Uvicorn as `songscan serve` runs it
(its server config: uvloop, httptools, one worker process per core sharing the listening
socket, no access log), answering `POST /` with a fixed JSON body. `FLOOR_MODE`: `bare` reads
the body and answers; `decode` also writes the multipart body's file to a temp file and decodes
its first 25 s as songscan does (`media.decode`, mono at the fingerprint's 8 kHz) in a worker
thread, as many at once per process as songscan's default `concurrent_scans` (one per core).
No parameters, accounts, fingerprint or match.
"""

from __future__ import annotations

import os
import sys
import tempfile

import anyio
import anyio.to_thread
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from uvicorn.supervisors import Multiprocess

from songscan.api.serve import _TcpConfig, default_workers
from songscan.config import DEFAULT
from songscan.media import decode

MODE = os.environ.get("FLOOR_MODE", "bare")
app = FastAPI()
_limiter: list[anyio.CapacityLimiter] = []  # made in the event loop, on first use


def _decode(body: bytes) -> int:
    start = body.index(b"\r\n\r\n", body.index(b'name="file"')) + 4
    end = body.rindex(b"\r\n--")
    with tempfile.NamedTemporaryFile(suffix=".mp3") as f:
        f.write(body[start:end])
        f.flush()
        rate = DEFAULT.fingerprint.sample_rate_hz
        blocks = list(decode(f.name, rate, end_s=DEFAULT.scan.standard_max_s))
        return int(np.concatenate(blocks).shape[0])


@app.get("/healthz")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@app.post("/")
async def recognize(request: Request) -> JSONResponse:
    body = await request.body()
    samples = 0
    if MODE == "decode":
        if not _limiter:
            _limiter.append(anyio.CapacityLimiter(os.cpu_count() or 1))
        samples = await anyio.to_thread.run_sync(_decode, body, limiter=_limiter[0])
    return JSONResponse({"status": "success", "result": {"samples": samples}})


def main(port: int) -> None:
    config = _TcpConfig(
        "bench.floor_app:app",
        host="127.0.0.1",
        port=port,
        workers=default_workers(),
        loop="uvloop",
        http="httptools",
        access_log=False,
        timeout_worker_healthcheck=60,
    )
    Multiprocess(config, sockets=[config.bind_socket()]).run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
