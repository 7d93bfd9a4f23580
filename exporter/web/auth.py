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

import bcrypt

# $2a$/$2b$/$2y$ (htpasswd -B writes 2y), two-digit cost, 22 salt + 31 hash characters.
BCRYPT_HASH = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes, cheaply under a scrape storm.

    bcrypt costs ~70 ms at cost 10 by design. Three measures keep that from becoming a CPU sink:
    - a result cache keyed by HMAC(process secret, user, hash, password): the password itself is
      never stored, and a restart forgets everything;
    - successes and failures are cached apart, so a flood of wrong passwords can evict only
      failures, never the entry that lets Prometheus in;
    - one bcrypt at a time, and a request re-checks the cache once it gets its turn, so 200
      simultaneous scrapes with the right password cost one bcrypt, and a flood of guesses costs
      at most one CPU core.
    An unknown user is checked against a dummy hash of the same cost, so the answer time does
    not reveal which user names exist. bcrypt.checkpw compares in constant time.
    """

    OK_CACHE = 64
    FAIL_CACHE = 1024

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self.users = dict(users)
        self._secret = secrets.token_bytes(32)
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        self._failed: OrderedDict[bytes, None] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._bcrypt_lock = threading.Lock()
        self._dummy: bytes | None = None
        self.bcrypt_calls = 0  # how many hashes were computed (tests, debugging)

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    def check(self, authorization: str | None) -> bool:
        if not self.users:
            return True
        credentials = parse_basic(authorization)
        if credentials is None:
            return False
        user, password = credentials
        hashed = self.users.get(user)
        key = self._cache_key(user.encode(), hashed or b"", password)
        cached = self._cached(key)
        if cached is not None:
            return cached
        with self._bcrypt_lock:
            cached = self._cached(key)  # another thread may have just computed it
            if cached is not None:
                return cached
            ok = self._bcrypt(password, hashed) and hashed is not None
        with self._cache_lock:
            cache, limit = (self._ok, self.OK_CACHE) if ok else (self._failed, self.FAIL_CACHE)
            cache[key] = None
            if len(cache) > limit:
                cache.popitem(last=False)
        return ok

    def _cache_key(self, *parts: bytes) -> bytes:
        mac = hmac.new(self._secret, digestmod=hashlib.sha256)
        for part in parts:  # length-prefixed: no two (user, password) pairs share a key
            mac.update(len(part).to_bytes(4, "big"))
            mac.update(part)
        return mac.digest()

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
                cost = max(int(h[4:6]) for h in self.users.values())
                self._dummy = bcrypt.hashpw(secrets.token_bytes(16),
                                            bcrypt.gensalt(rounds=cost))
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


