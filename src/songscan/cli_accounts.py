"""`songscan accounts …`: the admin commands for accounts, tokens, plans and credits.

ACCOUNT is an account id or an e-mail address. Commands that make a token print it as their
last line (and only there): it is never shown again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from songscan import settings
from songscan.cli_errors import guarded
from songscan.errors import InvalidParameters

if TYPE_CHECKING:  # SQLAlchemy and the rest load when a command opens the accounts
    from songscan.accounts.service import Accounts

accounts_app = typer.Typer(
    help="Manage accounts: create, list, show, credit, set-plan, disable, rotate-token.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

AccountArg = Annotated[str, typer.Argument(help="account id or e-mail address")]


def _open(ctx: typer.Context) -> Accounts:
    """The accounts of the settings' database (`songscan.settings`: `--data`, songscan.toml
    and the environment)."""
    from songscan.accounts.service import Accounts

    loaded = settings.load((ctx.obj or {}).get("data_dir"))
    return Accounts(loaded.database_url, loaded.config, data_dir=loaded.data_dir)


@accounts_app.command()
@guarded
def create(
    ctx: typer.Context,
    email: Annotated[str | None, typer.Option(help="e-mail address (for the dashboard)")] = None,
    plan: Annotated[str | None, typer.Option(help="plan name (default: the default plan)")] = None,
    password: Annotated[
        str | None,
        typer.Option(help="password for the dashboard log-in (default: none, no log-in)"),
    ] = None,
) -> None:
    """Create an account; prints its new API token as the last line."""
    accounts = _open(ctx)
    try:
        made = accounts.identity.create_account(email, password, plan)
    finally:
        accounts.close()
    typer.echo(
        f"created account {made.account.id} ({made.account.email or 'no e-mail'}), "
        f"plan {made.account.plan}"
    )
    typer.echo(made.token)


@accounts_app.command("list")
@guarded
def list_accounts(ctx: typer.Context) -> None:
    """Every account: id, e-mail, plan, requests left, state, masked token."""
    accounts = _open(ctx)
    try:
        rows = accounts.identity.list_accounts()
    finally:
        accounts.close()
    typer.echo(f"{'id':>5}  {'email':<32} {'plan':<12} {'left':>10}  {'state':<8} token")
    for account, balance in rows:
        state = "disabled" if account.disabled else ("test" if account.is_test else "active")
        email = account.email or ("(public test token)" if account.is_test else "-")
        typer.echo(
            f"{account.id:>5}  {email:<32} {account.plan:<12} {balance:>10}  {state:<8} "
            f"{account.token_hint}"
        )


@accounts_app.command()
@guarded
def show(ctx: typer.Context, account: AccountArg) -> None:
    """One account: plan, requests left, entitlements, recent credits and requests."""
    accounts = _open(ctx)
    try:
        found = accounts.identity.find(account)
        status = accounts.ledger.status(found.id, recent=10)
    finally:
        accounts.close()
    ent = status.plan.entitlements
    typer.echo(f"account    {found.id}")
    typer.echo(f"email      {found.email or '-'}")
    typer.echo(f"token      {found.token_hint}")
    typer.echo(f"state      {'disabled' if found.disabled else 'active'}")
    typer.echo(f"created    {found.created_at:%Y-%m-%d %H:%M} UTC")
    typer.echo(f"plan       {status.plan.name} ({status.plan.monthly_requests} a month)")
    typer.echo(f"left       {status.remaining} (overage allowed: {status.overage_left})")
    typer.echo(
        f"entitled   metadata={ent.enterprise_metadata} catalog={ent.custom_catalog} "
        f"url={ent.enterprise_url_input} max_file={ent.max_file_bytes // (1024 * 1024)} MB "
        f"rate={ent.rate_limit_per_s}/s"
    )
    typer.echo("credits:")
    for line in status.credits:
        typer.echo(
            f"  {line.time:%Y-%m-%d %H:%M}  {line.kind:<9} {line.delta:>+10}  "
            f"{line.reference or ''}  {line.note or ''}".rstrip()
        )
    typer.echo("recent requests:")
    for record in status.recent:
        typer.echo(
            f"  {record.time:%Y-%m-%d %H:%M:%S}  {record.method:<11} chunks={record.chunks} "
            f"cost={record.cost} {record.status}"
        )


@accounts_app.command()
@guarded
def credit(
    ctx: typer.Context,
    account: AccountArg,
    requests: Annotated[int, typer.Argument(help="how many requests to add")],
    reference: Annotated[
        str | None,
        typer.Option(help="payment reference (a bank transfer's); credited once per account"),
    ] = None,
    kind: Annotated[str, typer.Option(help="transfer (bank transfer) or adjust")] = "",
    note: Annotated[str | None, typer.Option(help="free text kept in the ledger")] = None,
) -> None:
    """Add requests to an account, e.g. for a bank transfer: --reference is recorded."""
    chosen = kind or ("transfer" if reference else "adjust")
    if chosen not in ("transfer", "adjust"):
        raise InvalidParameters("--kind must be transfer or adjust")
    if chosen == "transfer" and not reference:
        raise InvalidParameters("a bank transfer needs --reference")
    accounts = _open(ctx)
    try:
        found = accounts.identity.find(account)
        done = accounts.ledger.credit(
            found.id, requests, kind=chosen, reference=reference, note=note
        )
        left = accounts.remaining(found)
    finally:
        accounts.close()
    if not done:
        raise InvalidParameters(f"reference {reference!r} was already credited to this account")
    typer.echo(f"credited {requests} requests to account {found.id}; {left} left")


@accounts_app.command("set-plan")
@guarded
def set_plan(
    ctx: typer.Context,
    account: AccountArg,
    plan: Annotated[str, typer.Argument(help="plan name")],
) -> None:
    """Move an account to another plan (its monthly requests are granted at once)."""
    accounts = _open(ctx)
    try:
        found = accounts.ledger.set_plan(accounts.identity.find(account).id, plan)
        left = accounts.remaining(found)
    finally:
        accounts.close()
    typer.echo(f"account {found.id} is on plan {found.plan}; {left} left")


@accounts_app.command()
@guarded
def disable(
    ctx: typer.Context,
    account: AccountArg,
    enable: Annotated[bool, typer.Option("--enable", help="enable it again instead")] = False,
) -> None:
    """Disable an account: its token and log-in stop working at once (--enable undoes it)."""
    accounts = _open(ctx)
    try:
        found = accounts.identity.set_disabled(accounts.identity.find(account).id, not enable)
    finally:
        accounts.close()
    typer.echo(f"account {found.id} is {'disabled' if found.disabled else 'enabled'}")


@accounts_app.command("rotate-token")
@guarded
def rotate_token(ctx: typer.Context, account: AccountArg) -> None:
    """Give an account a new token (the old one stops working); prints it as the last line."""
    accounts = _open(ctx)
    try:
        made = accounts.identity.rotate_token(accounts.identity.find(account).id)
    finally:
        accounts.close()
    typer.echo(f"new token for account {made.account.id}; the old one no longer works")
    typer.echo(made.token)
