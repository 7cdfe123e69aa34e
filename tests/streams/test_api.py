"""The streams methods over HTTP: callback URL, adding, changing, listing and deleting streams,
stream slots per plan, longpoll's timeout, and the bad input each refuses with its error code.
A real server (uvicorn on loopback); streams point at an MP3 served on loopback."""

from __future__ import annotations

import hashlib
import time

import audd
import httpx
import pytest
from audd.errors import AudDAPIError, AudDStreamLimitError

from songscan.accounts.plans import DEFAULT_PLANS
from tests.streams.conftest import StreamsServer, quiet_url


def error_code(body: dict[str, object]) -> int:
    assert body["status"] == "error", body
    error = body["error"]
    assert isinstance(error, dict)
    return int(error["error_code"])


def category(token: str, radio_id: int) -> str:
    inner = hashlib.md5(token.encode()).hexdigest()
    return hashlib.md5(f"{inner}{radio_id}".encode()).hexdigest()[:9]


def test_callback_url_is_error_19_until_set(streams_server: StreamsServer) -> None:
    token = streams_server.new_token()
    assert error_code(streams_server.call("getCallbackUrl", token)) == 19
    url = "http://127.0.0.1:9/hook?return=spotify"
    ok = streams_server.call("setCallbackUrl", token, url=url)
    assert ok == {"status": "success", "result": None}
    assert streams_server.call("getCallbackUrl", token) == {"status": "success", "result": url}
    # GET with the query string works as well as a POST body (AudD takes both)
    with streams_server.client() as client:
        got = client.get("/getCallbackUrl/", params={"api_token": token}).json()
    assert got["result"] == url


def test_add_list_change_delete(streams_server: StreamsServer) -> None:
    token = streams_server.new_token()
    url = quiet_url(streams_server)
    assert streams_server.call("addStream", token, url=url, radio_id=7)["status"] == "success"
    before = streams_server.call("addStream", token, url=url, radio_id=3, callbacks="before")
    assert before["status"] == "success"
    listed = streams_server.call("getStreams", token)["result"]
    assert isinstance(listed, list)
    assert [s["radio_id"] for s in listed] == [3, 7]
    assert listed[0]["longpoll_category"] == category(token, 3)
    assert listed[1] == {
        "radio_id": 7,
        "url": url,
        "stream_running": listed[1]["stream_running"],
        "longpoll_category": category(token, 7),
    }
    # the listener connects to it: stream_running turns true
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listed = streams_server.call("getStreams", token)["result"]
        assert isinstance(listed, list)
        if all(s["stream_running"] for s in listed):
            break
        time.sleep(0.3)
    assert all(s["stream_running"] for s in listed), listed

    other = f"{url}?v=2"
    assert streams_server.call("setStreamUrl", token, radio_id=7, url=other)["status"] == "success"
    listed = streams_server.call("getStreams", token)["result"]
    assert isinstance(listed, list)
    assert {s["radio_id"]: s["url"] for s in listed} == {3: url, 7: other}

    assert streams_server.call("deleteStream", token, radio_id=7)["status"] == "success"
    assert error_code(streams_server.call("deleteStream", token, radio_id=7)) == 50
    assert error_code(streams_server.call("setStreamUrl", token, radio_id=7, url=url)) == 50
    streams_server.call("deleteStream", token, radio_id=3)
    assert streams_server.call("getStreams", token)["result"] == []
    # another account's streams are not visible, nor its radio_ids taken
    assert streams_server.call("getStreams", streams_server.new_token())["result"] == []


