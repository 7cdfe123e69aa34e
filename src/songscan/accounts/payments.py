"""Payments: Stripe Checkout for request packs and plan subscriptions, and its webhook.

Only checkouts this server created are credited, each once: the webhook's signature is
verified with the `[stripe] webhook_secret`, its event id is recorded (a retried delivery
changes nothing), and the checkout row moves from `open` to `paid` in the same transaction
that writes the credit to the ledger. Bank transfers are credited by an admin command.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import stripe

from songscan.accounts.service import Account, Accounts
from songscan.errors import ConfigError, InvalidParameters, SongscanError


class PaymentsUnavailable(SongscanError):
    code = 50
    default_message = "payments by card are not set up on this server"


class WebhookRejected(SongscanError):
    """The webhook's signature is missing, forged or too old, or its body is not an event."""

    code = 50
    default_message = "the webhook was rejected"


@dataclass(frozen=True)
class Pack:
    name: str
    requests: int
    price: float  # in `currency`, e.g. USD

    @property
    def cents(self) -> int:
        return round(self.price * 100)


DEFAULT_PACKS = {
    "10k": Pack("10k", 10_000, 20.0),
    "100k": Pack("100k", 100_000, 150.0),
}


@dataclass(frozen=True)
class StripeConfig:
    """The `[stripe]` section of songscan.toml."""

    secret_key: str | None = None
    webhook_secret: str | None = None
    api_base: str = "https://api.stripe.com"
    currency: str = "usd"
    tolerance_s: int = 300  # how old a signed webhook may be (replays beyond it are refused)
    packs: dict[str, Pack] = field(default_factory=lambda: dict(DEFAULT_PACKS))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> StripeConfig:
        section = dict(config.get("stripe", {}))
        packs_section = section.pop("packs", None)
        known = {"secret_key", "webhook_secret", "api_base", "currency", "tolerance_s"}
        for key, value in section.items():
            if key not in known:
                raise ConfigError(f"[stripe]: unknown key {key!r} (known: {', '.join(known)})")
            expected = int if key == "tolerance_s" else str
            if not isinstance(value, expected) or isinstance(value, bool):
                raise ConfigError(f"[stripe].{key}: expected {expected.__name__}, got {value!r}")
        packs = dict(DEFAULT_PACKS)
        if packs_section is not None:
            packs = {}
            for name, pack in packs_section.items():
                requests, price = pack.get("requests"), pack.get("price")
                if not isinstance(requests, int) or requests <= 0 or isinstance(requests, bool):
                    raise ConfigError(f"[stripe.packs.{name}].requests: a positive integer")
                if not isinstance(price, int | float) or price <= 0 or isinstance(price, bool):
                    raise ConfigError(f"[stripe.packs.{name}].price: a positive number")
                if set(pack) - {"requests", "price"}:
                    raise ConfigError(f"[stripe.packs.{name}]: only requests and price")
                packs[name] = Pack(name, requests, float(price))
        return cls(packs=packs, **section)


class Payments:
    def __init__(self, accounts: Accounts, config: Mapping[str, Any]) -> None:
        self.accounts = accounts
        self.config = StripeConfig.from_config(config)

    @property
    def enabled(self) -> bool:
        return bool(self.config.secret_key)

    def purchasable_plans(self) -> list[str]:
        return [name for name, plan in self.accounts.plans.items() if plan.monthly_price > 0]

    def _client(self) -> stripe.StripeClient:
        assert self.config.secret_key
        return stripe.StripeClient(
            self.config.secret_key,
            base_addresses={"api": self.config.api_base},
            max_network_retries=1,
        )

    def start_checkout(
        self, account: Account, kind: str, item: str, success_url: str, cancel_url: str
    ) -> str:
        """Create a Stripe Checkout Session for a pack or a plan; returns its payment page URL."""
        if not self.enabled:
            raise PaymentsUnavailable()
        cur = self.config.currency
        params: dict[str, Any] = {
            "client_reference_id": str(account.id),
            "metadata": {"account_id": str(account.id), "kind": kind, "item": item},
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        if account.email:
            params["customer_email"] = account.email
        if kind == "pack":
            pack = self.config.packs.get(item)
            if pack is None:
                raise InvalidParameters(f"no pack named {item!r}")
            requests, cents = pack.requests, pack.cents
            params["mode"] = "payment"
            params["line_items"] = [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": cur,
                        "unit_amount": cents,
                        "product_data": {"name": f"songscan: {requests:,} requests"},
                    },
                }
            ]
        elif kind == "plan":
            if item not in self.purchasable_plans():
                raise InvalidParameters(f"no plan named {item!r} can be bought")
            plan = self.accounts.plans[item]
            requests, cents = 0, round(plan.monthly_price * 100)
            params["mode"] = "subscription"
            if plan.stripe_price:
                params["line_items"] = [{"quantity": 1, "price": plan.stripe_price}]
            else:
                params["line_items"] = [
                    {
                        "quantity": 1,
                        "price_data": {
                            "currency": cur,
                            "unit_amount": cents,
                            "recurring": {"interval": "month"},
                            "product_data": {"name": f"songscan {plan.title} plan"},
                        },
                    }
                ]
        else:
            raise InvalidParameters("kind must be pack or plan")
        session = self._client().v1.checkout.sessions.create(params=params)  # type: ignore[arg-type]
        if not session.id or not session.url:
            raise PaymentsUnavailable("Stripe did not return a checkout page")
        self.accounts.checkouts.record(session.id, account.id, kind, item, requests, cents)
        return str(session.url)

    def handle_webhook(self, payload: bytes, signature: str | None) -> str:
        """Verify and apply one Stripe event; returns what happened (for the log)."""
        if not self.config.webhook_secret:
            raise WebhookRejected("webhooks are not set up on this server")
        try:
            text = payload.decode("utf-8")
            stripe.WebhookSignature.verify_header(
                text, signature or "", self.config.webhook_secret, self.config.tolerance_s
            )
            event = json.loads(text)
            event_id, event_type = str(event["id"]), str(event["type"])
            obj = event["data"]["object"]
        except stripe.SignatureVerificationError as exc:
            raise WebhookRejected(f"bad signature: {exc.user_message or exc}") from exc
        except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            raise WebhookRejected("the body is not a Stripe event") from exc
        with self.accounts.checkouts.transaction() as conn:
            if self.accounts.checkouts.event_seen(conn, event_id, event_type):
                return "already handled"
            if event_type in (
                "checkout.session.completed",
                "checkout.session.async_payment_succeeded",
            ):
                if obj.get("payment_status") not in ("paid", "no_payment_required"):
                    return "awaiting payment"
                return self.accounts.checkouts.fulfil(conn, str(obj["id"]), obj.get("subscription"))
            if event_type == "customer.subscription.deleted":
                return self.accounts.checkouts.end_subscription(conn, str(obj["id"]))
        return "ignored"
