"""Durable callbacks: the outbox rows on SQLite and PostgreSQL, and real `songscan serve`
processes killed with SIGKILL while a callback waits for its receiver (it arrives once the
server is back, or once another listening process has taken it over)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from songscan.accounts.models import StreamCallback, StreamListener, utcnow
from songscan.accounts.service import Accounts
from songscan.streams.callbacks import CANT_CONNECT, DELIVERY_HEADER
from songscan.streams.store import StreamStore, longpoll_category
from tests.servers import free_port, start_postgres
from tests.streams.conftest import StreamsServer, add, serve_streams
from tests.streams.radio import CallbackReceiver
from tests.test_crash import wait_until
from tests.test_serve import start_server

# The killed servers' [streams]: a stream that cannot connect is notified (650) within a
# second or two; a dead server's listener row (and so its callbacks) is free after `lease_s`.
SERVER_TOML = """
[api]
url_allow = ["127.0.0.1"]
[streams]
probe_s = 0
gap_tolerance_s = 1
reconnect_min_s = 0.5
reconnect_max_s = 1
read_timeout_s = 2
lease_s = 3
callback_timeout_s = 2
callback_attempts = 20
callback_backoff_s = 1
"""
RADIO_ID = 7


def _waiting(accounts: Accounts) -> int:
    with accounts.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(StreamCallback)) or 0)


def test_an_event_s_callback_is_queued_with_it(store: tuple[Accounts, StreamStore]) -> None:
    """Queued in the event's transaction when the account has a callback URL; not at all
    when the event is not recorded (not the lease's owner)."""
    accounts, streams = store
    stream = streams.get(add(accounts, streams, 1))
    assert stream is not None
    streams.take_leases("server-a", lease_s=30, limit=1)
    recorded = streams.add_event(stream, "notification", {"n": 1}, "server-a")
    assert recorded is not None and not recorded.callback_queued  # no callback URL: longpoll
    assert _waiting(accounts) == 0
    streams.set_callback(stream.account_id, "http://127.0.0.1:9/hook", "key")
    assert streams.add_event(stream, "notification", {"n": "é"}, "server-b") is None
    assert _waiting(accounts) == 0
    recorded = streams.add_event(stream, "notification", {"n": "é"}, "server-a")
    assert recorded is not None and recorded.callback_queued and recorded.dropped == 0
    queued = streams.next_callback("server-a", stream.account_id)
    assert queued is not None
    assert (queued.body, queued.attempts, queued.url, queued.secret) == (
        '{"n":"é"}'.encode(),
        0,
        "http://127.0.0.1:9/hook",
        "key",
    )
    assert streams.next_callback("server-b", stream.account_id) is None  # a's to deliver
    # its schedule is in the row; the URL is the account's at each look (changed since)
    streams.retry_callback("server-a", queued.id, 2, utcnow() + timedelta(seconds=30))
    streams.set_callback(stream.account_id, "http://127.0.0.1:10/new", None)
    again = streams.next_callback("server-a", stream.account_id)
    assert again is not None
    assert (again.id, again.delivery_id, again.attempts) == (queued.id, queued.delivery_id, 2)
    assert again.next_at > utcnow() + timedelta(seconds=20)
    assert (again.url, again.secret) == ("http://127.0.0.1:10/new", None)
    streams.forget_callback("server-a", queued.id)
    assert streams.next_callback("server-a", stream.account_id) is None


def test_an_account_s_queue_keeps_its_newest_callbacks(
    store: tuple[Accounts, StreamStore],
) -> None:
    accounts, _ = store
    streams = StreamStore(accounts.engine, callback_queue_cap=3)
    stream = streams.get(add(accounts, streams, 1))
    other = streams.get(add(accounts, streams, 2))  # another account's queue: its own
    assert stream is not None and other is not None
    for each in (stream, other):
        streams.set_callback(each.account_id, "http://127.0.0.1:9/hook", None)
    streams.take_leases("server-a", lease_s=30, limit=2)
    assert streams.add_event(other, "notification", {"n": 0}, "server-a") is not None
    dropped = []
    for n in range(1, 6):
        recorded = streams.add_event(stream, "notification", {"n": n}, "server-a")
        assert recorded is not None
        dropped.append(recorded.dropped)
    assert dropped == [0, 0, 0, 1, 1]
    left = []
    while (queued := streams.next_callback("server-a", stream.account_id)) is not None:
        left.append(queued.body)
        streams.forget_callback("server-a", queued.id)
    assert left == [b'{"n":3}', b'{"n":4}', b'{"n":5}']  # in order, the oldest dropped
    assert _waiting(accounts) == 1  # the other account's


def test_a_gone_listener_s_callbacks_are_taken_over(
    store: tuple[Accounts, StreamStore],
) -> None:
    """Not while its `stream_listeners` row runs; once it has expired, by the first live
    listener to look, which then delivers them in order; the old owner's writes to them
    (a stalled process waking up) change nothing."""
    accounts, streams = store
    stream = streams.get(add(accounts, streams, 1))
    assert stream is not None
    streams.set_callback(stream.account_id, "http://127.0.0.1:9/hook", None)
    streams.heartbeat("server-a", lease_s=0.6)
    streams.heartbeat("server-b", lease_s=30)
    streams.take_leases("server-a", lease_s=0.6, limit=1)
    for n in range(2):
        assert streams.add_event(stream, "notification", {"n": n}, "server-a") is not None
    assert streams.adopt_callbacks("server-b") == 0  # a is alive
    assert streams.callback_accounts("server-a") == [stream.account_id]
    time.sleep(1.0)  # a dies
    assert streams.adopt_callbacks("server-b") == 2
    assert streams.adopt_callbacks("server-b") == 0
    assert streams.callback_accounts("server-a") == []
    assert streams.callback_accounts("server-b") == [stream.account_id]
    first = streams.next_callback("server-b", stream.account_id)
    assert first is not None and first.body == b'{"n":0}'
    streams.forget_callback("server-a", first.id)  # a, stalled, thinks it delivered it
    streams.retry_callback("server-a", first.id, 3, utcnow())
    again = streams.next_callback("server-b", stream.account_id)
    assert again is not None and (again.id, again.attempts) == (first.id, 0)


def _dead_stream(server: StreamsServer, token: str) -> int:
    """A stream of the account of `token` that cannot connect (added in the store, as
    `addStream` does without its check that the URL plays): its 650 comes within seconds.
    The account's id."""
    account = server.accounts.authenticate(token, "127.0.0.1")
    api = server.app.state.streams
    dead = f"http://127.0.0.1:{free_port()}/live.mp3"
    category = longpoll_category(token, RADIO_ID)
    api.store.add(account.id, RADIO_ID, dead, callbacks_before=False, category=category, slots=1)
    api.supervisor.wake()
    return account.id


def _attempts(server: StreamsServer, account_id: int) -> list[int]:
    """The attempts made so far of each of the account's callbacks waiting."""
    with server.accounts.engine.connect() as conn:
        waiting = select(StreamCallback.attempts).where(StreamCallback.account_id == account_id)
        return list(conn.scalars(waiting.order_by(StreamCallback.id)).all())


def test_a_receiver_that_fails_twice_gets_the_third_attempt(
    streams_server: StreamsServer,
) -> None:
    token = streams_server.new_token()
    with CallbackReceiver(fail_first=2) as receiver:
        streams_server.call("setCallbackUrl", token, url=receiver.url())
        account_id = _dead_stream(streams_server, token)
        try:
            assert receiver.wait_for(lambda r: r.received, timeout_s=60)
            assert receiver.attempts == 3
            assert receiver.notifications()[0]["notification_code"] == CANT_CONNECT
            assert len(receiver.received[0].headers[DELIVERY_HEADER]) == 32
            wait_until("the outbox is empty", lambda: not _attempts(streams_server, account_id))
        finally:
            streams_server.call("deleteStream", token, radio_id=RADIO_ID)


def test_a_waiting_callback_goes_to_the_url_set_since(streams_server: StreamsServer) -> None:
    """The callback URL is the account's at each attempt: a callback waiting for a receiver
    that does not answer goes to the URL `setCallbackUrl` gives while it waits."""
    token = streams_server.new_token()
    with CallbackReceiver(hang=True) as hanging, CallbackReceiver() as receiver:
        streams_server.call("setCallbackUrl", token, url=hanging.url())
        account_id = _dead_stream(streams_server, token)
        try:
            wait_until(
                "an attempt failed",
                lambda: any(n >= 1 for n in _attempts(streams_server, account_id)),
                timeout_s=60,
            )
            streams_server.call("setCallbackUrl", token, url=receiver.url())
            assert receiver.wait_for(lambda r: r.received, timeout_s=60)
            assert receiver.notifications()[0]["notification_code"] == CANT_CONNECT
            assert hanging.received == []
        finally:
            streams_server.call("deleteStream", token, radio_id=RADIO_ID)


def _outbox(accounts: Accounts) -> list[Any]:
    """The outbox rows: (delivery_id, owner, attempts)."""
    with accounts.engine.connect() as conn:
        query = select(StreamCallback.delivery_id, StreamCallback.owner, StreamCallback.attempts)
        return list(conn.execute(query.order_by(StreamCallback.id)).all())


def _data_dir(root: Path, database_url: str | None = None) -> Path:
    data = root / "data"
    data.mkdir()
    extra = f'[accounts]\ndatabase_url = "{database_url}"\n' if database_url else ""
    (data / "songscan.toml").write_text(extra + SERVER_TOML)
    return data


@contextlib.contextmanager
def _killable_server(data: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`songscan serve` on `data` (its process and its base URL), killed at the end."""
    server, port = start_server(data, "--workers", "1")
    try:
        yield server, f"http://127.0.0.1:{port}"
    finally:
        _kill(server)


def _kill(server: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)  # its worker process too
    server.wait(timeout=30)


def _a_callback_waiting(base_url: str, accounts: Accounts, token: str, receiver_port: int) -> Any:
    """A stream that cannot connect (its 650 queued) and a callback URL nobody answers on:
    the outbox row, once its first attempt has failed."""
    with httpx.Client(base_url=base_url, timeout=60) as http:
        hook = f"http://127.0.0.1:{receiver_port}/hook"
        assert http.post("/setCallbackUrl/", data={"api_token": token, "url": hook}).json() == {
            "status": "success",
            "result": None,
        }
        dead = f"http://127.0.0.1:{free_port()}/live.mp3"
        fields = {"api_token": token, "url": dead, "radio_id": str(RADIO_ID)}
        added = http.post("/addStream/", data=fields).json()
        assert added["status"] == "success", added
    rows: list[Any] = []

    def attempted() -> bool:
        rows[:] = _outbox(accounts)
        return len(rows) == 1 and rows[0].attempts >= 1

    wait_until("the callback has failed once", attempted, timeout_s=60)
    return rows[0]


def _check_received_once(receiver: CallbackReceiver, delivery_id: str) -> None:
    ids = [r.headers[DELIVERY_HEADER] for r in receiver.received]
    assert ids.count(delivery_id) == 1, ids
    assert len(set(ids)) == len(ids), ids
    first = receiver.received[0]
    assert first.headers[DELIVERY_HEADER] == delivery_id
    notification = first.body["notification"]
    assert (notification["radio_id"], notification["notification_code"]) == (
        RADIO_ID,
        CANT_CONNECT,
    )


def test_a_callback_survives_a_killed_server(tmp_path: Path) -> None:
    """The receiver is down when the 650 is reported; the server is killed (SIGKILL) with
    the callback waiting. Restarted on the same data directory, with the receiver up, it
    delivers it, once, and the outbox is empty. (The stream is deleted while the server is
    down: a callback queued before its stream was deleted is still delivered.)"""
    data = _data_dir(tmp_path)
    accounts = Accounts.open(data, {})
    created = accounts.identity.create_account(plan="enterprise")
    receiver_port = free_port()
    try:
        with _killable_server(data) as (_, base_url):  # SIGKILLed as the block ends
            waiting = _a_callback_waiting(base_url, accounts, created.token, receiver_port)
        assert _outbox(accounts) == [waiting]  # as it was: the kill lost nothing
        StreamStore(accounts.engine).delete(created.account.id, RADIO_ID)
        with CallbackReceiver(port=receiver_port) as receiver, _killable_server(data):
            wait_until("the outbox is empty", lambda: _outbox(accounts) == [], timeout_s=60)
            assert receiver.received
            time.sleep(2)  # a second delivery would come by now
            assert len(receiver.received) == 1
            _check_received_once(receiver, waiting.delivery_id)
    finally:
        accounts.close()


def test_a_live_listener_takes_over_a_killed_one_s_callbacks(tmp_path: Path) -> None:
    """PostgreSQL, two listening processes: a `songscan serve` holds the stream and its
    callback (its receiver down); another server, started after it, leaves both alone while
    the first is alive. The first is killed (SIGKILL), the receiver comes up: the second
    delivers the dead one's callback, once, before its own for the stream it took over."""
    postgres = start_postgres()
    try:
        url = postgres.create_database()
        (tmp_path / "a").mkdir()
        data = _data_dir(tmp_path / "a", url)
        accounts = Accounts(url, {})
        created = accounts.identity.create_account(plan="enterprise")
        receiver_port = free_port()
        try:
            with _killable_server(data) as (server, base_url):
                waiting = _a_callback_waiting(base_url, accounts, created.token, receiver_port)
                (tmp_path / "b").mkdir()
                with serve_streams(tmp_path / "b", tmp_path, {}, database_url=url) as spare:
                    sender = spare.app.state.streams.supervisor.ctx.reporter.sender
                    wait_until("the second server listens", lambda: _listeners(accounts) == 2)
                    sender.tick()  # as its supervisor's tick does: the first one is alive
                    assert [r.owner for r in _outbox(accounts)] == [waiting.owner]
                    _kill(server)
                    with CallbackReceiver(port=receiver_port) as receiver:
                        wait_until(
                            "the callback is delivered",
                            lambda: any(
                                r.headers[DELIVERY_HEADER] == waiting.delivery_id
                                for r in receiver.received
                            ),
                            timeout_s=60,
                        )
                        time.sleep(2)
                        _check_received_once(receiver, waiting.delivery_id)
                    spare.call("deleteStream", created.token, radio_id=RADIO_ID)
        finally:
            accounts.close()
    finally:
        postgres.stop()


def _listeners(accounts: Accounts) -> int:
    with accounts.engine.connect() as conn:
        live = select(func.count()).where(StreamListener.expires_at > utcnow())
        return int(conn.scalar(live) or 0)
