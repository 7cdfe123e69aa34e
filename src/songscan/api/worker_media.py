"""`GET /internal/media`: a scan's media, served to the Celery workers that scan it.

Installed only when a broker is configured. The file is named by a token in the
`Authorization: Bearer` header that this node signed for the scan (`distributed.media_link`);
without a valid, unexpired one the answer is 403 and nothing is read. Range requests are
answered 206 (Starlette's FileResponse), so a worker fetches only what its runs decode. The
route is for workers, not for callers: a proxy in front of the API nodes need not expose it.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from songscan.config import RemoteScans
from songscan.distributed.media_link import ROUTE, BadMediaLink, verify

log = logging.getLogger("songscan.worker_media")
router = APIRouter()


@router.get(ROUTE, include_in_schema=False)
def worker_media(request: Request) -> Response:
    remote: RemoteScans = request.app.state.remote_scans
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    try:
        if scheme.lower() != "bearer" or not token:
            raise BadMediaLink("no media token")
        path = verify(remote.media_secret, token.strip())
    except BadMediaLink as exc:
        client = request.client.host if request.client else ""
        log.warning("refused a media request from %s: %s", client, exc.message)
        return JSONResponse({"error": exc.message}, status_code=403)
    if not path.is_file():  # the scan has finished and its file is gone
        return JSONResponse({"error": "the media is no longer here"}, status_code=404)
    return FileResponse(path, media_type="application/octet-stream")


def install(app: FastAPI, remote: RemoteScans) -> None:
    app.state.remote_scans = remote
    app.include_router(router)
