"""Who is calling: accounts, their API tokens, log-in, web sessions, the server's secrets.

Tokens, session ids and passwords are never stored, only their hashes (`tokens.py`). Failed
log-ins are throttled in the database (`ratelimit.login_keys`), so every server process
enforces the same back-off. What an account may spend is the ledger's (`ledger.py`); a new
account's free requests are its first ledger entry, written with the account.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from songscan.accounts import tokens
from songscan.accounts.config import AccountsConfig
from songscan.accounts.models import (
    AccountRow,
    LoginThrottle,
    ServerSecret,
    WebSession,
    as_utc,
    utcnow,
)
from songscan.accounts.plans import Plan
from songscan.accounts.ratelimit import FORGET_AFTER, LoginKey, login_keys, login_wait
from songscan.accounts.store import (
    account_row,
    add_balance,
    insert_ignore,
    read_only,
    write_ledger,
)
from songscan.errors import InvalidParameters, MissingToken, NotFound, UnknownToken


class SignupRefused(InvalidParameters):
    """Sign-up input was refused (duplicate e-mail, weak password, bad address)."""


class LoginRefused(InvalidParameters):
    """Wrong e-mail or password, too many failed attempts, or a disabled account."""


# One answer for an unknown e-mail, a wrong password and a throttled attempt, so that none of
# them tells whether the address has an account (OWASP Authentication Cheat Sheet).
LOGIN_FAILED = (
    "wrong e-mail address or password (after several failed attempts, log-ins from your "
    "address must wait a few minutes)"
)


@dataclass(frozen=True)
class Account:
    """An account as the API sees it. For the public `test` token, `client_addr` is the caller."""

    id: int
    email: str | None
    plan: str
    token_hint: str
    disabled: bool
    is_test: bool
    created_at: datetime
    client_addr: str | None = None


@dataclass(frozen=True)
class NewToken:
    """A token shown in full exactly once: right after it was made."""

    account: Account
    token: str


def account_of(row: Any) -> Account:
    """The Account of an `accounts` row (or of a select of `ACCOUNT_COLUMNS`)."""
    return Account(
        id=row.id,
        email=row.email,
        plan=row.plan,
        token_hint=row.token_hint,
        disabled=row.disabled,
        is_test=row.is_test,
        created_at=as_utc(row.created_at),
    )


ACCOUNT_COLUMNS = (
    AccountRow.id,
    AccountRow.email,
    AccountRow.plan,
    AccountRow.token_hint,
    AccountRow.disabled,
    AccountRow.is_test,
    AccountRow.created_at,
)
# Built once: it runs on every request (`store.py`).
_BY_TOKEN = select(*ACCOUNT_COLUMNS).where(AccountRow.token_hash == bindparam("token_hash"))


class Identity:
    """Sign-up, tokens, log-in and sessions over the accounts database."""

    def __init__(self, engine: Engine, config: AccountsConfig, plans: dict[str, Plan]) -> None:
        self.engine = engine
        self.config = config
        self.plans = plans
        self._test_account_id = self._ensure_test_account() if config.test_token else None

    def _ensure_test_account(self) -> int:
        token_hash = tokens.hash_token(tokens.TEST_TOKEN)
        with self.engine.begin() as conn:
            insert_ignore(
                conn,
                AccountRow,
                {
                    "email": None,
                    "token_hash": token_hash,
                    "token_hint": tokens.mask_token(tokens.TEST_TOKEN),
                    "plan": self.config.test_plan,
                    "balance": 0,
                    "period": "",
                    "disabled": False,
                    "is_test": True,
                    "created_at": utcnow(),
                },
            )
            found = conn.scalar(select(AccountRow.id).where(AccountRow.token_hash == token_hash))
        assert found is not None
        return int(found)

    # -- accounts and tokens --------------------------------------------------------------

    def create_account(
        self, email: str | None = None, password: str | None = None, plan: str | None = None
    ) -> NewToken:
        """A new account with its first free requests; the token is in the result, once."""
        plan = plan or self.config.default_plan
        if plan not in self.plans:
            raise SignupRefused(f"no plan named {plan!r} (plans: {', '.join(self.plans)})")
        if email is not None:
            email = tokens.normalise_email(email)
            if problem := tokens.email_problem(email):
                raise SignupRefused(problem)
        if password is not None and (problem := tokens.password_problem(password, email)):
            raise SignupRefused(problem)
        password_hash = tokens.hash_password(password) if password is not None else None
        token = tokens.new_token()
        now = utcnow()
        try:
            with self.engine.begin() as conn:
                if email is not None and conn.scalar(
                    select(AccountRow.id).where(AccountRow.email == email)
                ):
                    raise SignupRefused("an account with this e-mail address already exists")
                result = conn.execute(
                    insert(AccountRow).values(
                        email=email,
                        password_hash=password_hash,
                        token_hash=tokens.hash_token(token),
                        token_hint=tokens.mask_token(token),
                        plan=plan,
                        balance=0,
                        period="",
                        disabled=False,
                        is_test=False,
                        created_at=now,
                    )
                )
                assert result.inserted_primary_key is not None
                account_id = int(result.inserted_primary_key[0])
                if self.config.free_requests > 0:
                    write_ledger(
                        conn,
                        account_id,
                        "bonus",
                        self.config.free_requests,
                        reference="signup",
                        note="free requests of a new account",
                    )
                    add_balance(conn, account_id, self.config.free_requests)
                row = account_row(conn, account_id)
        except IntegrityError as exc:  # two sign-ups with one address at the same moment
            raise SignupRefused("an account with this e-mail address already exists") from exc
        return NewToken(account_of(row), token)

    def authenticate(self, token: str | None, client_addr: str) -> Account:
        """The account of `token`. MissingToken (901) without one, UnknownToken (900) when bad."""
        token = (token or "").strip()
        if not token:
            hint = " (api_token=test allows a few requests a day)" if self.config.test_token else ""
            raise MissingToken(f"no api_token was sent{hint}")
        if token == tokens.TEST_TOKEN:
            if self._test_account_id is None:
                raise UnknownToken("the public test token is not enabled on this server")
            return replace(self.account(self._test_account_id), client_addr=client_addr)
        if len(token) > 256:
            raise UnknownToken()
        with read_only(self.engine) as conn:
            row = conn.execute(_BY_TOKEN, {"token_hash": tokens.hash_token(token)}).first()
        if row is None:
            raise UnknownToken()
        if row.disabled:
            raise UnknownToken("the account of this api_token is disabled")
        return replace(account_of(row), client_addr=client_addr)

    def account(self, account_id: int) -> Account:
        with read_only(self.engine) as conn:
            return account_of(account_row(conn, account_id))

    def find(self, ident: str) -> Account:
        """An account by id or e-mail address (admin commands)."""
        ident = ident.strip()
        with read_only(self.engine) as conn:
            if ident.isdigit():
                row = conn.execute(select(AccountRow).where(AccountRow.id == int(ident))).first()
            else:
                email = tokens.normalise_email(ident)
                row = conn.execute(select(AccountRow).where(AccountRow.email == email)).first()
        if row is None:
            raise NotFound(f"no account {ident!r}")
        return account_of(row)

    def list_accounts(self) -> list[tuple[Account, int]]:
        """Every account with its balance, oldest first."""
        with read_only(self.engine) as conn:
            rows = conn.execute(select(AccountRow).order_by(AccountRow.id)).all()
        return [(account_of(row), int(row.balance)) for row in rows]

    def rotate_token(self, account_id: int) -> NewToken:
        """A new token; the old one stops working with this transaction's commit."""
        token = tokens.new_token()
        with self.engine.begin() as conn:
            row = account_row(conn, account_id)
            if row.is_test:
                raise InvalidParameters("the public test token cannot be rotated")
            conn.execute(
                update(AccountRow)
                .where(AccountRow.id == account_id)
                .values(token_hash=tokens.hash_token(token), token_hint=tokens.mask_token(token))
            )
            row = account_row(conn, account_id)
        return NewToken(account_of(row), token)

    def set_disabled(self, account_id: int, disabled: bool = True) -> Account:
        with self.engine.begin() as conn:
            account_row(conn, account_id)
            conn.execute(
                update(AccountRow).where(AccountRow.id == account_id).values(disabled=disabled)
            )
            if disabled:
                conn.execute(delete(WebSession).where(WebSession.account_id == account_id))
            return account_of(account_row(conn, account_id))

    # -- log-in and web sessions ------------------------------------------------------------

    def login(self, email: str, password: str, client_addr: str = "") -> Account:
        """The account whose e-mail and password these are, asked from `client_addr`.

        Failures are throttled per (e-mail, address) and per address (`ratelimit.login_keys`):
        a throttled attempt is refused unchecked, right password or not. Unknown e-mail,
        wrong password and throttled attempt all raise the same LoginRefused(LOGIN_FAILED),
        and an unknown e-mail costs a password hash like a known one.
        """
        email = tokens.normalise_email(email)
        keys = login_keys(
            email,
            client_addr,
            self.config.login_attempts,
            self.config.login_attempts_per_address,
        )
        if self._login_throttled(keys):
            raise LoginRefused(LOGIN_FAILED)
        with read_only(self.engine) as conn:
            row = conn.execute(
                select(AccountRow).where(AccountRow.email == email, AccountRow.is_test.is_(False))
            ).first()
        if not tokens.verify_password(row.password_hash if row else None, password):
            self._login_failed(keys)
            raise LoginRefused(LOGIN_FAILED)
        assert row is not None
        if row.disabled:
            raise LoginRefused("this account is disabled")
        with self.engine.begin() as conn:
            # The pair starts again; the address's count stays, or one account of one's own
            # would reset the throttle of an address that tries many.
            conn.execute(delete(LoginThrottle).where(LoginThrottle.key == keys[0].key))
            if tokens.password_needs_rehash(row.password_hash):
                conn.execute(
                    update(AccountRow)
                    .where(AccountRow.id == row.id)
                    .values(password_hash=tokens.hash_password(password))
                )
        return account_of(row)

    def _login_throttled(self, keys: list[LoginKey]) -> bool:
        now = utcnow()
        with read_only(self.engine) as conn:
            waits = conn.scalars(
                select(LoginThrottle.wait_until).where(
                    LoginThrottle.key.in_([k.key for k in keys]),
                    LoginThrottle.wait_until.is_not(None),
                )
            ).all()
        return any(as_utc(wait) > now for wait in waits if wait is not None)

    def _login_failed(self, keys: list[LoginKey]) -> None:
        """Count a failure against each key and set its wait; forget keys idle for a day."""
        now = utcnow()
        longest = timedelta(minutes=self.config.login_lockout_minutes)
        with self.engine.begin() as conn:
            conn.execute(
                delete(LoginThrottle).where(LoginThrottle.last_failure_at < now - FORGET_AFTER)
            )
            for key in keys:
                insert_ignore(
                    conn, LoginThrottle, {"key": key.key, "failures": 0, "last_failure_at": now}
                )
                failures = conn.scalar(
                    update(LoginThrottle)
                    .where(LoginThrottle.key == key.key)
                    .values(failures=LoginThrottle.failures + 1, last_failure_at=now)
                    .returning(LoginThrottle.failures)
                )
                wait = login_wait(int(failures or 0), key.free_attempts, longest)
                if wait:
                    conn.execute(
                        update(LoginThrottle)
                        .where(LoginThrottle.key == key.key)
                        .values(wait_until=now + wait)
                    )

    def start_session(self, account_id: int) -> str:
        """A new web session; the id goes into a cookie, only its hash into the database."""
        session_id = tokens.new_session_id()
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                insert(WebSession).values(
                    id_hash=tokens.hash_token(session_id),
                    account_id=account_id,
                    created_at=now,
                    expires_at=now + timedelta(days=self.config.session_days),
                )
            )
        return session_id

    def session_account(self, session_id: str | None) -> Account | None:
        if not session_id or len(session_id) > 128:
            return None
        with read_only(self.engine) as conn:
            row = conn.execute(
                select(*ACCOUNT_COLUMNS, WebSession.expires_at)
                .join(WebSession, WebSession.account_id == AccountRow.id)
                .where(WebSession.id_hash == tokens.hash_token(session_id))
            ).first()
        if row is None or row.disabled or as_utc(row.expires_at) <= utcnow():
            return None
        return account_of(row)

    def end_session(self, session_id: str | None) -> None:
        if not session_id:
            return
        with self.engine.begin() as conn:
            conn.execute(
                delete(WebSession).where(WebSession.id_hash == tokens.hash_token(session_id))
            )

    def server_secret(self, name: str) -> str:
        """A random secret made once and shared by every process on this database."""
        with self.engine.begin() as conn:
            insert_ignore(conn, ServerSecret, {"name": name, "value": tokens.new_session_id()})
            value = conn.scalar(select(ServerSecret.value).where(ServerSecret.name == name))
        assert value is not None
        return str(value)
