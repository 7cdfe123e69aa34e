"""One listener per stream: the lease rows on SQLite and PostgreSQL, and two servers sharing
one database (one listens; when it stops, the other takes the stream over)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from songscan.accounts.service import Accounts
from songscan.streams.store import StreamStore
from tests.api.conftest import build_catalog
from tests.api.music import excerpt, music
from tests.streams.conftest import StreamsServer, add, quiet_url, serve_streams
from tests.streams.radio import CallbackReceiver, Icecast, Piece, SourceClient


def test_a_stream_has_one_owner_until_its_lease_expires(
    store: tuple[Accounts, StreamStore],
) -> None:
    accounts, streams = store
    first, second = add(accounts, streams, 1), add(accounts, streams, 2)
    taken = streams.take_leases("server-a", lease_s=0.6, limit=1)
    assert [s.id for s in taken] == [first]
    assert [s.id for s in streams.take_leases("server-b", 30, 10)] == [second]
    assert streams.take_leases("server-a", 30, 10) == []  # both held
    assert streams.renew_leases("server-a", [first, second], 0.6) == {first}  # not b's
    time.sleep(1.0)  # server-a stops renewing (it died): its lease expires
    assert [s.id for s in streams.take_leases("server-b", 30, 10)] == [first]
    assert streams.renew_leases("server-a", [first], 30) == set()  # a's listener must stop
    assert streams.renew_leases("server-b", [first, second], 30) == {first, second}
    streams.release_leases("server-b")
    assert {s.id for s in streams.take_leases("server-c", 30, 10)} == {first, second}


def test_only_the_lease_owner_records_a_stream_s_events(
    store: tuple[Accounts, StreamStore],
) -> None:
    """The fence: a listener whose stream was taken over (its process stalled past the lease,
    then woke up) or deleted records nothing, so the stream's events come from one owner."""
    accounts, streams = store
    stream_id = add(accounts, streams, 1)
    stream = streams.get(stream_id)
    assert stream is not None
    body = {"status": "-", "n": 1}
    assert streams.add_event(stream, "notification", body, "server-a") is None  # no lease yet
    streams.take_leases("server-a", lease_s=0.6, limit=1)
    assert streams.add_event(stream, "notification", body, "server-a") is not None
    assert streams.add_event(stream, "notification", body, "server-b") is None  # not b's
    time.sleep(1.0)  # a stalls: its lease runs out, nobody has taken it yet: still a's
    assert streams.add_event(stream, "notification", {"n": 2}, "server-a") is not None
    assert [s.id for s in streams.take_leases("server-b", 30, 10)] == [stream_id]
    assert streams.add_event(stream, "notification", {"n": 3}, "server-a") is None  # b's now
    assert streams.add_event(stream, "notification", {"n": 4}, "server-b") is not None
    assert [e.body for e in streams.recent_events(stream_id)] == [{"n": 4}, {"n": 2}, body]
    streams.set_state(stream_id, True, None, "server-a")  # nor does a set its state
    assert not _running(streams, stream_id)
    streams.set_state(stream_id, True, None, "server-b")
    assert _running(streams, stream_id)


def _running(streams: StreamStore, stream_id: int) -> bool:
    stream = streams.get(stream_id)
    assert stream is not None
    return stream.running


def test_the_fair_share_counts_the_listening_processes(
    store: tuple[Accounts, StreamStore],
) -> None:
    """Server instances that do not listen (API nodes when the scan workers listen) do not
    count; a listener that stops, or stops renewing, no longer counts."""
    accounts, streams = store
    for radio_id in range(4):
        add(accounts, streams, radio_id)
    accounts.ledger.start_lease()  # an API node's server lease: not a listener
    assert streams.fair_share() == 4
    streams.heartbeat("worker-a", lease_s=30)
    streams.heartbeat("worker-b", lease_s=0.6)
    assert streams.fair_share() == 2
    time.sleep(1.0)  # b dies
    assert streams.fair_share() == 4
    streams.heartbeat("worker-b", lease_s=30)  # b again, then c
    streams.heartbeat("worker-c", lease_s=30)
    assert streams.fair_share() == 2  # 4 streams over 3: rounded up
    streams.release_leases("worker-c")  # c stops cleanly
    assert streams.fair_share() == 2
    streams.release_leases("worker-b")
    assert streams.fair_share() == 4


