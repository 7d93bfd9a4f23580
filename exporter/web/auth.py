"""HTTP basic authentication against bcrypt hashes (`basic_auth_users` of the web config)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import bcrypt

# $2a$/$2b$/$2y$ (htpasswd -B writes 2y), two-digit cost, 22 salt + 31 hash characters.
BCRYPT_HASH = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")


# One key for the whole process: a reload (a new BasicAuth) keeps the cached results, which stay
# valid because each key covers the user's hash too; a restart forgets everything.
_SECRET = secrets.token_bytes(32)


@dataclass(frozen=True)
class Pending:
    """A credential the cache does not know yet: `BasicAuth.verify` must run bcrypt for it."""

    key: bytes  # the cache key: equal keys are the same check (single flight)
    password: bytes = field(repr=False)
    hashed: bytes | None = field(repr=False)  # None: unknown user (a dummy hash is checked)


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes, cheaply under a scrape storm.

    bcrypt costs ~50-70 ms at cost 10 by design, so it must never be a CPU sink:
    - a result cache keyed by HMAC(process secret, user, hash, password): the password itself is
      never stored, and a restart forgets everything;
    - successes and failures are cached apart, so a flood of wrong passwords can evict only
      failures, never the entry that lets Prometheus in;
    - a reload of the web config carries both caches over (`previous`): an entry whose user's
      hash changed can no longer match, since the hash is part of its key; so a rotated
      certificate does not make Prometheus wait behind a flood for a new bcrypt;
    - `lookup` answers from the cache on the serving thread; only a miss (`Pending`) needs
      `verify`, which exporter.web.gate runs on its one bcrypt thread, a bounded and fair queue.
    An unknown user is checked against a dummy hash of the same cost, so the answer time does
    not reveal which user names exist. bcrypt.checkpw compares in constant time.
    """

    OK_CACHE = 64
    FAIL_CACHE = 1024

    def __init__(self, users: Mapping[str, bytes], previous: BasicAuth | None = None) -> None:
        self.users = dict(users)
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        self._failed: OrderedDict[bytes, None] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()
        self._dummy: bytes | None = None
        self.bcrypt_calls = 0  # how many hashes were computed (tests, debugging)
        if previous is not None:
            with previous._cache_lock:
                self._ok.update(previous._ok)
                self._failed.update(previous._failed)
            if previous._dummy is not None and self._cost() == previous._cost():
                self._dummy = previous._dummy

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    def lookup(self, authorization: str | None) -> bool | Pending:
        """True/False when the answer is known without bcrypt, else what `verify` needs."""
        if not self.users:
            return True
        credentials = parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self.users.get(user)
        key = _cache_key(user.encode(), hashed or b"", password)
        cached = self._cached(key)
        if cached is not None:
            return cached
        return Pending(key, password, hashed)

    def verify(self, pending: Pending) -> bool:
        """Run bcrypt for a cache miss and remember the answer (seconds of CPU: not on the
        serving thread)."""
        cached = self._cached(pending.key)  # a reload or another thread may have it already
        if cached is not None:
            return cached
        ok = self._bcrypt(pending.password, pending.hashed) and pending.hashed is not None
        with self._cache_lock:
            cache, limit = (self._ok, self.OK_CACHE) if ok else (self._failed, self.FAIL_CACHE)
            cache[pending.key] = None
            if len(cache) > limit:
                cache.popitem(last=False)
        return ok

    def check(self, authorization: str | None) -> bool:
        """lookup + verify in the caller's thread, one bcrypt at a time: 100 simultaneous
        checks of one credential cost one bcrypt (in-process users; the server uses the gate)."""
        found = self.lookup(authorization)
        if not isinstance(found, Pending):
            return found
        with self._bcrypt_lock:
            return self.verify(found)

    def _cost(self) -> int:
        return max((int(h[4:6]) for h in self.users.values()), default=0)

    def _cached(self, key: bytes) -> bool | None:
        with self._cache_lock:
            if key in self._ok:
                self._ok.move_to_end(key)
                return True
            if key in self._failed:
                return False
        return None

    def _bcrypt(self, password: bytes, hashed: bytes | None) -> bool:
        if hashed is None:
            if self._dummy is None:
                self._dummy = bcrypt.hashpw(secrets.token_bytes(16),
                                            bcrypt.gensalt(rounds=self._cost()))
            hashed = self._dummy
        if len(password) > 72:
            # bcrypt reads 72 bytes: bcrypt < 5 would silently ignore the rest (so would accept
            # any suffix), bcrypt >= 5 raises. Go's bcrypt refuses too.
            return False
        self.bcrypt_calls += 1
        try:
            return bool(bcrypt.checkpw(password, hashed))
        except ValueError:  # a hash bcrypt cannot read (load() checked the format)
            return False


def _cache_key(*parts: bytes) -> bytes:
    mac = hmac.new(_SECRET, digestmod=hashlib.sha256)
    for part in parts:  # length-prefixed: no two (user, password) pairs share a key
        mac.update(len(part).to_bytes(4, "big"))
        mac.update(part)
    return mac.digest()


def parse_basic(authorization: str | None) -> tuple[str, bytes] | None:
    """`Basic base64(user:password)` -> (user, password bytes), as Go's Request.BasicAuth."""
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


