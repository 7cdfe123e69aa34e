"""The enterprise use case called as a task-queue worker would: plain data in (a path, the
checked parameters, an account), the reply and the bill out; no HTTP server anywhere. The
command line's `scan` gives the same result for the same file."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from songscan.accounts.service import Account, Accounts
from songscan.config import DEFAULT
from songscan.enterprise import (
    EnterpriseScans,
    UrlFetch,
    enterprise_request,
)
from songscan.jobs import JobStore
from tests.audio import write_audio

from .conftest import Library, excerpt, mix
from .test_cli import run


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[Accounts]:
    service = Accounts(None, {}, data_dir=tmp_path)
    yield service
    service.close()


@pytest.fixture
def account(accounts: Accounts) -> Account:
    made = accounts.identity.create_account("ops@example.org", None, "enterprise")
    accounts.ledger.credit(made.account.id, 100, kind="adjust")
    return made.account


def _show(library: Library, tmp_path: Path) -> Path:
    """36 s: song 1 from 2 s, song 2 from 20 s (three 12-second chunks, all matched)."""
    parts = [(2.0, excerpt(library.songs[1], 10.0, 17.0)), (20.0, excerpt(library.songs[2], 5, 16))]
    return write_audio(tmp_path / "show.flac", mix(parts, 36.0))


def test_a_synchronous_scan_bills_its_chunks_and_answers_as_the_cli(
    library: Library, tmp_path: Path, accounts: Accounts, account: Account
) -> None:
    show = _show(library, tmp_path)
    scans = EnterpriseScans(accounts, library.data, DEFAULT, UrlFetch())
    request = enterprise_request({"accurate_offsets": "true"}, True, accounts.entitlements(account))
    before = accounts.remaining(account)
    scanned = scans.run(account, show, request, started=time.perf_counter())
    assert scanned.result.billable_chunks == 3
    assert scanned.billed == 3 and accounts.remaining(account) == before - 3
    body = scanned.reply.body
    assert isinstance(body, dict) and scanned.reply.media_type == "application/json"
    best = [chunk["songs"][0]["audio_id"] for chunk in body["result"]]
    assert best == [1, 1, 2]
    cli = run("--data", library.data, "scan", show, "--accurate-offsets")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["result"] == body["result"]

    as_csv = enterprise_request({"response_type": "csv"}, True, accounts.entitlements(account))
    scanned = scans.run(account, show, as_csv, started=time.perf_counter())
    assert scanned.reply.media_type.startswith("text/csv")
    assert isinstance(scanned.reply.body, str) and scanned.reply.body.startswith("offset,")
    assert accounts.remaining(account) == before - 6


def test_a_job_holds_its_chunks_when_queued_and_is_billed_what_it_recognised(
    library: Library, tmp_path: Path, accounts: Accounts, account: Account
) -> None:
    upload = shutil.copy(_show(library, tmp_path), tmp_path / "upload.flac")
    jobs = JobStore(accounts.engine, tmp_path / "jobs-data")
    scans = EnterpriseScans(accounts, library.data, DEFAULT, UrlFetch())
    request = enterprise_request(
        {"response_type": "segments"}, True, accounts.entitlements(account)
    )
    before = accounts.remaining(account)
    record = scans.submit_job(
        jobs, account, request, fields={"api_token": "ab***yz"}, http_method="POST", media=upload
    )
    assert record.chunks_total == 3 and record.reserved == 3 and record.reservation_id
    assert accounts.remaining(account) == before - 3  # held while it waits
    assert not upload.exists()  # moved into the job's directory
    assert record.media_name is not None
    seen: list[tuple[int, int]] = []
    claim = jobs.claim("runner")
    assert claim is not None and claim.job_id == record.id
    scanned = scans.run_job(
        claim,
        record,
        account,
        jobs.job_dir(record.id) / record.media_name,
        request,
        progress=lambda done, total: seen.append((done, total)),
        started=time.perf_counter(),
    )
    assert seen[0] == (0, 3) and seen[-1] == (3, 3)
    assert scanned.billed == 3
    body = scanned.reply.body
    assert isinstance(body, dict)
    assert [segment["audio_id"] for segment in body["result"]] == [1, 2]
    assert accounts.is_pending(record.reservation_id)  # the runner settles it, once
