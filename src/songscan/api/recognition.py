"""The AudD-compatible recognition API: `/` (standard), `/enterprise`, `/upload/` (api-contract.md).

One request flows: read the parameters and stream any media to a private temp dir (async, in
the event loop) → in a worker thread: authenticate, check entitlements and parameters, fetch a
`url`, reserve the requests it will cost, recognise, settle what was used (a standard clip's
request is checked before and billed once recognised, in one transaction) → an AudD JSON (or CSV)
body. The temp dir is removed when the request ends, however it ends. Scans are CPU-bound and run
in worker threads (bounded by `[api] concurrent_scans`) so the event loop keeps serving.

An enterprise request is the enterprise use case's (`songscan.enterprise`, no HTTP there): this
module hands it the checked media and the account, and sends what it answers. With
`async=true` the use case queues it as a long job (`songscan.jobs`; `api/jobs.py` runs it and
serves `/enterprise/jobs`).

`/` also takes AudD's streams methods by name (`method=addStream`, ...): the parameters read
here are handed to `api/streams.py`, which answers as on `/addStream/`.

Also here: `/healthz`, `/metrics` (Prometheus) and the access log (`songscan.access`, one JSON
object per line, with the request id and the masked token). The app (`api/app.py`) mounts it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.requests import ClientDisconnect

from songscan.accounts.plans import Entitlements
from songscan.accounts.service import Account, Accounts
from songscan.accounts.tokens import mask_token
from songscan.api import streams
from songscan.api.errors import UnexpectedError, error_reply
from songscan.api.logs import ACCESS_LOGGER, LOGGED
from songscan.api.openapi import ENTERPRISE_PARAMS, STANDARD_PARAMS, UPLOAD_PARAMS, operation
from songscan.api.params import ParsedRequest, read_request
from songscan.catalog import METADATA_FIELDS, Catalog, metadata_from_mapping
from songscan.config import DEFAULT, EngineConfig
from songscan.enterprise import (
    ENTERPRISE,
    EnterpriseRequest,
    EnterpriseScans,
    UrlFetch,
    catalog_owners,
    checked_media,
    enterprise_request,
    owner_of,
    wants_job,
)
from songscan.errors import (
    ConfigError,
    DatabaseUnavailable,
    InvalidParameters,
    MediaTooLarge,
    NotEntitled,
    SongscanError,
)
from songscan.fields import int_param, text_param
from songscan.ingest import IngestItem, check_reference, ingest
from songscan.jobs import JobStore, job_json
from songscan.media import Media, checked, checked_probe
from songscan.results import standard_response
from songscan.scan import recognize_clip
from songscan.sources import AllowList, temporary_media

log = logging.getLogger("songscan.api")
access_log = logging.getLogger(ACCESS_LOGGER)

router = APIRouter()

RECOGNIZE, UPLOAD = "recognize", "upload"  # API methods (and ENTERPRISE, the use case's)
_MB = 1024 * 1024


# -- settings -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApiSettings:
    """The `[api]` section of songscan.toml."""

    max_body_bytes: int  # hard cap on a request body: HTTP 413 past it
    tmp_dir: Path | None = None  # where request media is kept while it is worked on
    fetch_timeout_s: float = 600.0  # a `url` download, start to end
    url_allow: AllowList = field(default_factory=AllowList)  # private hosts `url` may reach
    standard_max_bytes: int = 10 * _MB
    # "reject": a standard clip over 25 s gets error 400; "first": its first 25 s are analysed.
    standard_long_clips: str = "reject"
    concurrent_scans: int = 0  # requests worked on at once; 0: one per core
    concurrent_jobs: int = 1  # long jobs this server process runs at once
    job_retention_days: float = 7.0  # finished jobs (and their results) are kept this long
    # A node (data directory) unheard of this long is gone: other nodes take its jobs over.
    job_node_timeout_s: float = 3600.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any], plans_max_bytes: int) -> ApiSettings:
        section = config.get("api", {})
        known = {
            "max_body_mb": (int, float),
            "tmp_dir": (str,),
            "fetch_timeout_s": (int, float),
            "url_allow": (list,),
            "standard_max_mb": (int, float),
            "standard_long_clips": (str,),
            "concurrent_scans": (int,),
            "concurrent_jobs": (int,),
            "job_retention_days": (int, float),
            "job_node_timeout_s": (int, float),
        }
        for key, value in section.items():
            if key not in known:
                raise ConfigError(f"[api]: unknown key {key!r} (known: {', '.join(known)})")
            if not isinstance(value, known[key]) or isinstance(value, bool):
                raise ConfigError(f"[api].{key}: expected {known[key][0].__name__}, got {value!r}")
        long_clips = section.get("standard_long_clips", "reject")
        if long_clips not in ("reject", "first"):
            raise ConfigError("[api].standard_long_clips: expected 'reject' or 'first'")
        try:
            allow = AllowList(str(entry) for entry in section.get("url_allow", []))
        except ValueError as exc:
            raise ConfigError(f"[api].url_allow: {exc}") from None
        tmp_dir = section.get("tmp_dir")
        if section.get("concurrent_jobs", 1) < 1:
            raise ConfigError("[api].concurrent_jobs: expected at least 1")
        return cls(
            max_body_bytes=int(section.get("max_body_mb", plans_max_bytes / _MB) * _MB),
            tmp_dir=Path(tmp_dir) if tmp_dir else None,
            fetch_timeout_s=float(section.get("fetch_timeout_s", 600.0)),
            url_allow=allow,
            standard_max_bytes=int(section.get("standard_max_mb", 10) * _MB),
            standard_long_clips=long_clips,
            concurrent_scans=int(section.get("concurrent_scans", 0)),
            concurrent_jobs=int(section.get("concurrent_jobs", 1)),
            job_retention_days=float(section.get("job_retention_days", 7.0)),
            job_node_timeout_s=float(section.get("job_node_timeout_s", 3600.0)),
        )


# -- metrics ------------------------------------------------------------------------------------
class Metrics:
    """Prometheus metrics of one app (a registry of its own, so several apps can share a
    process, as they do in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "songscan_requests",
            "Recognition API requests, by API method and error code (0: success)",
            ["api_method", "error_code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "songscan_request_duration_seconds",
            "Time from request to response, by API method",
            ["api_method"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=self.registry,
        )
        self.chunks = Counter(
            "songscan_chunks_scanned", "12-second chunks recognised", registry=self.registry
        )
        self.audio_seconds = Counter(
            "songscan_audio_scanned_seconds", "Seconds of audio recognised", registry=self.registry
        )
        self.media_bytes = Counter(
            "songscan_media_decoded_bytes",
            "Bytes of media files handed to the decoder",
            registry=self.registry,
        )
        self.billed = Counter(
            "songscan_requests_billed", "Requests billed to accounts", registry=self.registry
        )
        self.in_progress = Gauge(
            "songscan_requests_in_progress", "Requests being worked on", registry=self.registry
        )


# -- one request ----------------------------------------------------------------------------------
@dataclass
class Call:
    """One recognition request as the worker thread sees it; counters are filled in for the
    access log and metrics."""

    api_method: str
    http_method: str
    fields: dict[str, str]
    media: Path | None
    media_bytes: int
    workdir: Path
    client_addr: str
    started: float
    account_id: int | None = None
    chunks: int = 0
    audio_s: float = 0.0
    billed: int = 0
    decoded_bytes: int = 0


@dataclass(frozen=True)
class Reply:
    """A finished answer: the JSON body (or CSV text) and how to send it."""

    body: dict[str, Any] | str
    media_type: str = "application/json"
    http_status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    fields: Mapping[str, str] = field(default_factory=dict)  # the request's parameters

    def response(self, request_id: str) -> Response:
        headers = {**self.headers, "X-Request-ID": request_id}
        if isinstance(self.body, str):
            return Response(
                self.body, self.http_status, headers=headers, media_type=self.media_type
            )
        return JSONResponse(self.body, self.http_status, headers=headers)


class Recognition:
    """The recognition side of an app: settings, the catalog, the accounts, the metrics."""

    def __init__(
        self,
        data_dir: Path,
        config: Mapping[str, Any],
        accounts: Accounts,
        engine_config: EngineConfig = DEFAULT,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.accounts = accounts
        plans_max = max(p.entitlements.max_file_bytes for p in accounts.plans.values())
        self.settings = ApiSettings.from_config(config, plans_max)
        self.fetcher = UrlFetch(self.settings.fetch_timeout_s, self.settings.url_allow)
        self.enterprise = EnterpriseScans(accounts, self.data_dir, engine_config, self.fetcher)
        # for uploads; scans open their own
        self.catalog = Catalog(
            self.data_dir,
            database_url=engine_config.catalog_url,
            index_url=engine_config.index_url,
        )
        self.jobs = JobStore(accounts.engine, self.data_dir, self.settings.job_node_timeout_s)
        self.metrics = Metrics()
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def engine_config(self) -> EngineConfig:
        """The engine's settings: the enterprise use case's, which every method uses."""
        return self.enterprise.engine_config

    @engine_config.setter
    def engine_config(self, value: EngineConfig) -> None:
        self.enterprise.engine_config = value

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        if self._limiter is None:  # made on first use: anyio needs the running event loop
            self._limiter = anyio.CapacityLimiter(
                self.settings.concurrent_scans or os.cpu_count() or 1
            )
        return self._limiter

    # -- the work, in a worker thread ---------------------------------------------------------
    def run(self, call: Call) -> Reply:
        account = self.accounts.authenticate(text_param(call.fields, "api_token"), call.client_addr)
        call.account_id = account.id
        self.accounts.check_rate(account)
        entitlements = self.accounts.entitlements(account)
        if call.api_method == UPLOAD:
            return self._upload(call, account, entitlements)
        if call.api_method == ENTERPRISE:
            return self._enterprise(call, account, entitlements)
        return self._standard(call, account, entitlements)

    def _media(self, call: Call, max_bytes: int) -> Path:
        """The media to work on: the upload, else what `url` points to, else error 700."""
        url = text_param(call.fields, "url") if call.media is None else None
        path = checked_media(
            call.media, call.media_bytes, url, call.workdir, max_bytes, self.fetcher
        )
        call.decoded_bytes = path.stat().st_size
        return path

    def _standard(self, call: Call, account: Account, entitlements: Entitlements) -> Reply:
        cfg = self.engine_config
        max_bytes = min(entitlements.max_file_bytes, self.settings.standard_max_bytes)
        with Media(self._media(call, max_bytes)) as media:  # one open: judged, then decoded
            info = checked(media.info(), cfg.limits)
            limit_s = cfg.scan.standard_max_s
            too_long = info.duration_s is not None and info.duration_s > limit_s + 0.5
            if too_long and self.settings.standard_long_clips == "reject":
                raise MediaTooLarge(
                    f"the standard method takes clips of up to {limit_s:g} s "
                    f"(this one is {info.duration_s:.0f} s); use /enterprise for longer files"
                )
            # Billed when recognised: one write to the ledger, nothing pending meanwhile.
            with self.accounts.billed_after(account, 1, RECOGNIZE) as bill:
                owners = catalog_owners(account)
                songs = recognize_clip(media, self.data_dir, cfg, owners=owners)
                call.billed, call.chunks = bill.charge(1), 1
        call.audio_s = min(info.duration_s or limit_s, limit_s)
        return Reply(standard_response(songs))

    def _enterprise(self, call: Call, account: Account, entitlements: Entitlements) -> Reply:
        request = enterprise_request(call.fields, call.media is not None, entitlements)
        if wants_job(call.fields):
            return self._submit_job(call, account, entitlements, request)
        path = self._media(call, entitlements.max_file_bytes)
        scanned = self.enterprise.run(account, path, request, started=call.started)
        call.billed, call.chunks = scanned.billed, scanned.result.billable_chunks
        call.audio_s = scanned.audio_s
        return Reply(scanned.reply.body, scanned.reply.media_type)

    def _submit_job(
        self, call: Call, account: Account, entitlements: Entitlements, request: EnterpriseRequest
    ) -> Reply:
        """Queue an enterprise request as a long job: the synchronous call's checks before its
        scan are made now (the media's, then the use case's)."""
        self.enterprise.check_job_account(account)
        media = None
        if call.media is not None:
            media = self._media(call, entitlements.max_file_bytes)
        masked = {**call.fields, "api_token": mask_token(text_param(call.fields, "api_token"))}
        record = self.enterprise.submit_job(
            self.jobs, account, request, fields=masked, http_method=call.http_method, media=media
        )
        return Reply({"status": "success", "result": job_json(record)})

    def _upload(self, call: Call, account: Account, entitlements: Entitlements) -> Reply:
        if not entitlements.custom_catalog:
            raise NotEntitled("the custom catalog (/upload/) is not available to this token")
        audio_id = int_param(call.fields, "audio_id", minimum=0)
        if audio_id is None:
            raise InvalidParameters("audio_id is required: the integer id of this track")
        metadata = metadata_from_mapping(
            {name: text_param(call.fields, name) for name in METADATA_FIELDS}
        )
        path = self._media(call, entitlements.max_file_bytes)
        info = checked_probe(path, self.engine_config.limits)
        check_reference(info, self.engine_config.limits)
        with self.accounts.reservation(account, 1, UPLOAD) as held:
            item = IngestItem(path, metadata=metadata, audio_id=audio_id, owner=owner_of(account))
            outcome = ingest(self.catalog, [item], self.engine_config, workers=1)[0]
            if outcome.error is not None:
                raise outcome.error
            call.billed = held.settle(1, "ok", 0)
        call.audio_s = info.duration_s or 0.0
        return Reply({"status": "success", "result": None})


# -- routes -------------------------------------------------------------------------------------
def _api_method(request: Request, route: str, fields: Mapping[str, str]) -> str:
    if route != RECOGNIZE:
        return route
    if _enterprise_root(request):
        return ENTERPRISE
    named = text_param(fields, "method") or RECOGNIZE
    if named.lower() in (RECOGNIZE, UPLOAD):
        return named.lower()
    # On `/` itself: the try-it pages' forms keep to recognition.
    stream_method = streams.method_named(named) if request.scope.get("path") == "/" else None
    if stream_method is None:
        raise InvalidParameters(
            f"unknown method {named[:40]!r} (recognize, upload, or a streams method: "
            f"{', '.join(streams.METHODS)})"
        )
    return stream_method


def _enterprise_root(request: Request) -> bool:
    """Whether `/` is the enterprise method here: on an `enterprise.*` host (as AudD's
    enterprise host serves it), or on `songscan serve --enterprise-port`."""
    if request.scope.get("path") != "/":
        return False  # the try-it pages keep their method
    if request.headers.get("host", "").lower().startswith("enterprise."):
        return True
    port = getattr(request.app.state, "enterprise_port", None)
    server = request.scope.get("server")  # the listening address the client connected to
    return bool(port) and server is not None and server[1] == port


async def serve(request: Request, route: str) -> Response:
    """Answer one recognition request; `route` is the method its path names."""
    request_id = secrets.token_hex(8)
    reply = await answer(request, route, request_id)
    return reply.response(request_id)


async def answer(request: Request, route: str, request_id: str) -> Reply:
    """The reply to one recognition request, as `serve` sends it (the try-it pages render it)."""
    service: Recognition = request.app.state.recognition
    started = time.perf_counter()
    api_method = ENTERPRISE if route == RECOGNIZE and _enterprise_root(request) else route
    enterprise_echo = api_method == ENTERPRISE
    client_addr = request.client.host if request.client else ""
    fields: dict[str, str] = dict(request.query_params)
    call: Call | None = None
    parsed = ParsedRequest()
    error_code = 0
    service.metrics.in_progress.inc()
    try:
        with temporary_media(service.settings.tmp_dir) as workdir:
            parsed = await read_request(
                request, workdir, max_body_bytes=service.settings.max_body_bytes
            )
            fields = parsed.fields
            api_method = _api_method(request, route, fields)
            enterprise_echo = api_method == ENTERPRISE
            if api_method in streams.METHODS:
                reply, error_code = await _streams_reply(request, api_method, fields, request_id)
            else:
                call = Call(
                    api_method=api_method,
                    http_method=request.method,
                    fields=fields,
                    media=parsed.media,
                    media_bytes=parsed.media_bytes,
                    workdir=workdir,
                    client_addr=client_addr,
                    started=started,
                )
                reply = await anyio.to_thread.run_sync(service.run, call, limiter=service.limiter)
    except ClientDisconnect:
        error_code = -1  # nobody is left to answer
        reply = Reply("", "text/plain", 400)
    except SongscanError as exc:
        error_code = exc.code
        reply = reply_for_error(exc, fields, api_method, request, started, enterprise_echo)
    except Exception:
        log.exception("request %s failed", request_id)
        unexpected = UnexpectedError(request_id)
        error_code = unexpected.code
        reply = reply_for_error(unexpected, fields, api_method, request, started, enterprise_echo)
    finally:
        service.metrics.in_progress.dec()
    elapsed = time.perf_counter() - started
    record_request(service.metrics, api_method, error_code, elapsed, call)
    log_access(
        request,
        request_id,
        api_method,
        fields,
        account_id=call.account_id if call else None,
        status=reply.http_status,
        error_code=error_code,
        elapsed=elapsed,
        body_bytes=parsed.body_bytes,
        chunks=call.chunks if call else 0,
        billed=call.billed if call else 0,
    )
    return replace(reply, fields=fields)


async def _streams_reply(
    request: Request, name: str, fields: Mapping[str, str], request_id: str
) -> tuple[Reply, int]:
    """`/` with `method=<name>`: the streams method's answer, and its error code (0: none)."""
    body, status, headers = await streams.answer(request, name, fields, request_id)
    error = body.get("error")
    code = int(error["error_code"]) if isinstance(error, dict) else 0
    return Reply(body, http_status=status, headers=headers), code


def log_access(
    request: Request,
    request_id: str,
    api_method: str,
    fields: Mapping[str, str],
    *,
    account_id: int | None,
    status: int,
    error_code: int,
    elapsed: float,
    body_bytes: int = 0,
    chunks: int = 0,
    billed: int = 0,
) -> None:
    """One JSON line per request on `songscan.access` (the token masked); `logs.AccessLog`
    writes none of its own for this request."""
    request.scope[LOGGED] = True
    access_log.info(
        json.dumps(
            {
                "request_id": request_id,
                "client": request.client.host if request.client else "",
                "http_method": request.method,
                "path": request.url.path,
                "api_method": api_method,
                "token": mask_token(fields.get("api_token")),
                "account": account_id,
                "status": status,
                "error_code": error_code,
                "body_bytes": body_bytes,
                "chunks": chunks,
                "billed": billed,
                "duration_ms": round(elapsed * 1000, 1),
            }
        )
    )


def reply_for_error(
    exc: SongscanError,
    fields: Mapping[str, str],
    api_method: str,
    request: Request,
    started: float,
    enterprise_echo: bool,
) -> Reply:
    reply = error_reply(
        exc,
        params=fields,
        api_method=api_method,
        http_method=request.method,
        enterprise=enterprise_echo,
        execution_time_s=time.perf_counter() - started,
    )
    return Reply(reply.body, http_status=reply.http_status, headers=reply.headers)


def record_request(
    metrics: Metrics, api_method: str, error_code: int, elapsed: float, call: Call | None = None
) -> None:
    if error_code == -1:
        metrics.requests.labels(api_method, "disconnected").inc()
    else:
        metrics.requests.labels(api_method, str(error_code)).inc()
    metrics.latency.labels(api_method).observe(elapsed)
    if call is not None:
        metrics.chunks.inc(call.chunks)
        metrics.audio_seconds.inc(call.audio_s)
        metrics.media_bytes.inc(call.decoded_bytes)
        metrics.billed.inc(call.billed)


@router.api_route(
    "/",
    methods=["GET"],
    response_model=None,
    operation_id="recognize_get",
    openapi_extra=operation(STANDARD_PARAMS),
)
@router.api_route(
    "/",
    methods=["POST"],
    response_model=None,
    operation_id="recognize_post",
    openapi_extra=operation(STANDARD_PARAMS),
)
async def recognize(request: Request) -> Response:
    """Standard recognition (AudD `recognize`); `method=upload` adds to the custom catalog;
    on an `enterprise.*` host, enterprise recognition."""
    return await serve(request, RECOGNIZE)


@router.api_route(
    "/enterprise",
    methods=["GET"],
    response_model=None,
    operation_id="enterprise_get",
    openapi_extra=operation(ENTERPRISE_PARAMS),
)
@router.api_route(
    "/enterprise",
    methods=["POST"],
    response_model=None,
    operation_id="enterprise_post",
    openapi_extra=operation(ENTERPRISE_PARAMS),
)
@router.api_route("/enterprise/", methods=["GET", "POST"], include_in_schema=False)
async def enterprise(request: Request) -> Response:
    """Enterprise recognition: every selected 12-second chunk of a long file."""
    return await serve(request, ENTERPRISE)


@router.api_route(
    "/upload/",
    methods=["GET"],
    response_model=None,
    operation_id="upload_get",
    openapi_extra=operation(UPLOAD_PARAMS),
)
@router.api_route(
    "/upload/",
    methods=["POST"],
    response_model=None,
    operation_id="upload_post",
    openapi_extra=operation(UPLOAD_PARAMS),
)
@router.api_route("/upload", methods=["GET", "POST"], include_in_schema=False)
async def upload(request: Request) -> Response:
    """Add one track to the caller's custom catalog."""
    return await serve(request, UPLOAD)


@router.get("/healthz", response_model=None)
async def healthz(request: Request) -> Response:
    service: Recognition = request.app.state.recognition

    def check() -> dict[str, Any]:
        return {"status": "ok", "tracks": int(service.catalog.live_ids().shape[0])}

    try:
        return JSONResponse(await anyio.to_thread.run_sync(check))
    except SongscanError as exc:  # the database or the index is away: no traceback per poll
        if not isinstance(exc, DatabaseUnavailable):  # (its outage is logged once already)
            log.warning("health check failed: %s", exc.message)
        error = {"error_code": exc.code, "error_message": exc.message}
        return JSONResponse({"status": "error", "error": error}, status_code=503)
    except Exception:
        log.exception("health check failed")
        return JSONResponse({"status": "error"}, status_code=503)


@router.get("/metrics", response_model=None)
async def metrics(request: Request) -> Response:
    service: Recognition = request.app.state.recognition
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
