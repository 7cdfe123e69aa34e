"""Token and password helpers (`songscan.accounts.tokens`)."""

from __future__ import annotations

import subprocess
import sys

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


PEAK_MEMORY_OF_16_LOG_INS = """
import resource, sys, threading
from songscan.accounts import tokens
verify = tokens.verify_password if sys.argv[1] == "bounded" else tokens._hasher.verify
stored = tokens.hash_password("a long password")  # the first hash's 64 MiB are in the peak
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
log_ins = [threading.Thread(target=verify, args=(stored, "a long password")) for _ in range(16)]
for log_in in log_ins:
    log_in.start()
for log_in in log_ins:
    log_in.join()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def peak_growth_kib(which: str) -> int:
    """How far 16 password checks at once raise a fresh process's peak memory (KiB)."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY_OF_16_LOG_INS, which],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


def test_password_hashes_at_once_are_bounded_in_memory() -> None:
    """The dashboard checks passwords in a threadpool: 16 log-ins at once must not take 16
    hashes' memory (64 MiB each) at once; CONCURRENT_HASHES of them run, the others wait."""
    hash_kib = 64 * 1024
    assert peak_growth_kib("bounded") < (tokens.CONCURRENT_HASHES + 1) * hash_kib
    assert peak_growth_kib("unbounded") > 8 * hash_kib  # what the bound is there to prevent
