"""API tokens, session ids and passwords: making them, hashing them, showing them masked."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TOKEN_BYTES = 20  # 160 random bits, 40 hex characters
TEST_TOKEN = "test"

_hasher = PasswordHasher()
# At most this many password hashes run at once in a process: each takes 64 MiB (m=65536) and
# the CPU of four threads (p=4), and the dashboard's log-ins run in a threadpool of 40 (the
# event loop is not theirs to block). The others wait their turn in their thread.
CONCURRENT_HASHES = 2
_hashing = threading.BoundedSemaphore(CONCURRENT_HASHES)
# Verified when the e-mail is unknown, so a wrong e-mail costs as long as a wrong password: a
# hash of "songscan-dummy-password" with the hasher's parameters, written out because hashing
# it on import cost every command 130-260 ms (tests check it still has those parameters).
_DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$wzWeWe0bGVkU05odQqeW+g"
    "$2gpDb1jBXYTR3soM7jgZ9AeaRzdvITwTppVmuSJaryY"
)
_COMMON_PASSWORDS = frozenset(
    {
        "password",
        "password1",
        "password123",
        "passw0rd",
        "1234567890",
        "12345678910",
        "qwertyuiop",
        "iloveyou12",
        "letmein123",
        "changeme123",
        "welcome123",
        "songscan123",
    }
)
MIN_PASSWORD_LENGTH = 10
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """A fast hash is right here: tokens carry 160 random bits, nothing to brute-force."""
    return hashlib.sha256(token.encode()).hexdigest()


def mask_token(token: str | None) -> str:
    """`ab***yz`: enough to tell tokens apart, never enough to use one."""
    if not token:
        return ""
    if len(token) < 8:
        return "***"
    return f"{token[:2]}***{token[-2:]}"


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def normalise_email(email: str) -> str:
    return email.strip().lower()


def email_problem(email: str) -> str | None:
    if not _EMAIL.match(email) or len(email) > 320:
        return "enter a valid e-mail address"
    return None


def password_problem(password: str, email: str | None = None) -> str | None:
    """Why the password is too weak, or None when it will do."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"the password needs at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > 1024:
        return "the password is too long (1024 characters at most)"
    if len(set(password)) < 5:
        return "the password needs at least 5 different characters"
    lowered = password.lower()
    if lowered in _COMMON_PASSWORDS:
        return "this password is too common"
    if email and lowered in (email.lower(), email.split("@")[0].lower()):
        return "the password must not be the e-mail address"
    return None


def hash_password(password: str) -> str:
    with _hashing:
        return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        with _hashing:
            verified = _hasher.verify(password_hash or _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return False
    return verified and password_hash is not None


def password_needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def sign(key: str, value: str) -> str:
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
