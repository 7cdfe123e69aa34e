"""Token and password helpers (`songscan.accounts.tokens`)."""

from __future__ import annotations

from argon2 import PasswordHasher

from songscan.accounts import tokens


def test_the_unknown_email_hash_costs_what_a_real_one_does() -> None:
    # Written out (hashing it on import slowed every command): it must verify like a hash
    # made now, with the same parameters, or a wrong e-mail would answer faster.
    hasher = PasswordHasher()
    assert hasher.verify(tokens._DUMMY_HASH, "songscan-dummy-password")
    assert not hasher.check_needs_rehash(tokens._DUMMY_HASH)
    assert not tokens.verify_password(None, "songscan-dummy-password")
    assert tokens.verify_password(tokens.hash_password("a long password"), "a long password")
