"""`songscan serve` starts a real Uvicorn server on the embedded defaults."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from songscan.accounts.tokens import mask_token
from songscan.api import serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    data: Path, *extra: str, output: Path | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """`songscan serve` in its own session, answering on the returned port; its stdout and
    stderr go to `output` (both to one file) when given."""
    port = free_port()
    command = [sys.executable, "-m", "songscan.cli", "--data", str(data), "serve"]
    sink = output.open("wb") if output is not None else None
    proc = subprocess.Popen(
        [*command, "--port", str(port), *extra],
        stdout=sink or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if sink else subprocess.DEVNULL,
        start_new_session=True,
    )
    if sink is not None:
        sink.close()  # the child has its own copy
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            return proc, port
        except httpx.TransportError:
            if proc.poll() is not None:
                raise AssertionError("the server exited") from None
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)  # leave no server behind
                proc.wait()
                raise AssertionError("server did not start") from None
            time.sleep(0.2)


def test_serve_answers_over_a_real_socket_with_a_worker_per_core(tmp_path: Path) -> None:
    data, log_path = tmp_path / "data", tmp_path / "server.log"
    proc, port = start_server(data, output=log_path)
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/login", timeout=5)
        assert response.status_code == 200
        assert "songscan" in response.text.lower()
        assert (data / "accounts.db").exists()  # embedded SQLite in the data directory
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    cores = len(os.sched_getaffinity(0))
    assert log_path.read_text().count("Started server process") == cores


def create_token(data: Path, *extra: str) -> str:
    command = [sys.executable, "-m", "songscan.cli", "--data", str(data), "accounts", "create"]
    made = subprocess.run(
        [*command, "--email", "ops@example.org", *extra],
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def silence_wav(path: Path, seconds: float) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(2 * int(8000 * seconds)))
    return path


def test_no_log_line_of_any_server_process_holds_a_token(tmp_path: Path) -> None:
    """Tokens in query strings, forms and multipart bodies, on good and bad paths, with a
    `url` (carrying the token too) that cannot be reached: the output of the server and its
    workers has a masked access line for each request and never the raw token."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "songscan.toml").write_text(
        '[api]\nurl_allow = ["127.0.0.1"]\n[plans.enterprise]\nrate_limit_per_s = 1000\n'
    )
    token = create_token(data, "--plan", "enterprise")
    wrong = "f" * 40  # a token of the right shape that no account has
    refused = f"http://127.0.0.1:{free_port()}/song.mp3?api_token={token}"
    clip = silence_wav(tmp_path / "clip.wav", 3)
    log_path = tmp_path / "server.log"
    proc, port = start_server(data, "--workers", "2", output=log_path)
    base = f"http://127.0.0.1:{port}"
    sent: list[tuple[str, str, int]] = []  # method, path, status
    try:
        with httpx.Client(base_url=base, timeout=60) as http:

            def call(method: str, path: str, **kwargs: Any) -> httpx.Response:
                response = http.request(method, path, **kwargs)
                sent.append((method, path.split("?")[0], response.status_code))
                return response

            q = {"api_token": token}
            assert call("GET", "/", params=q).json()["error"]["error_code"] == 700
            assert (
                call("GET", "/", params={"api_token": wrong}).json()["error"]["error_code"] == 900
            )
            got = call("POST", "/", data={**q, "url": refused}).json()
            assert got["error"]["error_code"] == 600, got
            got = call("POST", "/enterprise", params={**q, "url": refused}).json()
            assert got["error"]["error_code"] == 600, got
            with clip.open("rb") as fh:
                got = call("POST", "/", data=q, files={"file": ("clip.wav", fh)}).json()
            assert got == {"status": "success", "result": None}
            got = call("POST", "/upload/", data=q, files={"file": ("c.wav", b"not audio")}).json()
            assert got["status"] == "error"
            assert call("GET", "/nope", params=q).status_code == 404
            assert call("PUT", "/", params=q).status_code == 405
            assert call("GET", "/enterprise/jobs", params=q).status_code == 200
            assert call("POST", "/try/recognize", data={**q, "url": refused}).status_code == 200
            assert call("GET", "/healthz", params=q).status_code == 200
    finally:
        stop_server(proc)
    output = log_path.read_text()
    assert token not in output and wrong not in output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    lines = [line for line in lines if line["token"]]  # not start_server's own /healthz polls
    logged = sorted((line["http_method"], line["path"], line["status"]) for line in lines)
    assert logged == sorted(sent)
    assert {line["token"] for line in lines} == {mask_token(token), mask_token(wrong)}
    assert "Application startup complete" in output  # stderr was captured, both workers'
    assert output.count("Started server process") == 2


