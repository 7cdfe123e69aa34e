"""The accounts tables. Every change of what an account may spend is a row of `ledger_entries`.

`accounts.balance` is a cache of `sum(ledger_entries.delta)` for that account, changed only in
the same transaction that writes the ledger row; its conditional UPDATE is what makes a
reservation atomic on both SQLite and PostgreSQL. Schema changes go through Alembic
(`migrations/versions`); a test checks that the migrations and these models agree.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored datetime is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class AccountRow(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_hint: Mapped[str] = mapped_column(String(16))  # the masked token, for display
    plan: Mapped[str] = mapped_column(String(64))
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    period: Mapped[str] = mapped_column(String(7), default="")  # YYYY-MM of the last monthly grant
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    is_test: Mapped[bool] = mapped_column(Boolean, default=False)  # the public `test` token
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LedgerEntry(Base):
    """One credit (delta > 0) or debit (delta < 0). Usage rows also carry the request's record.

    kind: bonus (the free requests of a new account), grant (a plan's monthly requests),
    expire (unused monthly requests at the month's end), overage (debt beyond zero forgiven at
    the month's end, to be invoiced), purchase (Stripe), transfer (bank transfer), adjust
    (admin credit), usage (a request: delta is -reserved while pending, -used once settled).
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("account_id", "kind", "reference", name="uq_ledger_reference"),
        Index("ix_ledger_account_day", "account_id", "day"),
        Index("ix_ledger_account_kind", "account_id", "kind", "id"),
        Index("ix_ledger_status_holder", "status", "holder"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    day: Mapped[date] = mapped_column(Date)  # UTC day of created_at, for per-day usage
    kind: Mapped[str] = mapped_column(String(16))
    delta: Mapped[int] = mapped_column(BigInteger)
    reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    method: Mapped[str | None] = mapped_column(String(32))
    chunks: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str | None] = mapped_column(String(32))
    reference: Mapped[str | None] = mapped_column(String(255))  # payment / transfer reference
    note: Mapped[str | None] = mapped_column(String(255))
    # Who may still settle a pending usage row: a server instance (its `server_leases` id) or
    # a long job ("job:<id>"); NULL for rows made before 0002 or outside a server.
    holder: Mapped[str | None] = mapped_column(String(64))


class ServerLease(Base):
    """A running server process: alive while `expires_at` is ahead, which it keeps renewing.

    Pending reservations held by an instance whose lease is gone or expired can no longer be
    settled by it: the sweep (`Ledger.release_abandoned`) releases them.
    """

    __tablename__ = "server_leases"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobNode(Base):
    """A node: a data directory whose servers run long jobs (`songscan.jobs`), and when one of
    them was last alive. The jobs whose media it holds can run only there."""

    __tablename__ = "job_nodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen_at: Mapped[float] = mapped_column(Float)  # seconds since the epoch


class JobRow(Base):
    """A long job (`songscan.jobs`): its request, state, progress, reservation and response.

    `node` is the data directory holding its media (NULL: none yet, a `url` job not started);
    `runner` the server instance working on it, which may while its lease is alive.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_account_created", "account_id", "created_at"),
        Index("ix_jobs_cleaned_created", "cleaned", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    fields: Mapped[str] = mapped_column(Text)  # the request's parameters (JSON), token masked
    http_method: Mapped[str] = mapped_column(String(8))
    media_name: Mapped[str | None] = mapped_column(Text)  # the upload's name; NULL: a url
    chunks_total: Mapped[int | None] = mapped_column(Integer)  # NULL until known
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    reservation_id: Mapped[int | None] = mapped_column(Integer)  # the ledger entry it holds
    reserved: Mapped[int] = mapped_column(Integer, default=0)
    billed: Mapped[int] = mapped_column(Integer, default=0)
    chunks: Mapped[int] = mapped_column(Integer, default=0)  # chunks recognised (billable)
    response: Mapped[str | None] = mapped_column(Text)  # the finished job's body
    media_type: Mapped[str | None] = mapped_column(String(255))
    error_code: Mapped[int | None] = mapped_column(Integer)
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)  # seconds since the epoch
    started_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    cleaned: Mapped[bool] = mapped_column(Boolean, default=False)  # settled, media deleted
    node: Mapped[str | None] = mapped_column(String(64))
    runner: Mapped[str | None] = mapped_column(String(64))


class WebSession(Base):
    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Checkout(Base):
    """A Stripe Checkout Session this server created; webhooks credit only what is known here."""

    __tablename__ = "checkouts"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # pack | plan
    item: Mapped[str] = mapped_column(String(64))  # the pack or plan name
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | paid
    subscription_id: Mapped[str | None] = mapped_column(String(255), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StripeEvent(Base):
    """Stripe event ids already handled: a retried delivery changes nothing."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PublicTokenUsage(Base):
    """Requests made with the public `test` token, per client address and UTC day."""

    __tablename__ = "test_token_usage"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    client_addr: Mapped[str] = mapped_column(String(64), primary_key=True)
    used: Mapped[int] = mapped_column(Integer, default=0)


class ServerSecret(Base):
    """Secrets the server makes for itself (the CSRF signing key), shared by all its processes."""

    __tablename__ = "server_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))


class LoginThrottle(Base):
    """Failed log-ins in a row per key (an e-mail and client address pair, or an address;
    hashed, see `ratelimit.login_keys`) and until when that key must wait."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    wait_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


# -- live streams (songscan.streams; the API is api/streams.py) ---------------------------------


class CallbackUrl(Base):
    """Where an account's stream results and notifications are POSTed (`setCallbackUrl`), and
    the optional key their HMAC signature header is made with (a songscan extension)."""

    __tablename__ = "stream_callbacks"

    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str | None] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StreamRow(Base):
    """A live stream an account monitors (`addStream`); `radio_id` is the caller's own number.
    `longpoll_category` is md5(md5(api_token) + radio_id)[:9], worked out while the token is at
    hand (the token itself is never stored)."""

    __tablename__ = "streams"
    __table_args__ = (UniqueConstraint("account_id", "radio_id", name="uq_stream_radio"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    radio_id: Mapped[int] = mapped_column(BigInteger)
    url: Mapped[str] = mapped_column(Text)
    callbacks_before: Mapped[bool] = mapped_column(Boolean, default=False)
    longpoll_category: Mapped[str] = mapped_column(String(9), index=True)
    running: Mapped[bool] = mapped_column(Boolean, default=False)  # audio arrives now
    state_code: Mapped[int | None] = mapped_column(Integer)  # the last notification's code
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StreamListener(Base):
    """A process that listens to streams (a server process, or a scan worker's stream
    process): alive while `expires_at` is ahead, which its supervisor keeps renewing. The
    streams' fair share is counted over these."""

    __tablename__ = "stream_listeners"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StreamLease(Base):
    """Which listener owns a stream: one at a time, while `expires_at` is ahead (it renews).
    `owner` is the listening process (its `stream_listeners` id); only the owner's events are
    recorded (`StreamStore.add_event`)."""

    __tablename__ = "stream_leases"

    stream_id: Mapped[int] = mapped_column(
        ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True
    )
    owner: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StreamEvent(Base):
    """A result or notification of a stream, as its callback carries it (`body`, JSON): what
    `/longpoll/` serves, across server processes. `at_ms` orders them (`since_time`)."""

    __tablename__ = "stream_events"
    __table_args__ = (Index("ix_stream_events_category_at", "longpoll_category", "at_ms"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stream_id: Mapped[int] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), index=True)
    longpoll_category: Mapped[str] = mapped_column(String(9))
    at_ms: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))  # result | notification
    body: Mapped[str] = mapped_column(Text)


class StreamCallback(Base):
    """A callback to deliver (the outbox): written in the same transaction as its event
    (`StreamStore.add_event`), deleted once delivered or given up. `owner` is the listening
    process that delivers it (its `stream_listeners` id; another one takes it over when that
    row has expired); `attempts` and `next_at` are its retry schedule. `body` is the JSON as
    POSTed; `delivery_id` names it to the receiver (`X-Songscan-Callback-Id`), the same on
    every attempt. `id` orders an account's callbacks."""

    __tablename__ = "stream_outbox"
    __table_args__ = (
        Index("ix_stream_outbox_account", "account_id", "id"),
        {"sqlite_autoincrement": True},  # ids never reused: the order outlives an empty table
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    delivery_id: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