def test_stream_slots_per_plan(streams_server: StreamsServer) -> None:
    url = quiet_url(streams_server)
    trial = streams_server.new_token("trial")
    assert DEFAULT_PLANS["trial"].entitlements.stream_slots == 0
    assert error_code(streams_server.call("addStream", trial, url=url, radio_id=1)) == 610

    startup = streams_server.new_token("startup")
    slots = DEFAULT_PLANS["startup"].entitlements.stream_slots
    for radio_id in range(slots):
        assert streams_server.call("addStream", startup, url=url, radio_id=radio_id)["status"] == (
            "success"
        )
    refused = streams_server.call("addStream", startup, url=url, radio_id=99)
    assert error_code(refused) == 610
    # a slot given back can be taken again
    streams_server.call("deleteStream", startup, radio_id=0)
    assert streams_server.call("addStream", startup, url=url, radio_id=99)["status"] == "success"
    for radio_id in (*range(1, slots), 99):
        streams_server.call("deleteStream", startup, radio_id=radio_id)


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"radio_id": 1}, 50),  # no url
        ({"url": "http://127.0.0.1:1/x"}, 50),  # no radio_id
        ({"radio_id": "one", "url": "http://127.0.0.1:1/x"}, 50),
        ({"radio_id": 1, "url": "http://10.0.0.1/live.mp3"}, 600),  # private address
        ({"radio_id": 1, "url": "http://169.254.169.254/latest/"}, 600),
        ({"radio_id": 1, "url": "file:///etc/passwd"}, 600),
        ({"radio_id": 1, "url": "http://127.0.0.1:1/nothing-listens"}, 600),
        ({"radio_id": 1, "url": "/page.html"}, 600),  # a web page, not a stream
        ({"radio_id": 1, "url": "/to-private"}, 600),  # a redirect to a private address
        ({"radio_id": 1, "url": "/quiet.mp3", "callbacks": "after"}, 50),
    ],
)
def test_add_stream_refuses_bad_input(
    streams_server: StreamsServer, params: dict[str, object], code: int
) -> None:
    token = streams_server.new_token()
    url = params.get("url")
    if isinstance(url, str) and url.startswith("/"):
        params = {**params, "url": streams_server.media.url(url)}
    started = time.monotonic()
    body = streams_server.call("addStream", token, **params)
    assert error_code(body) == code, body
    assert time.monotonic() - started < 10
    assert streams_server.call("getStreams", token)["result"] == []
    echoed = body["request_params"]
    assert isinstance(echoed, dict) and token not in str(echoed)


def test_duplicate_radio_id(streams_server: StreamsServer) -> None:
    token = streams_server.new_token()
    url = quiet_url(streams_server)
    assert streams_server.call("addStream", token, url=url, radio_id=5)["status"] == "success"
    assert error_code(streams_server.call("addStream", token, url=url, radio_id=5)) == 50
    listed = streams_server.call("getStreams", token)["result"]
    assert isinstance(listed, list) and len(listed) == 1
    streams_server.call("deleteStream", token, radio_id=5)


def test_tokens_and_callback_url_checks(streams_server: StreamsServer) -> None:
    assert error_code(streams_server.call("getStreams", None)) == 901
    assert error_code(streams_server.call("getStreams", "0" * 40)) == 900
    assert error_code(streams_server.call("getStreams", "test")) == 904  # the public token
    token = streams_server.new_token()
    assert error_code(streams_server.call("setCallbackUrl", token)) == 50
    private = streams_server.call("setCallbackUrl", token, url="http://192.168.1.10/hook")
    assert error_code(private) == 600
    assert error_code(streams_server.call("getCallbackUrl", token)) == 19


def test_longpoll_times_out_and_checks_its_parameters(streams_server: StreamsServer) -> None:
    with streams_server.client() as client:
        started = time.monotonic()
        body = client.get("/longpoll/", params={"category": "0123456789"[:9], "timeout": 1}).json()
        assert time.monotonic() - started >= 0.9
        assert body["timeout"] == "no events before timeout"
        assert isinstance(body["timestamp"], int)
        for bad in ({"category": "xyz", "timeout": 1}, {"category": "012345678", "timeout": 91}):
            assert client.get("/longpoll/", params=bad).json()["error"]["error_code"] == 50