def test_serve_runs_on_uvloop_and_httptools(tmp_path: Path, monkeypatch: Any) -> None:
    import uvloop
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from songscan import settings
    from songscan.api.serve import server_config

    monkeypatch.setenv("SONGSCAN_DATA", str(tmp_path))  # server_config sets it: undone after
    config = server_config(settings.load(tmp_path), "127.0.0.1", 0, 1)
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol
    loop_factory = config.get_loop_factory()
    assert loop_factory is not None
    loop = loop_factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_multi_worker_listener_is_labelled_tcp() -> None:
    """With several workers asyncio enables TCP_NODELAY only on a listener labelled TCP."""
    from songscan.api.serve import _TcpConfig

    config = _TcpConfig("songscan.api.serve:app_factory", factory=True, port=0, workers=2)
    sock = config.bind_socket()
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockname()[1] > 0
    finally:
        sock.close()


def test_two_workers_serve_a_scan_and_leave_no_process_behind(tmp_path: Path) -> None:
    token = (
        subprocess.run(
            [
                sys.executable,
                "-m",
                "songscan.cli",
                "--data",
                str(tmp_path),
                "accounts",
                "create",
                "--email",
                "ops@example.org",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    audio = tmp_path / "long.wav"
    with wave.open(str(audio), "wb") as w:  # 5.5 minutes of silence: more than one work unit
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(bytes(2 * 8000 * 330))
    proc, port = start_server(tmp_path, "--workers", "2")
    try:
        with audio.open("rb") as fh:
            r = httpx.post(
                f"http://127.0.0.1:{port}/enterprise",
                data={"api_token": token},
                files={"file": ("long.wav", fh)},
                timeout=120,
            )
        assert r.json() == {
            "status": "success",
            "result": [],
            "execution_time": r.json()["execution_time"],
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while True:  # every process of the server's session has ended: workers, scan pool
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "server processes outlived SIGTERM"
        time.sleep(0.2)


def test_access_file_of_the_config_takes_the_access_lines(tmp_path: Path) -> None:
    (tmp_path / "songscan.toml").write_text('[log]\naccess_file = "access.log"\n')
    log_path = tmp_path / "server.log"
    proc, port = start_server(tmp_path, "--workers", "1", output=log_path)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/?api_token=abcdefgh12", timeout=30).is_success
    finally:
        stop_server(proc)
    lines = [json.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
    assert [line["token"] for line in lines if line["path"] == "/"] == ["ab***12"]
    assert "Application startup complete" in log_path.read_text()
    assert '"request_id"' not in log_path.read_text()


def test_an_unknown_log_key_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "songscan.toml").write_text('[log]\naccess = "access.log"\n')
    command = [sys.executable, "-m", "songscan.cli", "--data", str(tmp_path), "serve"]
    done = subprocess.run(
        [*command, "--port", str(free_port())], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "error (100): [log]: unknown key 'access' (known: access_file)"
    ]


def test_tracebacks_and_messages_are_logged_with_tokens_masked() -> None:
    import logging

    from songscan.api.logs import RedactingFormatter

    token = "0123456789abcdef0123456789abcdef01234567"
    url = f"http://127.0.0.1:9/a.mp3?x=1&api_token={token}"
    try:
        httpx.get(url, timeout=5)
    except httpx.HTTPError as exc:
        error = exc
    try:
        raise RuntimeError(f"fetch of {url} failed ({ {'api_token': token} })") from error
    except RuntimeError:
        import sys as _sys

        record = logging.LogRecord(
            "songscan.api",
            logging.ERROR,
            __file__,
            1,
            "form %s",
            (f"api_token%3D{token}",),
            _sys.exc_info(),
        )
    text = RedactingFormatter("%(levelprefix)s %(message)s").format(record)
    assert token not in text
    assert text.count("01***67") >= 3 and "Traceback" in text


def test_workers_end_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL of `serve --workers 2`'s supervisor ends its workers too (they would keep
    serving the old socket and running jobs)."""
    proc, _ = start_server(tmp_path, "--workers", "2")
    workers = [
        int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    ]
    assert len(workers) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while True:
        alive = [pid for pid in workers if _running(pid)]
        if not alive:
            break
        assert time.monotonic() < deadline, f"workers {alive} outlived their supervisor"
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever else of the session is left


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


class _DiesBeforeAnswering(serve._Worker):
    """A worker that dies in its start-up without ever answering the supervisor's ping (what a
    SIGTERM to the process group does to a worker still starting)."""

    def target(self, sockets: list[socket.socket] | None = None) -> None:
        time.sleep(0.5)
        os._exit(1)


def test_a_worker_dying_while_its_ping_is_unanswered_is_seen_at_once() -> None:
    """Uvicorn's own check would wait out its timeout for the answer (the supervisor holds both
    ends of the pipe, so the worker's death does not close it), deaf to SIGTERM meanwhile: a
    `songscan serve` stopped while a worker started took up to 60 s to exit."""
    config = uvicorn.Config("songscan.api.serve:app_factory", factory=True, log_config=None)
    worker = _DiesBeforeAnswering(config, sockets=[])
    worker.start()
    began = time.monotonic()
    try:
        assert worker.is_alive(timeout=30) is False
        assert time.monotonic() - began < 20  # not the 30-s timeout
    finally:
        worker.kill()
        worker.join()
