"""Basic auth in-process: the bcrypt cache (one bcrypt per storm of identical credentials,
failures cannot evict the good entry), no timing oracle for user names, the Authorization
header parser, bcrypt's 72-byte limit. The same users over real HTTPS: tests/process/test_tls.py.
"""

from __future__ import annotations

import base64
import concurrent.futures
import threading
import time

import bcrypt
import pytest

from exporter.web.auth import BasicAuth, parse_basic
from tests.support.hardening import basic

PASSWORD = "scrape-pässword-1"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()


def test_bcrypt_runs_once_for_a_storm_of_identical_credentials() -> None:
    auth = BasicAuth({"prometheus": HASH.encode()})
    barrier = threading.Barrier(100)

    def check(_: int) -> bool:
        barrier.wait()
        return auth.check(basic("prometheus", PASSWORD))

    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        assert all(pool.map(check, range(100)))
    assert auth.bcrypt_calls == 1


def test_wrong_passwords_cannot_evict_the_good_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    cheap = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4))
    monkeypatch.setattr(BasicAuth, "FAIL_CACHE", 8)
    auth = BasicAuth({"prometheus": cheap})
    assert auth.check(basic("prometheus", PASSWORD))
    for i in range(40):  # a guessing flood, far beyond both caches
        assert not auth.check(basic("prometheus", f"guess-{i}"))
    calls = auth.bcrypt_calls
    assert auth.check(basic("prometheus", PASSWORD))
    assert auth.bcrypt_calls == calls, "the good entry was evicted by failures"
    assert not auth.check(basic("prometheus", "guess-39"))  # failures are cached too
    assert auth.bcrypt_calls == calls


def test_unknown_users_cost_a_bcrypt_like_known_ones() -> None:
    """No timing oracle for user names: an unknown user is checked against a dummy hash of the
    same cost, so it costs the same bcrypt as a wrong password for a real user."""
    auth = BasicAuth({"prometheus": HASH.encode()})
    started = time.monotonic()
    assert not auth.check(basic("prometheus", "wrong"))
    known = time.monotonic() - started
    auth.check(basic("mallory", "warm-up"))  # the dummy hash is made once, on first use
    started = time.monotonic()
    assert not auth.check(basic("mallory", "wrong"))
    unknown = time.monotonic() - started
    assert auth.bcrypt_calls == 3
    assert unknown > known / 3, (known, unknown)


def test_parse_basic() -> None:
    assert parse_basic(basic("a", "b:c")) == ("a", b"b:c")
    assert parse_basic("basic " + base64.b64encode(b"a:").decode()) == ("a", b"")
    for bad in (None, "", "Basic", "Basic !!", "Digest abc",
                "Basic " + base64.b64encode(b"no-colon").decode(),
                "Basic " + base64.b64encode(b"\xff:x").decode()):
        assert parse_basic(bad) is None, bad


def test_passwords_longer_than_72_bytes_never_match() -> None:
    """bcrypt reads 72 bytes; an older bcrypt would accept any suffix of a 72-byte password."""
    long = "p" * 72
    auth = BasicAuth({"u": bcrypt.hashpw(long.encode(), bcrypt.gensalt(rounds=4))})
    assert auth.check(basic("u", long))
    assert not auth.check(basic("u", long + "-anything"))