@contextmanager
def two_servers(tmp_path: Path) -> Iterator[tuple[StreamsServer, StreamsServer]]:
    """Two servers over one data directory and one accounts database."""
    data = tmp_path / "data"
    data.mkdir()
    with serve_streams(data, tmp_path, {}) as first:
        url = first.accounts.database_url
        with serve_streams(data, tmp_path, {}, database_url=url) as second:
            yield first, second


def test_two_servers_share_the_streams_and_take_over(tmp_path: Path) -> None:
    """Two servers on one database: a stream is listened to by one of them at a time; when
    that one stops, the other takes it over."""
    with two_servers(tmp_path) as (first, second):
        token = first.new_token()
        stream_url = first.media.url("/quiet.mp3")
        added = second.call("addStream", token, url=stream_url, radio_id=4)
        assert added["status"] == "success", added
        account = first.accounts.authenticate(token, "127.0.0.1")
        stream_id = first.app.state.streams.store.of_account(account.id)[0].id
        assert _eventually(lambda: _listeners(first, second, stream_id) == 1)
        time.sleep(3)  # several ticks: still exactly one listener
        assert _listeners(first, second, stream_id) == 1
        holder, spare = (first, second) if stream_id in _listening(first) else (second, first)
        holder.app.state.streams.supervisor.stop()  # as its lifespan's end does
        assert stream_id not in _listening(holder)
        assert _eventually(lambda: stream_id in _listening(spare))
        spare.call("deleteStream", token, radio_id=4)
        assert _eventually(lambda: stream_id not in _listening(spare))


def test_two_servers_split_the_streams_between_them(tmp_path: Path) -> None:
    """Streams added through one server are not all taken by it: each live server instance
    listens to its fair share (here 2 of 4), so two worker processes split the work."""
    with two_servers(tmp_path) as (first, second):
        token = first.new_token()
        for radio_id in range(4):
            added = first.call("addStream", token, url=quiet_url(first), radio_id=radio_id)
            assert added["status"] == "success", added
        assert _eventually(lambda: len(_listening(first) | _listening(second)) == 4)
        assert len(_listening(first)) == len(_listening(second)) == 2
        assert not _listening(first) & _listening(second)


def test_a_stream_taken_over_mid_song_reports_that_play_once(
    tmp_path: Path, icecast: Icecast
) -> None:
    """`callbacks=before`: the holder reports song 1 at its start, then stops; the other
    server takes the stream over and hears the rest of song 1: the same play, not reported
    again. Song 2, which it hears whole, it reports."""
    data, files = tmp_path / "data", tmp_path / "files"
    data.mkdir()
    files.mkdir()
    songs = build_catalog(data, files)
    programme = [
        Piece("unknown", music(941, 6.0)),
        Piece("song1", excerpt(songs[1], 0.0, 60.0)),
        Piece("song2", excerpt(songs[2], 0.0, 30.0)),
        Piece("unknown", music(942, 8.0)),
    ]
    with (
        serve_streams(data, tmp_path, songs) as first,
        serve_streams(data, tmp_path, songs, database_url=first.accounts.database_url) as second,
        CallbackReceiver() as receiver,
    ):
        token = first.new_token()
        first.call("setCallbackUrl", token, url=receiver.url())
        source = SourceClient(icecast, "handover.mp3", programme).play()
        url = icecast.url("handover.mp3")
        added = first.call("addStream", token, url=url, radio_id=6, callbacks="before")
        assert added["status"] == "success", added
        assert receiver.wait_for(lambda r: len(r.results()) >= 1, timeout_s=45)
        holder, spare = (first, second) if _listening(first) else (second, first)
        holder.app.state.streams.supervisor.stop()
        assert _eventually(lambda: len(_listening(spare)) == 1)
        source.wait()
        assert receiver.wait_for(lambda r: len(r.results()) >= 2, timeout_s=30)
        time.sleep(3)  # a second report of song 1 would have come by now
    assert [r["results"][0]["title"] for r in receiver.results()] == ["Song 1", "Song 2"]


def _listening(server: StreamsServer) -> set[int]:
    return set(server.app.state.streams.supervisor.listeners.copy())


def _listeners(a: StreamsServer, b: StreamsServer, stream_id: int) -> int:
    return (stream_id in _listening(a)) + (stream_id in _listening(b))


def _eventually(check: Any, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return bool(check())
