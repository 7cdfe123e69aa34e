"""The least a standard request can cost on this machine, for `bench.load --floors`.

A bare FastAPI app on Uvicorn as `songscan serve` runs it (uvloop, httptools, one worker per
core, no access log) answering `POST /` with a fixed AudD-shaped JSON body. `FLOOR_MODE`:
`bare` reads the body and answers; `decode` also writes the multipart body's file to a temp
file and decodes its first 25 s as songscan does (`media.decode`, mono at the fingerprint's
8 kHz), in a worker thread. No parsing of parameters, no accounts, no fingerprint, no match.
"""

from __future__ import annotations

import os
import tempfile

import anyio.to_thread
import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from songscan.config import DEFAULT
from songscan.media import decode

MODE = os.environ.get("FLOOR_MODE", "bare")
app = FastAPI()


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
    samples = await anyio.to_thread.run_sync(_decode, body) if MODE == "decode" else 0
    return JSONResponse({"status": "success", "result": {"samples": samples}})