def test_the_sdk_drives_the_streams_methods(streams_server: StreamsServer) -> None:
    """AudD's SDK, its base URL pointed at the server: set/get the callback URL, add, list,
    delete, and its stream-limit error class for 610."""
    token = streams_server.new_token("startup")
    url = quiet_url(streams_server)
    base = streams_server.base_url
    transport = httpx.HTTPTransport()

    class ToServer(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            target = httpx.URL(base)
            request.url = request.url.copy_with(scheme="http", host=target.host, port=target.port)
            return transport.handle_request(request)

    with (
        httpx.Client(transport=ToServer(), timeout=60) as http,
        audd.AudD(token, httpx_client=http, max_retries=1) as client,
    ):
        with pytest.raises(AudDAPIError) as none_set:
            client.streams.get_callback_url()
        assert none_set.value.error_code == 19
        client.streams.set_callback_url("http://127.0.0.1:9/hook")
        assert client.streams.get_callback_url() == "http://127.0.0.1:9/hook"
        client.streams.add(url, 11)
        client.streams.add(url, 12, callbacks="before")
        with pytest.raises(AudDStreamLimitError):
            client.streams.add(url, 13)
        listed = client.streams.list()
        assert [(s.radio_id, s.url) for s in listed] == [(11, url), (12, url)]
        assert listed[0].longpoll_category == client.streams.derive_longpoll_category(11)
        client.streams.set_url(12, f"{url}?b")
        client.streams.delete(11)
        client.streams.delete(12)
        assert client.streams.list() == []


def test_streams_methods_on_root_with_method(streams_server: StreamsServer) -> None:
    """`/?method=addStream&…` (AudD takes it as well as `/addStream/`): each streams method
    answers on `/` as on its own path, the method named in the query string or the body."""
    token = streams_server.new_token()
    url = quiet_url(streams_server)
    hook = "http://127.0.0.1:9/root-hook"
    with streams_server.client() as client:

        def root(method: str, **params: object) -> dict[str, object]:
            query = {"method": method, **{k: str(v) for k, v in params.items()}}
            body: dict[str, object] = client.get("/", params=query).json()
            return body

        unset = root("getCallbackUrl", api_token=token)
        assert error_code(unset) == 19
        assert unset["request_api_method"] == "getCallbackUrl"
        assert root("setCallbackUrl", api_token=token, url=hook) == {
            "status": "success",
            "result": None,
        }
        assert root("getCallbackUrl", api_token=token) == {"status": "success", "result": hook}
        added = root("addStream", api_token=token, url=url, radio_id=21)
        assert added == {"status": "success", "result": None}
        # the method in a POST body; its name in any case
        form = {"method": "getstreams", "api_token": token}
        listed = client.post("/", data=form).json()["result"]
        assert [(s["radio_id"], s["url"], s["longpoll_category"]) for s in listed] == [
            (21, url, category(token, 21))
        ]
        # the same errors as the method's own path
        assert error_code(root("addStream", api_token=token, url=url, radio_id=21)) == 50
        private = root("addStream", api_token=token, url="http://10.0.0.1/x.mp3", radio_id=22)
        assert error_code(private) == 600
        assert token not in str(private)
        assert error_code(root("getStreams")) == 901
        assert root("setStreamUrl", api_token=token, radio_id=21, url=f"{url}?v=3")["status"] == (
            "success"
        )
        changed = streams_server.call("getStreams", token)["result"]
        assert isinstance(changed, list) and changed[0]["url"] == f"{url}?v=3"
        assert root("deleteStream", api_token=token, radio_id=21)["status"] == "success"
        assert root("getStreams", api_token=token) == {"status": "success", "result": []}
        # a method nobody has: the contract's error 50, naming the methods there are
        unknown = client.post("/", data={"method": "addStreams", "api_token": token}).json()
        assert error_code(unknown) == 50
        assert "addStream" in unknown["error"]["error_message"]
        assert "recognize" in unknown["error"]["error_message"]
