"""200 simultaneous requests against 50 remaining: exactly 50 are served, on both databases."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from songscan.accounts.service import Accounts
from songscan.errors import QuotaExceeded

PASSWORD = "tuning-fork-42"


@pytest.mark.slow
def test_200_concurrent_requests_against_50_left_serve_exactly_50(accounts: Accounts) -> None:
    made = accounts.identity.create_account("busy@example.org", PASSWORD)
    account = made.account
    warmup = accounts.reserve(account, 250, "enterprise")
    accounts.settle(warmup, 250, "success", chunks=250)
    assert accounts.remaining(account) == 50

    start = threading.Barrier(200)

    def one_request(_: int) -> str:
        authenticated = accounts.authenticate(made.token, "127.0.0.1")
        start.wait()
        try:
            reservation = accounts.reserve(authenticated, 1, "recognize")
        except QuotaExceeded:
            return "refused"
        accounts.settle(reservation, 1, "success", chunks=1)
        return "served"

    with ThreadPoolExecutor(max_workers=200) as pool:
        outcomes = list(pool.map(one_request, range(200)))

    served = outcomes.count("served")
    assert served == 50
    assert outcomes.count("refused") == 150
    assert accounts.remaining(account) == 0  # nothing overdrawn
    total, balance = accounts.ledger.sum_and_balance(account.id)
    assert total == balance == 0
    billed = [r.cost for r in accounts.ledger.status(account.id, recent=500).recent]
    assert billed == [1] * 50 + [250]  # one ledger row per served request, none for refusals


@pytest.mark.slow
def test_concurrent_scans_with_failures_never_overdraw(accounts: Accounts) -> None:
    """Scans of 3 chunks race for 50 requests; some fail and are refunded, freeing room."""
    made = accounts.identity.create_account("scans@example.org", PASSWORD)
    accounts.settle(accounts.reserve(made.account, 250, "enterprise"), 250, "success", 250)
    start = threading.Barrier(60)

    def one_scan(i: int) -> int:
        start.wait()
        try:
            reservation = accounts.reserve(made.account, 3, "enterprise")
        except QuotaExceeded:
            return 0
        used = 0 if i % 4 == 0 else 3
        accounts.settle(reservation, used, "success" if used else "error 500", chunks=used)
        return used

    with ThreadPoolExecutor(max_workers=60) as pool:
        billed = sum(pool.map(one_scan, range(60)))

    assert billed <= 50
    assert accounts.remaining(made.account) == 50 - billed >= 0
    total, balance = accounts.ledger.sum_and_balance(made.account.id)
    assert total == balance == 50 - billed


@pytest.mark.slow
def test_200_concurrent_requests_billed_after_against_50_left_bill_exactly_50(
    accounts: Accounts,
) -> None:
    """Standard recognitions are checked first and charged after their work: all 200 may pass
    the check, yet exactly 50 are billed and the others refused."""
    made = accounts.identity.create_account("after@example.org", PASSWORD)
    accounts.settle(accounts.reserve(made.account, 250, "enterprise"), 250, "success", 250)
    start = threading.Barrier(200)

    def one_request(_: int) -> str:
        authenticated = accounts.authenticate(made.token, "127.0.0.1")
        try:
            with accounts.billed_after(authenticated, 1, "recognize") as bill:
                start.wait()  # every one has passed the check before any is charged
                bill.charge(1)
        except QuotaExceeded:
            return "refused"
        return "served"

    with ThreadPoolExecutor(max_workers=200) as pool:
        outcomes = list(pool.map(one_request, range(200)))

    assert outcomes.count("served") == 50
    assert outcomes.count("refused") == 150
    assert accounts.remaining(made.account) == 0  # nothing overdrawn
    total, balance = accounts.ledger.sum_and_balance(made.account.id)
    assert total == balance == 0
    billed = [r.cost for r in accounts.ledger.status(made.account.id, recent=500).recent]
    assert billed == [1] * 50 + [250]  # one ledger row per served request, none for refusals
