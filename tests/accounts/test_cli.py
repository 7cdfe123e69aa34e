"""`songscan accounts …` admin commands, on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from songscan.accounts.service import Accounts
from songscan.cli_accounts import accounts_app
from songscan.errors import UnknownToken

runner = CliRunner()


def run(data: Path, database_url: str, *args: str, ok: bool = True) -> str:
    result = runner.invoke(
        accounts_app,
        list(args),
        obj={"data_dir": data},
        env={"SONGSCAN_DATABASE_URL": database_url, "SONGSCAN_CONFIG": str(data / "none.toml")},
    )
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def test_admin_commands(tmp_path: Path, database_url: str) -> None:
    out = run(tmp_path, database_url, "create", "--email", "ops@example.org", "--plan", "startup")
    token = out.strip().splitlines()[-1]
    assert len(token) == 40
    service = Accounts(database_url, {})
    try:
        account = service.authenticate(token, "127.0.0.1")
        assert account.plan == "startup"

        listing = run(tmp_path, database_url, "list")
        assert "ops@example.org" in listing and token not in listing
        assert f"{token[:2]}***{token[-2:]}" in listing

        out = run(
            tmp_path, database_url, "credit", "ops@example.org", "500", "--reference", "IBAN-42"
        )
        assert "credited 500" in out
        again = run(
            tmp_path,
            database_url,
            "credit",
            "ops@example.org",
            "500",
            "--reference",
            "IBAN-42",
            ok=False,
        )
        assert "already credited" in again
        assert service.remaining(account) == 300 + 10_000 + 500

        shown = run(tmp_path, database_url, "show", str(account.id))
        assert "IBAN-42" in shown and "transfer" in shown and token not in shown

        assert "enterprise" in run(
            tmp_path, database_url, "set-plan", "ops@example.org", "enterprise"
        )
        assert "no plan named" in run(
            tmp_path, database_url, "set-plan", "ops@example.org", "gold", ok=False
        )

        new_token = run(tmp_path, database_url, "rotate-token", "ops@example.org").splitlines()[-1]
        with pytest.raises(UnknownToken):
            service.authenticate(token, "127.0.0.1")
        assert service.authenticate(new_token, "127.0.0.1").id == account.id

        assert "disabled" in run(tmp_path, database_url, "disable", "ops@example.org")
        with pytest.raises(UnknownToken, match="disabled"):
            service.authenticate(new_token, "127.0.0.1")
        assert "enabled" in run(tmp_path, database_url, "disable", "--enable", str(account.id))

        assert "no account" in run(tmp_path, database_url, "show", "nobody@example.org", ok=False)
        dup = run(tmp_path, database_url, "create", "--email", "OPS@example.org", ok=False)
        assert "already exists" in dup
    finally:
        service.close()


def test_created_without_email_reads_its_data_dir(tmp_path: Path) -> None:
    result = runner.invoke(
        accounts_app,
        ["create"],
        obj={"data_dir": tmp_path},
        env={"SONGSCAN_DATABASE_URL": "", "SONGSCAN_CONFIG": str(tmp_path / "none.toml")},
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "accounts.db").exists()


@pytest.mark.skipif(
    shutil.which("songscan", path=str(Path(sys.executable).parent)) is None,
    reason="the songscan entry point is not installed",
)
def test_the_songscan_command(tmp_path: Path) -> None:
    songscan = str(Path(sys.executable).parent / "songscan")
    probe = subprocess.run([songscan, "accounts", "--help"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("`songscan accounts` is not mounted in the CLI yet")
    done = subprocess.run(
        [songscan, "--data", str(tmp_path), "accounts", "create", "--email", "sub@example.org"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    token = done.stdout.strip().splitlines()[-1]
    service = Accounts.open(tmp_path, {})
    try:
        assert service.authenticate(token, "127.0.0.1").email == "sub@example.org"
    finally:
        service.close()
