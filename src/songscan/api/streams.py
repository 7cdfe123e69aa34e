"""AudD's streams API: `/setCallbackUrl/`, `/getCallbackUrl/`, `/addStream/`, `/setStreamUrl/`,
`/deleteStream/`, `/getStreams/` (GET or POST, `api_token` required) and `/longpoll/` (no token:
the category names the stream). docs/api.md, "Live streams".

A method's parameters are read like the recognition methods' (query string, urlencoded or
multipart body); its work (the database, and `addStream`'s check that the URL plays) runs in a
worker thread. The listeners themselves are `songscan.streams`; `install` makes this process's
supervisor, which the app's lifespan starts and stops (with a broker set it listens to nothing:
the scan workers do, `songscan.streams.worker`; a change reaches them at their next tick).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from songscan.accounts.service import Account, Accounts
from songscan.api.errors import UnexpectedError, error_reply
from songscan.api.openapi import operation
from songscan.api.params import int_param, read_request, text_param
from songscan.config import EngineConfig
from songscan.errors import InvalidParameters, NotEntitled, SongscanError
from songscan.sources import AllowList, check_url, temporary_media
from songscan.streams.settings import StreamsSettings
from songscan.streams.source import StreamOptions, probe_stream, stream_target
from songscan.streams.store import NoCallbackUrl, StreamStore, longpoll_category
from songscan.streams.supervisor import StreamSupervisor, limit_listener_arenas, supervisor

log = logging.getLogger("songscan.api")
router = APIRouter()

MAX_BODY_BYTES = 64 * 1024  # these methods take a few short parameters, never media
LONGPOLL_POLL_S = 0.5  # how often a waiting longpoll looks for new events
_CATEGORY = re.compile(r"[0-9a-f]{9}")


@dataclass(frozen=True)
class Method:
    """One streams method: what it does with (the service, the account, the parameters)."""

    run: Callable[[StreamsApi, Account, Mapping[str, str]], Any]
    params: list[tuple[str, str, str]]


class StreamsApi:
    """The streams side of an app: records, settings, and this process's listeners."""

    def __init__(
        self,
        accounts: Accounts,
        store: StreamStore,
        settings: StreamsSettings,
        allow: AllowList,
        supervisor: StreamSupervisor,
        options: StreamOptions,
    ) -> None:
        self.accounts = accounts
        self.store = store
        self.settings = settings
        self.allow = allow
        self.supervisor = supervisor
        self.options = options

    def run(self, name: str, fields: Mapping[str, str], client_addr: str) -> Any:
        """The `result` of method `name`, or a SongscanError."""
        token = text_param(fields, "api_token")
        account = self.accounts.authenticate(token, client_addr)
        self.accounts.check_rate(account)
        if account.is_test:
            raise NotEntitled("live streams need an api_token of your own, not the test token")
        return METHODS[name].run(self, account, fields)

    # -- the methods ---------------------------------------------------------------------------

    def set_callback_url(self, account: Account, fields: Mapping[str, str]) -> None:
        url = _required(fields, "url")
        check_url(url, self.allow)  # a callback is a request from this server: url= rules
        self.store.set_callback(account.id, url, text_param(fields, "secret"))

    def get_callback_url(self, account: Account, fields: Mapping[str, str]) -> str:
        callback = self.store.callback(account.id)
        if callback is None:
            raise NoCallbackUrl()
        return callback.url

    def add_stream(self, account: Account, fields: Mapping[str, str]) -> None:
        radio_id = _radio_id(fields)
        url = _required(fields, "url")
        callbacks = (text_param(fields, "callbacks") or "").lower()
        if callbacks not in ("", "before"):
            raise InvalidParameters("callbacks must be 'before' or left out")
        slots = self.accounts.entitlements(account).stream_slots
        token = text_param(fields, "api_token") or ""
        # The cheap refusals first; `add` checks slots and radio_id again, atomically.
        self.store.check_room(account.id, radio_id, slots)
        self._check_stream_url(url)
        self.store.add(
            account.id,
            radio_id,
            url,
            callbacks_before=callbacks == "before",
            category=longpoll_category(token, radio_id),
            slots=slots,
        )
        self.supervisor.wake()

    def set_stream_url(self, account: Account, fields: Mapping[str, str]) -> None:
        radio_id = _radio_id(fields)
        url = _required(fields, "url")
        self.store.require(account.id, radio_id)
        self._check_stream_url(url)
        self.store.set_url(account.id, radio_id, url)
        self.supervisor.wake()

    def delete_stream(self, account: Account, fields: Mapping[str, str]) -> None:
        self.store.delete(account.id, _radio_id(fields))
        self.supervisor.wake()

    def get_streams(self, account: Account, fields: Mapping[str, str]) -> list[dict[str, Any]]:
        token = text_param(fields, "api_token") or ""
        return [s.api_json() for s in self.store.of_account(account.id, token)]

    def _check_stream_url(self, url: str) -> None:
        """Error 600 unless `url` (or the page a shortcut names) is allowed and plays audio
        now."""
        check_url(stream_target(url), self.allow)
        if self.settings.probe_s > 0:
            probe_stream(url, self.options, within_s=self.settings.probe_s)


