"""Plans from the config file, and the per-second rate limit."""

from __future__ import annotations

import pytest

from songscan.accounts.plans import DEFAULT_PLANS, ConfigError, load_plans
from songscan.accounts.ratelimit import RateLimited, TokenBuckets
from songscan.accounts.service import AccountsConfig


def test_default_plans() -> None:
    plans = load_plans({})
    assert list(plans) == ["trial", "startup", "enterprise"]
    enterprise = plans["enterprise"].entitlements
    assert enterprise.enterprise_metadata and enterprise.custom_catalog
    assert enterprise.enterprise_url_input


def test_config_overrides_and_adds_plans() -> None:
    plans = load_plans(
        {
            "plans": {
                "startup": {"monthly_requests": 20_000, "max_file_mb": 5, "custom_catalog": False},
                "radio": {"monthly_requests": 50_000, "rate_limit_per_s": 3, "title": "Radio"},
            }
        }
    )
    assert plans["startup"].monthly_requests == 20_000
    assert plans["startup"].entitlements.max_file_bytes == 5 * 1024 * 1024
    assert not plans["startup"].entitlements.custom_catalog
    assert plans["startup"].price_per_1000_beyond == DEFAULT_PLANS["startup"].price_per_1000_beyond
    assert plans["radio"].entitlements.rate_limit_per_s == 3.0
    assert plans["radio"].title == "Radio"


@pytest.mark.parametrize(
    "config",
    [
        {"plans": {"trial": {"monthly_requets": 5}}},
        {"plans": {"trial": {"monthly_requests": "5"}}},
        {"plans": {"trial": {"custom_catalog": 1}}},
        {"plans": {"trial": {"monthly_requests": -1}}},
        {"plans": {"trial": 3}},
    ],
)
def test_bad_plan_config_is_a_clear_error(config: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"\[plans"):
        load_plans(config)


def test_bad_accounts_config_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="free_request"):
        AccountsConfig.from_config({"accounts": {"free_request": 3}})
    with pytest.raises(ConfigError, match="expected int"):
        AccountsConfig.from_config({"accounts": {"free_requests": "300"}})


def test_token_bucket_refuses_beyond_the_rate_and_says_when_to_retry() -> None:
    now = [1000.0]
    buckets = TokenBuckets(clock=lambda: now[0])
    buckets.take("a", 2.0)
    buckets.take("a", 2.0)
    with pytest.raises(RateLimited) as limited:
        buckets.take("a", 2.0)
    assert limited.value.retry_after_s == pytest.approx(0.5)
    assert limited.value.retry_after_header == "1"
    buckets.take("b", 2.0)  # another key has its own bucket
    now[0] += 0.5
    buckets.take("a", 2.0)
    buckets.take("unlimited", 0)
