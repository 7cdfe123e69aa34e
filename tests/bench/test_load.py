"""bench.load --baseline: a server of another revision's code, and the table against it."""

from __future__ import annotations

from pathlib import Path

import httpx
from bench.load import Server, render_baseline
from bench.startup import export


def test_a_baseline_server_runs_the_exported_revision(tmp_path: Path) -> None:
    (tmp_path / "rev").mkdir()
    src = export("HEAD", tmp_path / "rev")
    server = Server(tmp_path / "data", 1, tmp_path / "server.log", src=src)
    try:
        server.wait_ready()
        assert httpx.get(server.url + "/healthz").status_code == 200
        environ = Path(f"/proc/{server.proc.pid}/environ").read_bytes().split(b"\0")
        assert f"PYTHONPATH={src}".encode() in environ
        assert server.cmd[1:3] == ["-m", "songscan.cli"]
    finally:
        server.stop()
    assert not server.leaked


def _level(clients: int, rps: float, p99: float, cpu: float, rate: float | None = None) -> dict:
    return {
        "clients": clients,
        "arrival_rate": rate,
        "rps": rps,
        "p99_ms": p99,
        "server_cpu_ms_per_request": cpu,
    }


def test_the_baseline_table_pairs_each_level_with_its_ratio() -> None:
    base = {
        "rev": "abc1234",
        "levels": [_level(1, 50.0, 20.0, 20.0), _level(64, 100.0, 700.0, 16.0)],
        "open_levels": [_level(0, 60.0, 90.0, 18.0, rate=60.0)],
    }
    now = {
        "levels": [_level(1, 55.0, 18.0, 15.0), _level(64, 110.0, 650.0, 16.0)],
        "open_levels": [_level(0, 60.0, 80.0, 9.0, rate=60.0)],
    }
    table = "\n".join(render_baseline(base, now))
    assert "### Against `abc1234` in the same run" in table
    assert "| 1 clients | 50.0 → 55.0 | 20 → 18 ms | 20.0 → 15.0 ms | 0.75 |" in table
    assert "| 64 clients | 100.0 → 110.0 | 700 → 650 ms | 16.0 → 16.0 ms | 1.00 |" in table
    assert "| open loop, 60/s | 60.0 → 60.0 | 90 → 80 ms | 18.0 → 9.0 ms | 0.50 |" in table
    assert render_baseline(None, now) == []