def _required(fields: Mapping[str, str], name: str) -> str:
    value = text_param(fields, name)
    if value is None:
        raise InvalidParameters(f"{name} is required")
    return value


def _radio_id(fields: Mapping[str, str]) -> int:
    radio_id = int_param(fields, "radio_id")
    if radio_id is None:
        raise InvalidParameters("radio_id is required: the integer you name this stream by")
    return radio_id


_TOKEN = ("api_token", "string", "The caller's token (required).")
_RADIO = ("radio_id", "integer", "Your number for the stream, unique in your account.")
METHODS: dict[str, Method] = {
    "setCallbackUrl": Method(
        StreamsApi.set_callback_url,
        [
            _TOKEN,
            ("url", "string", "Where results and notifications are POSTed."),
            ("secret", "string", "songscan: the key of the X-Songscan-Signature HMAC header."),
        ],
    ),
    "getCallbackUrl": Method(StreamsApi.get_callback_url, [_TOKEN]),
    "addStream": Method(
        StreamsApi.add_stream,
        [
            _TOKEN,
            (
                "url",
                "string",
                "The stream: Icecast/Shoutcast, HLS (.m3u8), .m3u/.pls, HTTP audio, a web page"
                " with a live stream (yt-dlp), or youtube:ID, youtube:@HANDLE,"
                " youtube-ch:CHANNEL_ID, twitch:CHANNEL.",
            ),
            _RADIO,
            ("callbacks", "string", "`before`: report a song when recognised, not when ended."),
        ],
    ),
    "setStreamUrl": Method(
        StreamsApi.set_stream_url,
        [_TOKEN, _RADIO, ("url", "string", "The stream's new URL.")],
    ),
    "deleteStream": Method(StreamsApi.delete_stream, [_TOKEN, _RADIO]),
    "getStreams": Method(StreamsApi.get_streams, [_TOKEN]),
}


# -- routes -------------------------------------------------------------------------------------
_BY_LOWER_NAME = {name.lower(): name for name in METHODS}


def method_named(name: str) -> str | None:
    """The streams method `name` names, in any case (`method=addstream` on `/`), or None."""
    return _BY_LOWER_NAME.get(name.lower())


async def _serve(request: Request, name: str) -> Response:
    request_id = secrets.token_hex(8)
    fields: dict[str, str] = dict(request.query_params)
    try:
        with temporary_media(request.app.state.recognition.settings.tmp_dir) as workdir:
            parsed = await read_request(request, workdir, max_body_bytes=MAX_BODY_BYTES)
        fields = parsed.fields
    except SongscanError as exc:
        return _error(exc, fields, name, request, request_id)
    body, status, headers = await answer(request, name, fields, request_id)
    return JSONResponse(body, status, headers=headers)


