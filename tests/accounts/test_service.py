"""Accounts, tokens, metering and log-in, through the real service on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text, update

from songscan.accounts.db import VERSION_TABLE, make_engine, upgrade
from songscan.accounts.models import (
    AccountRow,
    Base,
    LedgerEntry,
    LoginThrottle,
    ServerLease,
    as_utc,
)
from songscan.accounts.ratelimit import RateLimited
from songscan.accounts.service import (
    LOGIN_FAILED,
    RELEASED,
    Accounts,
    LoginRefused,
    SignupRefused,
    mask_token,
)
from songscan.errors import (
    AlreadySettled,
    InvalidParameters,
    MissingToken,
    QuotaExceeded,
    UnknownToken,
)

PASSWORD = "tuning-fork-42"


def count_accounts(accounts: Accounts) -> int:
    with accounts.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(AccountRow)) or 0)


def test_migrations_match_the_models(accounts: Accounts) -> None:
    with accounts.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}), Base.metadata
        )
    assert diff == []


def test_migrations_run_twice_without_harm(database_url: str, config: dict[str, Any]) -> None:
    first = Accounts(database_url, config)
    made = first.identity.create_account("kept@example.org", PASSWORD)
    first.close()
    second = Accounts(database_url, config)  # upgrades again at startup: a no-op
    assert second.authenticate(made.token, "127.0.0.1").email == "kept@example.org"
    second.close()


def test_signup_gives_a_token_and_300_free_requests(accounts: Accounts) -> None:
    made = accounts.identity.create_account("Someone@Example.org ", PASSWORD)
    assert made.account.email == "someone@example.org"
    assert made.account.plan == "trial"
    assert len(made.token) >= 32 and int(made.token, 16).bit_length() > 128 - 16
    account = accounts.authenticate(made.token, "127.0.0.1")
    assert account.id == made.account.id
    assert accounts.remaining(account) == 300
    assert made.account.token_hint == mask_token(made.token)
    assert made.token not in made.account.token_hint


def test_the_token_is_stored_only_as_a_hash(accounts: Accounts) -> None:
    made = accounts.identity.create_account("hash@example.org", PASSWORD)
    with accounts.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(select(table)).all():
                assert made.token not in repr(tuple(row)), table.name


@pytest.mark.parametrize(
    ("email", "password", "message"),
    [
        ("not-an-address", PASSWORD, "valid e-mail"),
        ("weak@example.org", "short", "at least 10 characters"),
        ("weak@example.org", "aaaaaaaaaaaa", "5 different characters"),
        ("weak@example.org", "password123", "too common"),
        ("lettersonly@example.org", "lettersonly", "e-mail"),
    ],
)
def test_bad_signups_are_refused_and_change_nothing(
    accounts: Accounts, email: str, password: str, message: str
) -> None:
    before = count_accounts(accounts)
    with pytest.raises(SignupRefused, match=message):
        accounts.identity.create_account(email, password)
    assert count_accounts(accounts) == before


def test_duplicate_email_is_refused(accounts: Accounts) -> None:
    accounts.identity.create_account("twice@example.org", PASSWORD)
    before = count_accounts(accounts)
    with pytest.raises(SignupRefused, match="already exists"):
        accounts.identity.create_account("TWICE@example.org", "another-password-9")
    assert count_accounts(accounts) == before


def test_missing_unknown_and_malformed_tokens(accounts: Accounts) -> None:
    with pytest.raises(MissingToken):
        accounts.authenticate(None, "127.0.0.1")
    with pytest.raises(MissingToken):
        accounts.authenticate("  ", "127.0.0.1")
    with pytest.raises(UnknownToken):
        accounts.authenticate("0" * 40, "127.0.0.1")
    with pytest.raises(UnknownToken):
        accounts.authenticate("x" * 10_000, "127.0.0.1")


def test_rotation_invalidates_the_old_token_at_once(accounts: Accounts) -> None:
    made = accounts.identity.create_account("rotate@example.org", PASSWORD)
    rotated = accounts.identity.rotate_token(made.account.id)
    assert rotated.token != made.token
    with pytest.raises(UnknownToken):
        accounts.authenticate(made.token, "127.0.0.1")
    assert accounts.authenticate(rotated.token, "127.0.0.1").id == made.account.id
    assert accounts.account(made.account.id).token_hint == mask_token(rotated.token)


def test_disabled_account_is_refused_everywhere(accounts: Accounts) -> None:
    made = accounts.identity.create_account("off@example.org", PASSWORD)
    account = accounts.authenticate(made.token, "127.0.0.1")
    accounts.identity.set_disabled(made.account.id)
    with pytest.raises(UnknownToken, match="disabled"):
        accounts.authenticate(made.token, "127.0.0.1")
    with pytest.raises(UnknownToken, match="disabled"):
        accounts.reserve(account, 1, "recognize")  # authenticated before it was disabled
    with pytest.raises(LoginRefused, match="disabled"):
        accounts.identity.login("off@example.org", PASSWORD)
    accounts.identity.set_disabled(made.account.id, False)
    assert accounts.authenticate(made.token, "127.0.0.1").id == made.account.id


def test_mask_token() -> None:
    assert mask_token("abcdef0123456789yz") == "ab***yz"
    assert mask_token("short") == "***"
    assert mask_token(None) == ""


def test_a_reservation_block_bills_what_its_work_used_and_nothing_when_it_fails(
    accounts: Accounts,
) -> None:
    account = accounts.identity.create_account("held@example.org", PASSWORD).account
    with accounts.reservation(account, 10, "enterprise") as held:
        assert accounts.remaining(account) == 290  # held while the work runs
        assert held.settle(7, "ok", 7) == 7
        assert held.settle(7, "ok", 7) == 0  # once
    assert accounts.remaining(account) == 293
    with pytest.raises(QuotaExceeded), accounts.reservation(account, 1, "recognize") as held:
        raise QuotaExceeded("the work failed")
    assert accounts.remaining(account) == 293  # a failed block costs nothing
    with accounts.reservation(account, 4, "enterprise"):
        pass  # neither billed nor handed over: given back
    assert accounts.remaining(account) == 293
    with accounts.reservation(account, 5, "enterprise") as held:
        held.hand_over("job-1")
        entry_id = held.entry_id
    assert entry_id is not None and accounts.is_pending(entry_id)  # the job settles it
    with accounts.reservation(account, 0, "enterprise") as held:
        assert held.entry_id is None and held.settle(0, "ok", 0) == 0  # nothing to hold
    statuses = [(r.cost, r.status) for r in accounts.ledger.status(account.id).recent]
    assert (7, "ok") in statuses and (0, "error 902") in statuses and (0, "unused") in statuses
    assert (
        accounts.ledger.sum_and_balance(account.id)[0]
        == accounts.ledger.sum_and_balance(account.id)[1]
    )


def test_work_billed_after_is_checked_first_charged_once_and_pends_nothing(
    accounts: Accounts,
) -> None:
    made = accounts.identity.create_account("after@example.org", PASSWORD)
    account = made.account
    lines = select(func.count()).where(LedgerEntry.account_id == account.id)
    with accounts.engine.connect() as conn:
        before = conn.scalar(lines)
    with accounts.billed_after(account, 1, "recognize") as bill:
        assert accounts.remaining(account) == 300  # nothing is held while the work runs
        with accounts.engine.connect() as conn:
            assert conn.scalar(lines) == before  # nor written
        assert bill.charge(1) == 1
        assert bill.charge(1) == 0  # once
    assert accounts.remaining(account) == 299
    with pytest.raises(InvalidParameters), accounts.billed_after(account, 1, "recognize"):
        raise InvalidParameters("the work failed")
    with accounts.billed_after(account, 1, "recognize"):
        pass  # never charged: costs nothing, and is not recorded
    assert accounts.remaining(account) == 299
    recent = accounts.ledger.status(account.id).recent
    assert [(r.method, r.cost, r.chunks, r.status) for r in recent] == [
        ("recognize", 0, 0, "error 50"),
        ("recognize", 1, 1, "ok"),
    ]
    # What is left is checked before the work: an account with nothing left does none.
    accounts.settle(accounts.reserve(account, 299, "enterprise"), 299, "ok", 299)
    with (
        pytest.raises(QuotaExceeded, match="used up"),
        accounts.billed_after(account, 1, "recognize"),
    ):
        raise AssertionError("the work ran")
    total, balance = accounts.ledger.sum_and_balance(account.id)
    assert total == balance == 0


def test_work_billed_after_that_lost_a_race_for_the_last_request_is_refused(
    accounts: Accounts,
) -> None:
    made = accounts.identity.create_account("race@example.org", PASSWORD)
    account = made.account
    accounts.settle(accounts.reserve(account, 299, "enterprise"), 299, "ok", 299)
    with (
        accounts.billed_after(account, 1, "recognize") as first,
        pytest.raises(QuotaExceeded),
        accounts.billed_after(account, 1, "recognize") as second,
    ):
        first.charge(1)  # the other request takes the last one while this one works
        second.charge(1)
    assert accounts.remaining(account) == 0  # never overdrawn
    assert [(r.cost, r.status) for r in accounts.ledger.status(account.id).recent[:1]] == [
        (1, "ok")
    ]  # the refused one left no line
    total, balance = accounts.ledger.sum_and_balance(account.id)
    assert total == balance == 0


def test_work_billed_after_rolls_the_month_over_and_follows_a_plan_change(
    accounts: Accounts,
) -> None:
    made = accounts.identity.create_account("month-after@example.org", PASSWORD)
    account = made.account
    accounts.ledger.set_plan(account.id, "startup")
    with accounts.engine.begin() as conn:  # pretend the month changed
        conn.execute(update(AccountRow).where(AccountRow.id == account.id).values(period="2000-01"))
    with accounts.billed_after(account, 1, "recognize") as bill:  # `account` says "trial"
        bill.charge(1)
    assert accounts.remaining(account) == 300 + 10_000 - 1  # this month's grant, then billed
    total, balance = accounts.ledger.sum_and_balance(account.id)
    assert total == balance


def test_the_public_token_billed_after_counts_against_its_address(accounts: Accounts) -> None:
    one = accounts.authenticate("test", "10.0.0.1")
    for _ in range(10):
        with accounts.billed_after(one, 1, "recognize") as bill:
            bill.charge(1)
    with (
        pytest.raises(QuotaExceeded, match="10 requests a day per address"),
        accounts.billed_after(one, 1, "recognize"),
    ):
        raise AssertionError("the work ran")
    assert accounts.remaining(accounts.authenticate("test", "10.0.0.2")) == 10
    total, balance = accounts.ledger.sum_and_balance(one.id)
    assert total == balance


def test_reserve_and_settle_bill_exactly_what_was_used(accounts: Accounts) -> None:
    made = accounts.identity.create_account("meter@example.org", PASSWORD)
    account = made.account
    scan = accounts.reserve(account, 10, "enterprise")
    assert accounts.remaining(account) == 290  # held while the scan runs
    accounts.settle(scan, 7, "success", chunks=7)
    assert accounts.remaining(account) == 293
    failed = accounts.reserve(account, 1, "recognize")
    accounts.settle(failed, 0, "error 500", chunks=0)  # no work done: nothing billed
    assert accounts.remaining(account) == 293
    with pytest.raises(AlreadySettled, match="already settled"):
        accounts.settle(failed, 0, "error 500", chunks=0)
    with pytest.raises(ValueError):
        accounts.settle(accounts.reserve(account, 2, "enterprise"), 3, "success", chunks=3)
    total, balance = accounts.ledger.sum_and_balance(account.id)
    assert total == balance
    recent = accounts.ledger.status(account.id).recent
    assert [(r.method, r.cost, r.status) for r in recent[1:]] == [
        ("recognize", 0, "error 500"),
        ("enterprise", 7, "success"),
    ]
    assert recent[0].status == "pending"  # the one left unsettled above


def test_a_scan_larger_than_what_is_left_is_refused_up_front(accounts: Accounts) -> None:
    made = accounts.identity.create_account("scan@example.org", PASSWORD)
    big = accounts.reserve(made.account, 295, "enterprise")
    accounts.settle(big, 295, "success", chunks=295)
    with pytest.raises(QuotaExceeded) as refused:
        accounts.reserve(made.account, 12, "enterprise")
    assert refused.value.code == 902
    assert refused.value.message == "this scan needs 12 requests (12-second chunks); 5 are left"
    assert accounts.remaining(made.account) == 5  # nothing taken
    for _ in range(5):
        accounts.settle(accounts.reserve(made.account, 1, "recognize"), 1, "success", 1)
    with pytest.raises(QuotaExceeded, match="used up"):
        accounts.reserve(made.account, 1, "recognize")


def test_enterprise_plan_runs_on_overage(accounts: Accounts) -> None:
    made = accounts.identity.create_account(plan="enterprise")
    left = accounts.remaining(made.account)
    assert left == 300 + 100_000
    scan = accounts.reserve(made.account, left + 50, "enterprise")
    accounts.settle(scan, left + 50, "success", chunks=left + 50)
    status = accounts.ledger.status(made.account.id)
    assert status.remaining == -50
    assert status.overage_left == 1_000_000 - 50


def test_month_roll_over_expires_unused_monthly_requests(accounts: Accounts) -> None:
    made = accounts.identity.create_account("monthly@example.org", PASSWORD)
    accounts.ledger.set_plan(made.account.id, "startup")
    account = accounts.account(made.account.id)
    assert accounts.remaining(account) == 300 + 10_000
    accounts.settle(accounts.reserve(account, 100, "enterprise"), 100, "success", 100)
    with accounts.engine.begin() as conn:  # pretend the month changed
        conn.execute(update(AccountRow).where(AccountRow.id == account.id).values(period="2000-01"))
    # 9,900 unused monthly requests expire, 10,000 new ones come; the free 300 stay.
    assert accounts.remaining(account) == 300 + 10_000
    kinds = [line.kind for line in accounts.ledger.status(account.id).credits]
    assert kinds[:3] == ["grant", "expire", "grant"]
    total, balance = accounts.ledger.sum_and_balance(account.id)
    assert total == balance


def test_public_test_token_has_a_daily_allowance_per_address(accounts: Accounts) -> None:
    one = accounts.authenticate("test", "10.0.0.1")
    assert one.is_test and accounts.remaining(one) == 10
    for _ in range(9):
        accounts.settle(accounts.reserve(one, 1, "recognize"), 1, "success", 1)
    failed = accounts.reserve(one, 1, "recognize")
    accounts.settle(failed, 0, "error 300", 0)  # refunded: still one left
    accounts.settle(accounts.reserve(one, 1, "recognize"), 1, "success", 1)
    with pytest.raises(QuotaExceeded, match="10 requests a day per address"):
        accounts.reserve(one, 1, "recognize")
    other = accounts.authenticate("test", "10.0.0.2")
    assert accounts.remaining(other) == 10


def test_public_test_token_is_off_by_default(database_url: str) -> None:
    service = Accounts(database_url, {})
    with pytest.raises(UnknownToken, match="not enabled"):
        service.authenticate("test", "127.0.0.1")
    service.close()


def test_login_and_the_attempt_limit(accounts: Accounts) -> None:
    made = accounts.identity.create_account("login@example.org", PASSWORD)
    assert accounts.identity.login("LOGIN@example.org", PASSWORD, "10.0.0.1").id == made.account.id
    with pytest.raises(LoginRefused, match="wrong e-mail address or password"):
        accounts.identity.login("nobody@example.org", PASSWORD, "10.0.0.1")
    for _ in range(5):
        with pytest.raises(LoginRefused, match="wrong"):
            accounts.identity.login("login@example.org", "not-the-password", "10.0.0.1")
    with pytest.raises(LoginRefused) as throttled:  # even with the right password
        accounts.identity.login("login@example.org", PASSWORD, "10.0.0.1")
    assert throttled.value.message == LOGIN_FAILED
    assert accounts.identity.login("login@example.org", PASSWORD, "10.0.0.2").id == made.account.id
    with accounts.engine.begin() as conn:  # the wait ends
        conn.execute(text("UPDATE login_throttle SET wait_until = NULL"))
    assert accounts.identity.login("login@example.org", PASSWORD, "10.0.0.1").id == made.account.id


def test_login_throttle_backs_off_and_is_shared_by_every_process(
    accounts: Accounts, database_url: str
) -> None:
    """Another server process on the same database (here: another service object with its
    own engine) refuses what this one throttled; each further failure doubles the wait."""
    accounts.identity.create_account("shared@example.org", PASSWORD)
    other = Accounts(database_url, {})
    try:
        for _ in range(5):
            with pytest.raises(LoginRefused):
                accounts.identity.login("shared@example.org", "not-the-password", "10.0.0.9")
        with pytest.raises(LoginRefused):
            other.identity.login("shared@example.org", PASSWORD, "10.0.0.9")
        waits = []
        for _ in range(3):
            with accounts.engine.begin() as conn:  # as if each wait had passed
                conn.execute(text("UPDATE login_throttle SET wait_until = NULL"))
            with pytest.raises(LoginRefused):
                other.identity.login("shared@example.org", "not-the-password", "10.0.0.9")
            with accounts.engine.connect() as conn:
                row = conn.execute(
                    select(LoginThrottle.wait_until, LoginThrottle.last_failure_at).where(
                        LoginThrottle.wait_until.is_not(None)
                    )
                ).one()
            assert row.wait_until is not None
            waited = as_utc(row.wait_until) - as_utc(row.last_failure_at)
            waits.append(round(waited.total_seconds()))
        assert waits == [60, 120, 240]
    finally:
        other.close()


def test_sessions(accounts: Accounts) -> None:
    made = accounts.identity.create_account("session@example.org", PASSWORD)
    session_id = accounts.identity.start_session(made.account.id)
    assert accounts.identity.session_account(session_id) == made.account
    assert accounts.identity.session_account("forged") is None
    accounts.identity.end_session(session_id)
    assert accounts.identity.session_account(session_id) is None


def test_bank_transfer_is_credited_once(accounts: Accounts) -> None:
    made = accounts.identity.create_account("bank@example.org", PASSWORD)
    assert accounts.ledger.credit(made.account.id, 5000, kind="transfer", reference="SEPA-2024-17")
    assert not accounts.ledger.credit(
        made.account.id, 5000, kind="transfer", reference="SEPA-2024-17"
    )
    assert accounts.remaining(made.account) == 5300
    with pytest.raises(InvalidParameters):
        accounts.ledger.credit(made.account.id, -5, reference="negative")
    with accounts.engine.connect() as conn:
        rows = conn.execute(
            select(LedgerEntry.delta).where(
                LedgerEntry.account_id == made.account.id, LedgerEntry.kind == "transfer"
            )
        ).all()
    assert [r.delta for r in rows] == [5000]


def test_entitlements_follow_the_plan(accounts: Accounts) -> None:
    made = accounts.identity.create_account(plan="trial")
    trial = accounts.entitlements(made.account)
    assert not (trial.enterprise_metadata or trial.custom_catalog)
    enterprise = accounts.entitlements(accounts.ledger.set_plan(made.account.id, "enterprise"))
    assert enterprise.enterprise_metadata and enterprise.custom_catalog
    assert enterprise.enterprise_url_input
    assert enterprise.max_file_bytes > trial.max_file_bytes


def test_rate_limit_per_plan(database_url: str) -> None:
    service = Accounts(
        database_url,
        {"accounts": {"test_token": True}, "plans": {"trial": {"rate_limit_per_s": 0.001}}},
    )
    try:
        account = service.identity.create_account().account
        service.check_rate(account)
        with pytest.raises(RateLimited) as limited:
            service.check_rate(account)  # one per 1000 s: the second is refused
        assert limited.value.http_status == 429
        assert int(limited.value.retry_after_header) > 900
        service.check_rate(service.identity.create_account().account)  # per account
        service.check_rate(service.authenticate("test", "10.0.0.1"))
        service.check_rate(service.authenticate("test", "10.0.0.2"))  # per address for `test`
        with pytest.raises(RateLimited):
            service.check_rate(service.authenticate("test", "10.0.0.1"))
    finally:
        service.close()


def test_reservations_of_a_dead_server_are_released_and_only_those(
    database_url: str, config: dict[str, Any]
) -> None:
    """Two server instances on one database; one dies (its lease is left to expire). The
    sweep releases what the dead one held, with a ledger status saying why, and nothing
    held by the live one, by a long job, or by nobody (a row from before leases)."""
    dead, live = Accounts(database_url, config), Accounts(database_url, config)
    try:
        dead_id = dead.ledger.start_lease()
        live.ledger.start_lease()
        account = live.identity.create_account().account
        public = live.authenticate("test", "10.0.0.9")
        orphaned = dead.reserve(account, 40, "enterprise")
        dead.reserve(public, 3, "recognize")
        for_job = dead.reserve(account, 7, "enterprise")
        dead.ledger.hand_over(for_job, "0123abcd")
        kept = live.reserve(account, 10, "enterprise")
        unowned = Accounts(database_url, config).reserve(account, 5, "enterprise")
        assert live.remaining(account) == 300 - 62 and live.remaining(public) == 7
        assert live.ledger.release_abandoned() == 0  # the dead one's lease has not expired yet
        with live.engine.begin() as conn:  # it stopped renewing: the lease runs out
            conn.execute(
                update(ServerLease)
                .where(ServerLease.id == dead_id)
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
        assert live.ledger.release_abandoned() == 2
        assert live.ledger.release_abandoned() == 0  # once
        assert live.remaining(account) == 300 - 22  # the 40 are back; 7 + 10 + 5 still held
        assert live.remaining(public) == 10  # the public token's daily allowance too
        assert all(live.is_pending(r.entry_id) for r in (for_job, kept, unowned))
        assert not live.is_pending(orphaned.entry_id)
        live.settle(kept, 10, "ok", chunks=10)
        with pytest.raises(AlreadySettled):  # the dead server cannot bill it afterwards
            dead.settle(orphaned, 40, "ok", chunks=40)
        statuses = [(r.cost, r.status) for r in live.ledger.status(account.id).recent]
        assert statuses == [(5, "pending"), (10, "ok"), (7, "pending"), (0, RELEASED)]
        assert (
            live.ledger.sum_and_balance(account.id)[0] == live.ledger.sum_and_balance(account.id)[1]
        )
        with live.engine.connect() as conn:  # the expired lease is forgotten
            assert conn.scalar(select(func.count()).select_from(ServerLease)) == 1
    finally:
        dead.close()
        live.close()


def test_reservations_left_pending_before_leases_are_released_after_the_upgrade(
    database_url: str, config: dict[str, Any]
) -> None:
    engine = make_engine(database_url)
    upgrade(engine, "0001")
    old = datetime.now(UTC)
    with engine.begin() as conn:  # a 0001 server: an account, 300 free, 37 reserved, then killed
        conn.execute(
            text(
                "INSERT INTO accounts (token_hash, token_hint, plan, balance, period, "
                "disabled, is_test, failed_logins, created_at) "
                "VALUES ('h', 'ab***yz', 'trial', 263, '', false, false, 0, :t)"
            ),
            {"t": old},
        )
        account_id = conn.scalar(text("SELECT id FROM accounts WHERE token_hash = 'h'"))
        for kind, delta, status in (("bonus", 300, None), ("usage", -37, "pending")):
            conn.execute(
                text(
                    "INSERT INTO ledger_entries (account_id, created_at, day, kind, delta, "
                    "reserved, status) VALUES (:a, :t, :d, :k, :delta, :r, :s)"
                ),
                {
                    "a": account_id,
                    "t": old,
                    "d": old.date(),
                    "k": kind,
                    "delta": delta,
                    "r": max(0, -delta),
                    "s": status,
                },
            )
    engine.dispose()
    accounts = Accounts(database_url, config)  # upgrades to head
    try:
        assert accounts.ledger.release_abandoned() == 1
        assert accounts.ledger.sum_and_balance(account_id) == (300, 300)
        assert [r.status for r in accounts.ledger.status(account_id).recent] == [RELEASED]
    finally:
        accounts.close()


def test_a_stopped_server_ends_its_lease(accounts: Accounts) -> None:
    accounts.ledger.start_lease()
    account = accounts.identity.create_account().account
    accounts.reserve(account, 4, "enterprise")
    assert accounts.ledger.release_abandoned() == 0
    accounts.ledger.end_lease()  # a graceful stop: what it still holds is released at once
    assert accounts.ledger.release_abandoned() == 1
    accounts.ledger.renew_lease()  # no lease: nothing to renew
    assert accounts.ledger.instance_id is None
