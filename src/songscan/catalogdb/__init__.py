"""The catalog's database: SQLite in the data directory (`catalog.sqlite`) by default, or the
PostgreSQL that the settings' database URL names, shared with the accounts.

The schema is SQLAlchemy's (`schema.py`) and Alembic keeps it (`migrations/`), the same for
both. A database already at the head revision is used as is; only one that is behind (a new
one, or a data directory written before the catalog had migrations) imports Alembic to bring
it up to date. Queries go through the DB-API driver itself (the standard library's sqlite3,
or psycopg), not through SQLAlchemy: a command that only reads the catalog (`songscan scan`)
then starts without importing SQLAlchemy or Alembic (see the start-up benchmark).

On PostgreSQL a lost connection (the server restarting) fails the statement with
`DatabaseUnavailable`, logged once per outage; the thread's next statement connects anew.

The SQL is written once, with `?` placeholders, in the common subset of both dialects
(`INSERT ... RETURNING` included: SQLite has it since 3.35).
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError, DatabaseUnavailable
from ..outage import Outage

SQLITE_FILE = "catalog.sqlite"
VERSION_TABLE = "catalog_alembic_version"
# The migrations' head (a test checks it against Alembic's): a database at it needs no Alembic.
HEAD = "0002"
_PG_MIGRATION_LOCK = 0x53_43_41_54  # pg_advisory_xact_lock key for the catalog's migrations
_PG_WRITER_LOCK = 0x53_43_57_52  # pg_advisory_lock key held by the one catalog writer

Row = dict[str, Any]


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / SQLITE_FILE}"


class Store:
    """One catalog database: thread-local connections, transactions, the writer lock."""

    def __init__(self, url: str, lock_dir: Path) -> None:
        self.url = url
        scheme = urlsplit(url).scheme
        if scheme == "sqlite":
            self.dialect = "sqlite"
            self._path = url.removeprefix("sqlite:///")
        elif scheme in ("postgresql", "postgresql+psycopg"):
            self.dialect = "postgresql"
            self._conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
        else:
            raise ConfigError(
                f"the catalog cannot use the database {scheme}://…: use SQLite (the default) "
                "or postgresql+psycopg://"
            )
        self._lock_dir = lock_dir
        self._outage = Outage("catalog")
        self._lost: tuple[type[BaseException], ...] = ()  # a driver's "connection lost" errors
        if self.dialect == "postgresql":
            import psycopg

            self._lost = (psycopg.OperationalError,)
        self._local = threading.local()
        # every thread's connection, to close them all; a thread's is closed once it has ended
        # (a listener thread per stream, each stream's thread replaced when its URL changes)
        self._all: dict[threading.Thread, Any] = {}
        self._all_lock = threading.Lock()
        if self._revision() != HEAD:
            self._migrate()

    # ---- connections ------------------------------------------------------------------------
    def _connection(self) -> Any:
        db = getattr(self._local, "db", None)
        if db is not None and self.dialect == "postgresql" and self._connection_lost():
            with contextlib.suppress(Exception):
                db.close()  # lost (the server restarted): connect anew
            db = None
        if db is None:
            db = self._connect()
            self._local.db = db
            with self._all_lock:
                self._all[threading.current_thread()] = db
                for thread in [t for t in self._all if not t.is_alive()]:
                    with contextlib.suppress(Exception):
                        self._all.pop(thread).close()
        return db

    @contextlib.contextmanager
    def _reconnecting(self) -> Iterator[None]:
        """Statements on PostgreSQL: a lost connection becomes DatabaseUnavailable (the
        connection, now broken, is replaced by the thread's next statement)."""
        try:
            yield
        except self._lost as exc:
            raise self._outage.failed(exc) from None

    def _connect(self) -> Any:
        if self.dialect == "sqlite":
            import sqlite3

            # used by one thread only; closed by another once that one has ended, or by close()
            db = sqlite3.connect(
                self._path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a track is visible once durable
            db.row_factory = _sqlite_dict
            return db
        import psycopg
        from psycopg.rows import dict_row

        with self._reconnecting():
            connection = psycopg.connect(self._conninfo, autocommit=True, row_factory=dict_row)
        self._outage.connected()
        return connection

    def _sql(self, sql: str) -> str:
        return sql if self.dialect == "sqlite" else sql.replace("?", "%s")

    def close(self) -> None:
        with self._all_lock:
            for db in self._all.values():
                with contextlib.suppress(Exception):
                    db.close()
            self._all.clear()
        self._local = threading.local()

    # ---- queries ----------------------------------------------------------------------------
    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return list(self._read(sql, params).fetchall())

    def row(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        found: Row | None = self._read(sql, params).fetchone()
        return found

    def _read(self, sql: str, params: Sequence[Any]) -> Any:
        """A read's cursor. A connection found lost (the server restarted since its last use)
        is replaced and the read tried once more: only a database still away fails it."""
        with self._reconnecting():
            try:
                return self._connection().execute(self._sql(sql), tuple(params))
            except self._lost:
                if not self._connection_lost():
                    raise
            return self._connection().execute(self._sql(sql), tuple(params))

    def _connection_lost(self) -> bool:
        db = getattr(self._local, "db", None)
        return db is not None and bool(db.broken or db.closed)

    def value(self, sql: str, params: Sequence[Any] = ()) -> Any:
        found = self.row(sql, params)
        return None if found is None else next(iter(found.values()))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A read-write transaction: committed when the block ends, rolled back if it raises.
        SQLite's is IMMEDIATE (the write lock up front: it never fails half-way as busy)."""
        db = self._connection()
        if self.dialect == "postgresql":
            with self._reconnecting(), db.transaction():
                yield Transaction(self, db)
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            yield Transaction(self, db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextlib.contextmanager
    def writer(self) -> Iterator[None]:
        """One catalog writer at a time, across processes (and, on PostgreSQL, machines);
        readers never wait. Ended by the process's death too (flock, or the session)."""
        if self.dialect == "sqlite":
            with (self._lock_dir / "catalog.lock").open("a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
            return
        lock_db = self._connect()
        try:
            lock_db.execute(f"SELECT pg_advisory_lock({_PG_WRITER_LOCK})")
            yield
        finally:
            lock_db.close()  # ends the session, and the lock with it

    # ---- schema -----------------------------------------------------------------------------
    def _revision(self) -> str | None:
        try:
            return str(self.value(f"SELECT version_num FROM {VERSION_TABLE}"))
        except DatabaseUnavailable:
            raise
        except Exception:  # no version table yet (sqlite3 and psycopg raise their own kinds)
            return None  # (autocommit: a failed statement leaves no transaction to undo)

    def _migrate(self) -> None:
        from .migrate import upgrade

        upgrade(self.url, self.dialect, VERSION_TABLE, _PG_MIGRATION_LOCK)


class Transaction:
    def __init__(self, store: Store, db: Any) -> None:
        self._store, self._db = store, db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cur = self._db.execute(self._store._sql(sql), tuple(params))
        return list(cur.fetchall()) if cur.description is not None else []

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        if self._store.dialect == "sqlite":
            self._db.executemany(sql, params)
        else:
            with self._db.cursor() as cur:
                cur.executemany(self._store._sql(sql), params)


def _sqlite_dict(cursor: Any, row: tuple[Any, ...]) -> Row:
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}