async def answer(
    request: Request, name: str, fields: Mapping[str, str], request_id: str
) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The JSON body, HTTP status and headers of streams method `name` with the request's
    parsed `fields`: what `/<name>/` answers, and `/` with `method=<name>`."""
    service: StreamsApi = request.app.state.streams
    client_addr = request.client.host if request.client else ""
    try:
        result = await anyio.to_thread.run_sync(service.run, name, fields, client_addr)
    except SongscanError as exc:
        return _error_reply(exc, fields, name, request, request_id)
    except Exception:
        log.exception("request %s failed", request_id)
        return _error_reply(UnexpectedError(request_id), fields, name, request, request_id)
    return {"status": "success", "result": result}, 200, {"X-Request-ID": request_id}


def _error_reply(
    exc: SongscanError, fields: Mapping[str, str], name: str, request: Request, request_id: str
) -> tuple[dict[str, Any], int, dict[str, str]]:
    reply = error_reply(
        exc, params=fields, api_method=name, http_method=request.method, enterprise=False
    )
    return reply.body, reply.http_status, {**reply.headers, "X-Request-ID": request_id}


def _error(
    exc: SongscanError, fields: Mapping[str, str], name: str, request: Request, request_id: str
) -> Response:
    body, status, headers = _error_reply(exc, fields, name, request, request_id)
    return JSONResponse(body, status, headers=headers)


def _route(name: str, method: Method) -> None:
    async def endpoint(request: Request) -> Response:
        return await _serve(request, name)

    endpoint.__doc__ = f"AudD streams API: `{name}` (docs/api.md, Live streams)."
    extra = operation(method.params)
    for http in ("GET", "POST"):
        router.add_api_route(
            f"/{name}/",
            endpoint,
            methods=[http],
            response_model=None,
            operation_id=f"{name}_{http.lower()}",
            openapi_extra=extra,
        )
    router.add_api_route(f"/{name}", endpoint, methods=["GET", "POST"], include_in_schema=False)


for _name, _method in METHODS.items():
    _route(_name, _method)


@router.get("/longpoll/", response_model=None)
@router.get("/longpoll", response_model=None, include_in_schema=False)
async def longpoll(request: Request) -> Response:
    """A stream's next event (`category`, see `getStreams`), waiting up to `timeout` seconds
    (1-90, default 50) for one after `since_time` (milliseconds; default: now)."""
    service: StreamsApi = request.app.state.streams
    fields = dict(request.query_params)
    now_ms = int(time.time() * 1000)
    try:
        category = (text_param(fields, "category") or "").lower()
        if not _CATEGORY.fullmatch(category):
            raise InvalidParameters("category must be the 9 hex digits getStreams gives")
        timeout = int_param(fields, "timeout", minimum=1)
        timeout = 50 if timeout is None else timeout
        if timeout > 90:
            raise InvalidParameters("timeout must be between 1 and 90 seconds")
        since = int_param(fields, "since_time", minimum=0)
    except SongscanError as exc:
        return _error(exc, fields, "longpoll", request, secrets.token_hex(8))
    since_ms = now_ms if since is None else since
    deadline = time.monotonic() + timeout
    while True:
        events = await anyio.to_thread.run_sync(service.store.events_after, category, since_ms)
        if events:
            return JSONResponse({**events[0].body, "timestamp": events[0].at_ms})
        left = deadline - time.monotonic()
        if left <= 0 or await request.is_disconnected():
            # `since_ms` again: an event recorded just now is still after it for the next poll.
            return JSONResponse({"timeout": "no events before timeout", "timestamp": since_ms})
        await anyio.sleep(min(LONGPOLL_POLL_S, left))


def install(app: FastAPI) -> None:
    """Add the streams API to an app that has its recognition side (`recognition.install`:
    its `[api]` settings and engine config are shared), and make this process's supervisor
    (`app.state.streams.supervisor`, which the app's lifespan starts and stops)."""
    accounts: Accounts = app.state.accounts
    recognition = app.state.recognition
    settings = StreamsSettings.from_config(app.state.config)
    if app.state.settings.broker_url is not None:  # the scan workers listen (streams.worker)
        settings = replace(settings, listen=False)
    if settings.listen:
        limit_listener_arenas()
    allow: AllowList = recognition.settings.url_allow
    engine: EngineConfig = recognition.engine_config
    streams = supervisor(app.state.data_dir, accounts, engine, settings, allow)
    app.state.streams = StreamsApi(
        accounts, streams.store, settings, allow, streams, streams.ctx.options
    )
    app.include_router(router)
