"""Real servers for tests, started on loopback with free ports and their own temp dirs.

- `start_postgres()`: Debian's PostgreSQL (`initdb` + `pg_ctl`), as the `postgres` user when
  the tests run as root.
- `start_redis_cluster()`: Debian's `redis-server`, six nodes in cluster mode (3 masters with a
  replica each) joined by `redis-cli --cluster create`.
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
from subprocess import CompletedProcess
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
    max_connections: int = 300

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
        self.halt("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)

    def halt(self, mode: str = "fast") -> None:
        """Stop the server (`pg_ctl stop -m MODE`), keeping its data for `restart`."""
        subprocess.run(
            _as_postgres_user(
                [
                    str(self.bindir / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.directory / "data"),
                    "-m",
                    mode,
                    "-w",
                ]
            ),
            check=False,
            capture_output=True,
        )

    def restart(self) -> None:
        """Start a halted server again, on its port."""
        started = _pg_ctl_start(self.bindir, self.directory, self.port, self.max_connections)
        if started.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start again: {started.stderr!r}")


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
        started = _pg_ctl_start(bindir, directory, port, max_connections)
        if started.returncode == 0:
            return PostgresServer(port, directory, bindir, max_connections)
    log = (directory / "log").read_text(errors="replace") if (directory / "log").exists() else ""
    shutil.rmtree(directory, ignore_errors=True)
    raise RuntimeError(f"PostgreSQL did not start: {log[-2000:]}")


def _pg_ctl_start(
    bindir: Path, directory: Path, port: int, max_connections: int
) -> subprocess.CompletedProcess[bytes]:
    options = (
        f"-h 127.0.0.1 -p {port} -k {directory} -F "
        f"-c max_connections={max_connections} -c full_page_writes=off"
    )
    return subprocess.run(
        _as_postgres_user(
            [
                str(bindir / "pg_ctl"),
                "start",
                "-D",
                str(directory / "data"),
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


@dataclass
class RedisNode:
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Kill the node at once (a crashed master, as far as the cluster can tell)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@dataclass
class RedisCluster:
    nodes: list[RedisNode]
    directory: Path
    password: str | None = None  # every node's requirepass (and masterauth)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", node.port) for node in self.nodes]

    @property
    def url(self) -> str:
        auth = "" if self.password is None else f":{urllib.parse.quote(self.password, safe='')}@"
        return f"redis-cluster://{auth}" + ",".join(f"{h}:{p}" for h, p in self.addresses)

    def cli(self, port: int, *args: str) -> str:
        return redis_cli(self.password, "-h", "127.0.0.1", "-p", str(port), *args).stdout

    def masters(self) -> list[RedisNode]:
        return [n for n in self.nodes if n.process.poll() is None and self._is_master(n.port)]

    def _is_master(self, port: int) -> bool:
        return "role:master" in self.cli(port, "INFO", "replication")

    def wait_ok(self, timeout_s: float = 60.0) -> None:
        """Until every live node says cluster_state:ok."""
        deadline = time.monotonic() + timeout_s
        while True:
            live = [n for n in self.nodes if n.process.poll() is None]
            if all("cluster_state:ok" in self.cli(n.port, "CLUSTER", "INFO") for n in live):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def redis_cli(password: str | None, *args: str, check: bool = True) -> CompletedProcess[str]:
    """redis-cli with `args`; the password goes in its environment, not on its command line."""
    env = {**os.environ, "REDISCLI_AUTH": password} if password is not None else None
    return subprocess.run(
        ["redis-cli", *args], check=check, capture_output=True, text=True, timeout=120, env=env
    )


def start_redis_cluster(
    masters: int = 3, node_timeout_ms: int = 2000, password: str | None = None
) -> RedisCluster:
    """Start `2 * masters` redis-server nodes on free loopback ports (each with its own dir)
    and join them into a cluster with one replica per master; `stop()` kills them all. With a
    `password`, every node requires it (of clients, and of its replicas)."""
    directory = Path(tempfile.mkdtemp(prefix="songscan-redis-"))
    cluster = RedisCluster([], directory, password)
    auth = () if password is None else ("--requirepass", password, "--masterauth", password)
    try:
        for _ in range(2 * masters):
            cluster.nodes.append(_start_redis_node(directory, node_timeout_ms, *auth))
        created = redis_cli(
            password,
            "--cluster",
            "create",
            *(f"127.0.0.1:{n.port}" for n in cluster.nodes),
            "--cluster-replicas",
            "1",
            "--cluster-yes",
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
        cluster.wait_ok()
        _wait_replicas_linked(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port + 10000)) != 0:
                return port


def _start_redis_node(root: Path, node_timeout_ms: int, *options: str) -> RedisNode:
    for _attempt in range(5):
        port = _cluster_port()
        directory = root / str(port)
        directory.mkdir()
        process = _redis_process(
            directory,
            port,
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            *options,
        )  # fmt: skip
        if process is not None:
            return RedisNode(port, directory, process)
    raise RuntimeError(f"redis-server did not start; see {root}")


@dataclass
class RedisServer:
    node: RedisNode

    @property
    def url(self) -> str:
        """The broker URL of database 0."""
        return f"redis://127.0.0.1:{self.node.port}/0"

    def stop(self) -> None:
        self.node.stop()
        shutil.rmtree(self.node.directory, ignore_errors=True)


def start_redis(port: int | None = None) -> RedisServer:
    """One standalone redis-server on loopback (on `port`, else a free one); `stop()` kills
    it."""
    directory = Path(tempfile.mkdtemp(prefix="songscan-broker-"))
    for _attempt in range(1 if port else 5):
        chosen = port or free_port()
        process = _redis_process(directory, chosen)
        if process is not None:
            return RedisServer(RedisNode(chosen, directory, process))
    raise RuntimeError(f"redis-server did not start; see {directory}")


def _redis_process(directory: Path, port: int, *options: str) -> subprocess.Popen[bytes] | None:
    """redis-server on 127.0.0.1:`port` without persistence, its files in `directory`, once it
    listens; None when it did not start (its port was taken meanwhile, say)."""
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed: run scripts/install-system-deps")
    process = subprocess.Popen(
        [
            "redis-server",
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            *options,
            "--appendonly", "no",
            "--save", "",
            "--logfile", str(directory / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return process
        time.sleep(0.05)
    process.kill()
    process.wait()
    return None


def _wait_replicas_linked(cluster: RedisCluster, timeout_s: float = 60.0) -> None:
    """Until every master has a replica in sync (so that WAIT 1 answers 1)."""
    deadline = time.monotonic() + timeout_s
    for master in cluster.masters():
        while "state=online" not in cluster.cli(master.port, "INFO", "replication"):
            if time.monotonic() > deadline:
                raise RuntimeError("a Redis master has no replica in sync")
            time.sleep(0.1)


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
