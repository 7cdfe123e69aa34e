"""Real servers for tests, started on loopback with free ports and their own temp dirs.

- `start_postgres()`: Debian's PostgreSQL (`initdb` + `pg_ctl`), as the `postgres` user when
  the tests run as root.
- `UvicornThread`: an ASGI app served by uvicorn in a thread of the test process.
- `StripeStandIn`: a tiny stand-in for Stripe's API (Checkout Sessions), to point the
  `stripe` library's API base at; `stripe_signature()` signs webhook payloads like Stripe does.
"""

from __future__ import annotations

import glob
import hashlib
import hmac
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres_user(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


class QuietHTTPServer(ThreadingHTTPServer):
    """A loopback stand-in server whose clients may hang up on purpose (a download refused for
    its size, a cancelled request): a broken connection is not an error worth a traceback."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class PostgresServer:
    port: int
    directory: Path
    bindir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(
            _as_postgres_user(
                [
                    str(self.bindir / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.directory / "data"),
                    "-m",
                    "immediate",
                    "-w",
                ]
            ),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.directory, ignore_errors=True)


def postgres_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def start_postgres(max_connections: int = 300) -> PostgresServer:
    """Start a throw-away PostgreSQL on 127.0.0.1 with a free port; `stop()` removes it."""
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed: run scripts/install-system-deps")
    # Under /tmp (not pytest's 0700 dirs) so the postgres user can reach it.
    directory = Path(tempfile.mkdtemp(prefix="songscan-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    data = directory / "data"
    subprocess.run(
        _as_postgres_user(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    for _attempt in range(5):
        port = free_port()
        options = (
            f"-h 127.0.0.1 -p {port} -k {directory} -F "
            f"-c max_connections={max_connections} -c full_page_writes=off"
        )
        started = subprocess.run(
            _as_postgres_user(
                [
                    str(bindir / "pg_ctl"),
                    "start",
                    "-D",
                    str(data),
                    "-w",
                    "-t",
                    "60",
                    "-l",
                    str(directory / "log"),
                    "-o",
                    options,
                ]
            ),
            check=False,
            capture_output=True,
        )
        if started.returncode == 0:
            return PostgresServer(port, directory, bindir)
    log = (directory / "log").read_text(errors="replace") if (directory / "log").exists() else ""
    shutil.rmtree(directory, ignore_errors=True)
    raise RuntimeError(f"PostgreSQL did not start: {log[-2000:]}")


class UvicornThread:
    """Serve an ASGI app on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    @property
    def base_url(self) -> str:
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def stripe_signature(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header Stripe would send for `payload` with this webhook secret."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def checkout_completed_event(session_id: str, event_id: str | None = None) -> str:
    """A `checkout.session.completed` event body, as Stripe sends it for a paid session."""
    return json.dumps(
        {
            "id": event_id or f"evt_{secrets.token_hex(8)}",
            "object": "event",
            "type": "checkout.session.completed",
            "data": {
                "object": {
                    "id": session_id,
                    "object": "checkout.session",
                    "payment_status": "paid",
                    "status": "complete",
                }
            },
        }
    )


@dataclass
class StripeStandIn:
    """Answers `POST /v1/checkout/sessions` like Stripe; records what it was sent, and calls
    `on_create` (when set) with it before it answers."""

    created: list[dict[str, list[str]]] = field(default_factory=list)
    on_create: Callable[[dict[str, list[str]]], None] | None = None

    def __enter__(self) -> StripeStandIn:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: str, kind: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                if self.path != "/v1/checkout/sessions":
                    self._send(
                        404, json.dumps({"error": {"message": "no such route"}}), "application/json"
                    )
                    return
                if not self.headers.get("Authorization", "").startswith("Bearer sk_"):
                    self._send(
                        401, json.dumps({"error": {"message": "bad key"}}), "application/json"
                    )
                    return
                stand_in.created.append(form)
                if stand_in.on_create is not None:
                    stand_in.on_create(form)  # e.g. to hold the answer back
                session_id = f"cs_test_{secrets.token_hex(12)}"
                body = {
                    "id": session_id,
                    "object": "checkout.session",
                    "mode": form.get("mode", ["payment"])[0],
                    "payment_status": "unpaid",
                    "url": f"{stand_in.base_url}/pay/{session_id}",
                }
                self._send(200, json.dumps(body), "application/json")

            def do_GET(self) -> None:
                self._send(
                    200, "<html><body><h1>Stripe stand-in checkout</h1></body></html>", "text/html"
                )

        self.httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
