"""The streams' records in the accounts database: callback URLs, streams, leases, events and
the callbacks waiting for delivery (the outbox).

The API side (`api/streams.py`) adds, changes and lists an account's streams; the listener
side (`streams.supervisor`) takes a lease on each stream it listens to, records its state and
its events. Events stay in the database so that `/longpoll/` answers from any server process,
whichever one listens to the stream. Each event's callback is queued in the same transaction
(`stream_outbox`), and `callbacks.CallbackSender` delivers it from there: an event is recorded
if and only if its callback is queued, and a crash loses neither.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Select, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from songscan.accounts.db import READ_ONLY
from songscan.accounts.models import (
    AccountRow,
    CallbackUrl,
    StreamCallback,
    StreamEvent,
    StreamLease,
    StreamListener,
    StreamRow,
    as_utc,
    utcnow,
)
from songscan.accounts.store import insert_ignore
from songscan.errors import InvalidParameters, SongscanError

RESULT, NOTIFICATION = "result", "notification"
MAX_QUEUED = 1000  # callbacks waiting per account; past it the oldest are dropped (logged)


class NoCallbackUrl(SongscanError):
    """`getCallbackUrl` before any `setCallbackUrl` (AudD answers error 19; its SDK relies on
    it to tell that longpoll has nothing to deliver)."""

    code = 19
    default_message = "no callback URL is set for this account (setCallbackUrl)"


class StreamSlotsUsedUp(SongscanError):
    """Every stream slot of the plan is taken. 610, the code AudD's SDKs map to their
    stream-limit error (AudD's OpenAPI shows 902, which its SDKs read as a request quota)."""

    code = 610
    default_message = "every stream slot of this account's plan is in use"


class UnknownStream(InvalidParameters):
    default_message = "this account has no stream with that radio_id"


class DuplicateStream(InvalidParameters):
    default_message = "this account has a stream with that radio_id already"


def longpoll_category(api_token: str, radio_id: int) -> str:
    """AudD's longpoll category: md5(md5(api_token) + str(radio_id)), its first 9 hex digits.
    MD5 is AudD's choice (the category is a name, not a secret's hash worth protecting)."""
    inner = hashlib.md5(api_token.encode()).hexdigest()
    return hashlib.md5((inner + str(radio_id)).encode()).hexdigest()[:9]


@dataclass(frozen=True)
class Stream:
    id: int
    account_id: int
    radio_id: int
    url: str
    callbacks_before: bool
    longpoll_category: str
    running: bool
    state_code: int | None

    def api_json(self) -> dict[str, Any]:
        """The stream as `getStreams` lists it."""
        return {
            "radio_id": self.radio_id,
            "url": self.url,
            "stream_running": self.running,
            "longpoll_category": self.longpoll_category,
        }


@dataclass(frozen=True)
class Callback:
    url: str
    secret: str | None


@dataclass(frozen=True)
class Event:
    at_ms: int
    kind: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Recorded:
    """An event `add_event` recorded: its `at_ms`; whether its callback was queued (the
    account has a callback URL), and how many older callbacks that dropped (a full queue)."""

    at_ms: int
    callback_queued: bool
    dropped: int


@dataclass(frozen=True)
class QueuedCallback:
    """An outbox row, with the account's callback URL as it is now (None: none is set)."""

    id: int
    delivery_id: str
    body: bytes
    attempts: int
    next_at: datetime
    url: str | None
    secret: str | None


def _stream(row: Any) -> Stream:
    return Stream(
        id=row.id,
        account_id=row.account_id,
        radio_id=int(row.radio_id),
        url=row.url,
        callbacks_before=bool(row.callbacks_before),
        longpoll_category=row.longpoll_category,
        running=bool(row.running),
        state_code=row.state_code,
    )


class StreamStore:
    """Streams over the accounts database's engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, callback_queue_cap: int = MAX_QUEUED) -> None:
        self.engine = engine
        self.callback_queue_cap = callback_queue_cap

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(**{READ_ONLY: True})
            with conn.begin():
                yield conn

    # -- callback URL -----------------------------------------------------------------------

    def set_callback(self, account_id: int, url: str, secret: str | None) -> None:
        with self._tx() as conn:
            values = {"url": url, "secret": secret, "updated_at": utcnow()}
            changed = conn.execute(
                update(CallbackUrl).where(CallbackUrl.account_id == account_id).values(**values)
            ).rowcount
            if not changed:
                conn.execute(insert(CallbackUrl).values(account_id=account_id, **values))

    def callback(self, account_id: int) -> Callback | None:
        with self._read() as conn:
            row = conn.execute(
                select(CallbackUrl.url, CallbackUrl.secret).where(
                    CallbackUrl.account_id == account_id
                )
            ).first()
        return Callback(row.url, row.secret) if row else None

    # -- an account's streams ---------------------------------------------------------------

    def add(
        self,
        account_id: int,
        radio_id: int,
        url: str,
        *,
        callbacks_before: bool,
        category: str,
        slots: int,
    ) -> Stream:
        """A new stream; StreamSlotsUsedUp when the account has `slots` already,
        DuplicateStream when `radio_id` is taken."""
        now = utcnow()
        try:
            with self._tx() as conn:
                # Lock the account's row: two addStream calls at once cannot both take the
                # last slot (PostgreSQL; SQLite's write transactions are serial anyway).
                conn.execute(
                    select(AccountRow.id).where(AccountRow.id == account_id).with_for_update()
                )
                self._check_room(conn, account_id, radio_id, slots)
                conn.execute(
                    insert(StreamRow).values(
                        account_id=account_id,
                        radio_id=radio_id,
                        url=url,
                        callbacks_before=callbacks_before,
                        longpoll_category=category,
                        running=False,
                        state_code=None,
                        created_at=now,
                        updated_at=now,
                    )
                )
                found = self._find(conn, account_id, radio_id)
        except IntegrityError:  # added by a concurrent call between the check and the insert
            raise DuplicateStream(f"radio_id {radio_id} is in use on this account") from None
        assert found is not None
        return found

    def check_room(self, account_id: int, radio_id: int, slots: int) -> None:
        """DuplicateStream or StreamSlotsUsedUp as `add` would raise them now (a quick answer
        before `addStream` spends time connecting to the URL)."""
        with self._read() as conn:
            self._check_room(conn, account_id, radio_id, slots)

    def _check_room(self, conn: Connection, account_id: int, radio_id: int, slots: int) -> None:
        if self._find(conn, account_id, radio_id) is not None:
            raise DuplicateStream(f"radio_id {radio_id} is in use on this account")
        used = conn.scalar(select(func.count()).where(StreamRow.account_id == account_id))
        if int(used or 0) >= slots:
            raise StreamSlotsUsedUp(
                f"this account's plan has {slots} stream slot(s), all in use"
                if slots
                else "this account's plan includes no live streams"
            )

    def require(self, account_id: int, radio_id: int) -> Stream:
        """The account's stream `radio_id`, or UnknownStream."""
        with self._read() as conn:
            found = self._find(conn, account_id, radio_id)
        if found is None:
            raise UnknownStream(f"no stream with radio_id {radio_id} on this account")
        return found

    def _find(self, conn: Connection, account_id: int, radio_id: int) -> Stream | None:
        row = conn.execute(
            select(StreamRow).where(
                StreamRow.account_id == account_id, StreamRow.radio_id == radio_id
            )
        ).first()
        return _stream(row) if row else None

    def set_url(self, account_id: int, radio_id: int, url: str) -> None:
        """A stream's new URL; its listener reconnects to it (UnknownStream when none)."""
        with self._tx() as conn:
            changed = conn.execute(
                update(StreamRow)
                .where(StreamRow.account_id == account_id, StreamRow.radio_id == radio_id)
                .values(url=url, running=False, state_code=None, updated_at=utcnow())
            ).rowcount
        if not changed:
            raise UnknownStream(f"no stream with radio_id {radio_id} on this account")

    def delete(self, account_id: int, radio_id: int) -> None:
        with self._tx() as conn:
            found = self._find(conn, account_id, radio_id)
            if found is None:
                raise UnknownStream(f"no stream with radio_id {radio_id} on this account")
            conn.execute(delete(StreamEvent).where(StreamEvent.stream_id == found.id))
            conn.execute(delete(StreamLease).where(StreamLease.stream_id == found.id))
            conn.execute(delete(StreamRow).where(StreamRow.id == found.id))

    def of_account(self, account_id: int, api_token: str | None = None) -> list[Stream]:
        """The account's streams by radio_id. With the caller's token, categories made with
        an earlier token (rotated since) are brought up to date first."""
        if api_token is not None:
            with self._tx() as conn:
                rows = conn.execute(
                    select(StreamRow.id, StreamRow.radio_id, StreamRow.longpoll_category).where(
                        StreamRow.account_id == account_id
                    )
                ).all()
                for row in rows:
                    category = longpoll_category(api_token, int(row.radio_id))
                    if category != row.longpoll_category:
                        conn.execute(
                            update(StreamRow)
                            .where(StreamRow.id == row.id)
                            .values(longpoll_category=category)
                        )
        with self._read() as conn:
            streams = conn.execute(
                select(StreamRow)
                .where(StreamRow.account_id == account_id)
                .order_by(StreamRow.radio_id)
            ).all()
        return [_stream(r) for r in streams]

    def get(self, stream_id: int) -> Stream | None:
        with self._read() as conn:
            row = conn.execute(select(StreamRow).where(StreamRow.id == stream_id)).first()
        return _stream(row) if row else None

    # -- the listeners' side ----------------------------------------------------------------

    def heartbeat(self, owner: str, lease_s: float) -> None:
        """`owner` listens to streams for `lease_s` more seconds (its `stream_listeners` row,
        taken the first time); the rows of listeners that stopped renewing are forgotten."""
        now = utcnow()
        expires = now + timedelta(seconds=lease_s)
        with self._tx() as conn:
            conn.execute(delete(StreamListener).where(StreamListener.expires_at <= now))
            row = {"id": owner, "host": socket.gethostname()[:255], "pid": os.getpid()}
            if not insert_ignore(conn, StreamListener, {**row, "expires_at": expires}):
                conn.execute(
                    update(StreamListener)
                    .where(StreamListener.id == owner)
                    .values(expires_at=expires)
                )

    def fair_share(self) -> int:
        """The streams each live listener process should listen to: all the streams over the
        listeners whose row (`stream_listeners`, `heartbeat`) runs, rounded up; all of them
        when none runs."""
        with self._read() as conn:
            streams = conn.scalar(select(func.count()).select_from(StreamRow)) or 0
            live = conn.scalar(
                select(func.count())
                .select_from(StreamListener)
                .where(StreamListener.expires_at > utcnow())
            )
        return -(-streams // max(1, live or 0))

    def take_leases(self, owner: str, lease_s: float, limit: int) -> list[Stream]:
        """Streams nobody listens to (no lease, or an expired one), up to `limit`, now leased
        to `owner` for `lease_s` seconds."""
        now = utcnow()
        expires = now + timedelta(seconds=lease_s)
        taken: list[Stream] = []
        if limit <= 0:
            return taken
        with self._tx() as conn:
            held = select(StreamLease.stream_id).where(StreamLease.expires_at > now)
            rows = conn.execute(
                select(StreamRow)
                .where(StreamRow.id.not_in(held))
                .order_by(StreamRow.id)
                .limit(limit)
            ).all()
            for row in rows:
                moved = conn.execute(
                    update(StreamLease)
                    .where(StreamLease.stream_id == row.id, StreamLease.expires_at <= now)
                    .values(owner=owner, expires_at=expires)
                ).rowcount
                if not moved:
                    conn.execute(
                        insert(StreamLease).values(
                            stream_id=row.id, owner=owner, expires_at=expires
                        )
                    )
                taken.append(_stream(row))
        return taken

    def renew_leases(self, owner: str, stream_ids: list[int], lease_s: float) -> set[int]:
        """Push the leases `owner` holds on these streams on; the ids still held (a stream
        deleted, or taken over after this owner stalled, drops out)."""
        if not stream_ids:
            return set()
        expires = utcnow() + timedelta(seconds=lease_s)
        with self._tx() as conn:
            conn.execute(
                update(StreamLease)
                .where(StreamLease.owner == owner, StreamLease.stream_id.in_(stream_ids))
                .values(expires_at=expires)
            )
            held = conn.scalars(
                select(StreamLease.stream_id).where(
                    StreamLease.owner == owner, StreamLease.stream_id.in_(stream_ids)
                )
            ).all()
        return {int(i) for i in held}

    def release_leases(self, owner: str) -> None:
        """`owner` stops listening: its streams are free at once, and it no longer counts."""
        with self._tx() as conn:
            conn.execute(delete(StreamLease).where(StreamLease.owner == owner))
            conn.execute(delete(StreamListener).where(StreamListener.id == owner))

    def set_state(self, stream_id: int, running: bool, code: int | None, owner: str) -> None:
        """The stream's state as `owner`'s listener sees it (nothing unless it holds the
        lease, as for `add_event`)."""
        with self._tx() as conn:
            conn.execute(
                update(StreamRow)
                .where(StreamRow.id == stream_id, _lease_held(stream_id, owner).exists())
                .values(running=running, state_code=code, updated_at=utcnow())
            )

    def add_event(
        self, stream: Stream, kind: str, body: dict[str, Any], owner: str
    ) -> Recorded | None:
        """Record a result or notification of `owner`'s listener, and queue its callback for
        `owner` to deliver when the account has a callback URL. Its `at_ms` is unique and
        increasing per category, so `since_time` never skips one. None, and nothing recorded,
        unless `owner` holds the stream's lease: a listener whose stream was taken over (its
        process stalled past the lease) or deleted must not report what the new owner will.
        The lease row stays locked until the event is in, so a take-over waits for it."""
        with self._tx() as conn:
            held = conn.scalar(_lease_held(stream.id, owner).with_for_update())
            if held is None:
                return None
            last = conn.scalar(
                select(func.max(StreamEvent.at_ms)).where(
                    StreamEvent.longpoll_category == stream.longpoll_category
                )
            )
            at_ms = max(int(time.time() * 1000), int(last or 0) + 1)
            conn.execute(
                insert(StreamEvent).values(
                    stream_id=stream.id,
                    longpoll_category=stream.longpoll_category,
                    at_ms=at_ms,
                    kind=kind,
                    body=json.dumps(body, separators=(",", ":")),
                )
            )
            has_url = conn.scalar(
                select(func.count()).where(CallbackUrl.account_id == stream.account_id)
            )
            dropped = self._queue_callback(conn, stream.account_id, body, owner) if has_url else 0
        return Recorded(at_ms, bool(has_url), dropped)

    def events_after(self, category: str, since_ms: int, limit: int = 1) -> list[Event]:
        with self._read() as conn:
            rows = conn.execute(
                select(StreamEvent.at_ms, StreamEvent.kind, StreamEvent.body)
                .where(StreamEvent.longpoll_category == category, StreamEvent.at_ms > since_ms)
                .order_by(StreamEvent.at_ms)
                .limit(limit)
            ).all()
        return [Event(int(r.at_ms), r.kind, json.loads(r.body)) for r in rows]

    def recent_events(self, stream_id: int, limit: int = 20) -> list[Event]:
        """A stream's last events, newest first (for the dashboard and tests)."""
        with self._read() as conn:
            rows = conn.execute(
                select(StreamEvent.at_ms, StreamEvent.kind, StreamEvent.body)
                .where(StreamEvent.stream_id == stream_id)
                .order_by(StreamEvent.at_ms.desc())
                .limit(limit)
            ).all()
        return [Event(int(r.at_ms), r.kind, json.loads(r.body)) for r in rows]

    def recent_plays(self, account_id: int, limit: int = 20) -> list[tuple[int, dict[str, Any]]]:
        """The account's last results over all its streams, newest first: (radio_id, the
        callback's `result`), for the dashboard."""
        with self._read() as conn:
            rows = conn.execute(
                select(StreamRow.radio_id, StreamEvent.body)
                .join(StreamRow, StreamRow.id == StreamEvent.stream_id)
                .where(StreamRow.account_id == account_id, StreamEvent.kind == RESULT)
                .order_by(StreamEvent.at_ms.desc())
                .limit(limit)
            ).all()
        return [(int(r.radio_id), json.loads(r.body)["result"]) for r in rows]

    def prune_events(self, keep_s: float) -> int:
        """Forget events older than `keep_s` (longpoll serves recent ones only)."""
        oldest = int((time.time() - keep_s) * 1000)
        with self._tx() as conn:
            return int(conn.execute(delete(StreamEvent).where(StreamEvent.at_ms < oldest)).rowcount)

    # -- the callback outbox ----------------------------------------------------------------

    def _queue_callback(
        self, conn: Connection, account_id: int, body: dict[str, Any], owner: str
    ) -> int:
        """Queue a callback for `owner` to deliver; the number of the account's oldest ones
        dropped to keep its queue within `callback_queue_cap`."""
        waiting = int(
            conn.scalar(select(func.count()).where(StreamCallback.account_id == account_id)) or 0
        )
        dropped = max(0, waiting - self.callback_queue_cap + 1)
        if dropped:
            oldest = (
                select(StreamCallback.id)
                .where(StreamCallback.account_id == account_id)
                .order_by(StreamCallback.id)
                .limit(dropped)
            )
            conn.execute(delete(StreamCallback).where(StreamCallback.id.in_(oldest)))
        conn.execute(
            insert(StreamCallback).values(
                account_id=account_id,
                delivery_id=secrets.token_hex(16),
                body=json.dumps(body, ensure_ascii=False, separators=(",", ":")),
                owner=owner,
                attempts=0,
                next_at=utcnow(),
            )
        )
        return dropped

    def next_callback(self, owner: str, account_id: int) -> QueuedCallback | None:
        """The account's oldest callback that `owner` delivers, with the account's callback URL
        as it is now."""
        with self._read() as conn:
            row = conn.execute(
                select(
                    StreamCallback.id,
                    StreamCallback.delivery_id,
                    StreamCallback.body,
                    StreamCallback.attempts,
                    StreamCallback.next_at,
                    CallbackUrl.url,
                    CallbackUrl.secret,
                )
                .select_from(StreamCallback)
                .outerjoin(CallbackUrl, CallbackUrl.account_id == StreamCallback.account_id)
                .where(StreamCallback.owner == owner, StreamCallback.account_id == account_id)
                .order_by(StreamCallback.id)
                .limit(1)
            ).first()
        if row is None:
            return None
        return QueuedCallback(
            id=int(row.id),
            delivery_id=row.delivery_id,
            body=row.body.encode(),
            attempts=int(row.attempts),
            next_at=as_utc(row.next_at),
            url=row.url,
            secret=row.secret,
        )

    def retry_callback(self, owner: str, callback_id: int, attempts: int, at: datetime) -> None:
        """`attempts` made so far; the next one is due `at` (nothing if `owner` lost it)."""
        with self._tx() as conn:
            conn.execute(
                update(StreamCallback)
                .where(StreamCallback.id == callback_id, StreamCallback.owner == owner)
                .values(attempts=attempts, next_at=at)
            )

    def forget_callback(self, owner: str, callback_id: int) -> None:
        """Delivered, or given up: out of the outbox."""
        with self._tx() as conn:
            conn.execute(
                delete(StreamCallback).where(
                    StreamCallback.id == callback_id, StreamCallback.owner == owner
                )
            )

    def adopt_callbacks(self, owner: str) -> int:
        """`owner` takes over the callbacks of listening processes that are gone (their
        `stream_listeners` row expired or was released); how many."""
        live = select(StreamListener.id).where(StreamListener.expires_at > utcnow())
        with self._tx() as conn:
            moved = conn.execute(
                update(StreamCallback)
                .where(StreamCallback.owner != owner, StreamCallback.owner.not_in(live))
                .values(owner=owner)
            ).rowcount
        return int(moved or 0)

    def callback_accounts(self, owner: str) -> list[int]:
        """The accounts with callbacks that `owner` delivers."""
        with self._read() as conn:
            ids = conn.scalars(
                select(StreamCallback.account_id).where(StreamCallback.owner == owner).distinct()
            ).all()
        return [int(i) for i in ids]


def _lease_held(stream_id: int, owner: str) -> Select[int]:
    """The stream's lease row, if `owner` holds it (the fence of a listener's writes)."""
    return select(StreamLease.stream_id).where(
        StreamLease.stream_id == stream_id, StreamLease.owner == owner
    )
