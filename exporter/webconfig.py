"""The exporter-toolkit web config file (`--web.config.file`): TLS, client certificates, basic auth.

node_exporter, postgres_exporter and Prometheus itself read this YAML format, so operators can
reuse the file they already have. What it guards: the metrics name CJ batches and say which ones
are broken, and this process holds database credentials, so the endpoint may need TLS (nobody
on the path reads or alters a scrape) and authentication (nobody but Prometheus scrapes).

Semantics follow exporter-toolkit (web/tls_config.go, web/handler.go):
- Relative file names are relative to the web config file's folder.
- Unknown keys are errors (the toolkit unmarshals strictly): a typo must not silently turn
  authentication off.
- TLS is on when any of cert/cert_file/key/key_file/client_ca/client_ca_file/client_auth_type
  is set, and then it needs both a certificate and a key.
- `basic_auth_users` maps user -> bcrypt hash; when it is empty, no authentication is asked.
- The file and the files it names are re-read when they change (checked at most once a second),
  as the toolkit re-reads them per request: a rotated certificate is served without a restart.
  A broken edit keeps the last good state and logs an error, so a bad rotation cannot open the
  endpoint or take it down.

Deliberate differences, each refused at load with a one-line error instead of being half-honoured:
- client_auth_type RequestClientCert / RequireAnyClientCert accept certificates nobody verified;
  Python's ssl module cannot do that (it verifies whatever it accepts), and both are insecure.
- curve_preferences: Python's ssl module cannot set a curve list; OpenSSL's defaults are used.
- rate_limit: not implemented.
HTTP/2 (`http_server_config.http2`) is accepted and ignored: the server speaks HTTP/1.1, which
Prometheus uses anyway when it scrapes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
import ssl
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from exporter.config import ConfigError

log = logging.getLogger(__name__)

TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
TLS_KEYS = ("cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type",
            "client_ca_file", "client_allowed_sans", "min_version", "max_version",
            "cipher_suites", "prefer_server_cipher_suites", "curve_preferences")
HTTP_KEYS = ("http2", "headers")

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# client_auth_type -> verify_mode. The toolkit's other two spellings are refused (module doc).
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")

# Go's tls.CipherSuites() names (the only ones the toolkit accepts) -> OpenSSL names. The TLS 1.3
# suites map to None: Go ignores them in this setting and so does OpenSSL's cipher list.
CIPHER_SUITES: Mapping[str, str | None] = {
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}

# The toolkit lets only these response headers be configured; some have a closed set of values.
HEADERS: Mapping[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}

# $2a$/$2b$/$2y$ (htpasswd -B writes 2y), two-digit cost, 22 salt + 31 hash characters.
BCRYPT_HASH = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
RELOAD_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class TLSSettings:
    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str | None = None
    key: str | None = field(default=None, repr=False)  # a private key: never in a repr or log
    client_ca_file: Path | None = None
    client_ca: str | None = None
    client_auth_type: str = "NoClientCert"
    client_allowed_sans: tuple[str, ...] | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True


@dataclass(frozen=True)
class WebConfig:
    path: Path
    tls: TLSSettings | None  # None: plain HTTP
    headers: Mapping[str, str]
    users: Mapping[str, bytes] = field(repr=False)  # user -> bcrypt hash

    def files(self) -> tuple[Path, ...]:
        """The files whose change triggers a reload: this file and those it names."""
        named = () if self.tls is None else (self.tls.cert_file, self.tls.key_file,
                                              self.tls.client_ca_file)
        return (self.path, *(p for p in named if p is not None))


def load(path: str | Path) -> WebConfig:
    """Read and validate a web config file, or raise ConfigError (one line, no secrets)."""
    path = Path(path)
    where = f"web config file {path}"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{where} is not valid YAML{line}") from None
    if data is None:
        data = {}
    _expect_mapping(data, where)
    _no_unknown(data, TOP_KEYS, where, "")
    if data.get("rate_limit") is not None:
        raise ConfigError(f"{where}: rate_limit is not supported by cj-health-exporter")
    tls_raw = data.get("tls_server_config") or {}
    http_raw = data.get("http_server_config") or {}
    users_raw = data.get("basic_auth_users") or {}
    _expect_mapping(tls_raw, f"{where}: tls_server_config")
    _expect_mapping(http_raw, f"{where}: http_server_config")
    _expect_mapping(users_raw, f"{where}: basic_auth_users")
    _no_unknown(tls_raw, TLS_KEYS, where, "tls_server_config.")
    _no_unknown(http_raw, HTTP_KEYS, where, "http_server_config.")
    tls = _tls(tls_raw, path.parent, where)
    if tls is not None:
        build_ssl_context(tls, where)  # certificate, key and CA must load now, not at 1st scrape
    if "http2" in http_raw and not isinstance(http_raw["http2"], bool):
        raise ConfigError(f"{where}: http_server_config.http2 must be true or false")
    return WebConfig(path=path, tls=tls, headers=_headers(http_raw.get("headers"), where),
                     users=_users(users_raw, where))


def _expect_mapping(value: Any, what: str) -> None:
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a mapping")


def _no_unknown(raw: Mapping[Any, Any], known: tuple[str, ...], where: str, prefix: str) -> None:
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}: unknown setting {prefix}{key}")


def _text(raw: Mapping[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: tls_server_config.{key} must be a string")
    return value


def _tls(raw: Mapping[str, Any], base: Path, where: str) -> TLSSettings | None:
    def path(key: str) -> Path | None:
        value = _text(raw, key, where)
        return None if value is None else base / value  # an absolute value wins over base

    cert_file, key_file, ca_file = path("cert_file"), path("key_file"), path("client_ca_file")
    cert, key, ca = _text(raw, "cert", where), _text(raw, "key", where), \
        _text(raw, "client_ca", where)
    auth = _text(raw, "client_auth_type", where)
    if not any((cert_file, key_file, ca_file, cert, key, ca, auth)):
        return None  # the toolkit serves plain HTTP then
    for inline, file, name in ((cert, cert_file, "cert"), (key, key_file, "key"),
                               (ca, ca_file, "client_ca")):
        if inline and file:
            raise ConfigError(f"{where}: give tls_server_config.{name} or {name}_file, not both")
    if not (cert or cert_file):
        raise ConfigError(f"{where}: tls_server_config is missing one of cert or cert_file")
    if not (key or key_file):
        raise ConfigError(f"{where}: tls_server_config is missing one of key or key_file")
    auth = auth or "NoClientCert"
    if auth in UNVERIFIED_CLIENT_AUTH:
        raise ConfigError(
            f"{where}: client_auth_type {auth} accepts client certificates that nobody "
            "verified; use RequireAndVerifyClientCert (or VerifyClientCertIfGiven)")
    if auth not in CLIENT_AUTH:
        raise ConfigError(f"{where}: invalid client_auth_type {auth!r} "
                          f"(one of {', '.join(CLIENT_AUTH)})")
    has_ca = bool(ca or ca_file)
    if has_ca and auth == "NoClientCert":
        raise ConfigError(f"{where}: client CAs are configured without a client_auth_type "
                          "(set RequireAndVerifyClientCert)")
    if not has_ca and auth != "NoClientCert":
        raise ConfigError(f"{where}: client_auth_type {auth} needs client_ca_file (or client_ca)")
    sans = raw.get("client_allowed_sans")
    if sans is not None:
        if not isinstance(sans, list) or not all(isinstance(s, str) and s for s in sans):
            raise ConfigError(f"{where}: client_allowed_sans must be a list of strings")
        if auth != "RequireAndVerifyClientCert":
            raise ConfigError(f"{where}: client_allowed_sans requires client_auth_type "
                              "RequireAndVerifyClientCert")
    versions = []
    for key_name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        value = raw.get(key_name) or default
        if value not in TLS_VERSIONS:
            raise ConfigError(f"{where}: unknown TLS version {value!r} for {key_name} "
                              f"(one of {', '.join(TLS_VERSIONS)})")
        versions.append(value)
    if TLS_VERSIONS[versions[0]] > TLS_VERSIONS[versions[1]]:
        raise ConfigError(f"{where}: min_version {versions[0]} is above max_version "
                          f"{versions[1]}")
    if raw.get("curve_preferences"):
        raise ConfigError(f"{where}: curve_preferences is not supported by cj-health-exporter "
                          "(Python's ssl module cannot set it); remove it to use OpenSSL's "
                          "defaults")
    ciphers = raw.get("cipher_suites") or []
    if not isinstance(ciphers, list):
        raise ConfigError(f"{where}: cipher_suites must be a list")
    for name in ciphers:
        if name not in CIPHER_SUITES:
            raise ConfigError(f"{where}: unknown cipher: {name}")
    prefer = raw.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise ConfigError(f"{where}: prefer_server_cipher_suites must be true or false")
    return TLSSettings(
        cert_file=cert_file, key_file=key_file, cert=cert, key=key, client_ca_file=ca_file,
        client_ca=ca, client_auth_type=auth,
        client_allowed_sans=None if sans is None else tuple(sans),
        min_version=versions[0], max_version=versions[1], cipher_suites=tuple(ciphers),
        prefer_server_cipher_suites=prefer)


def _headers(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    _expect_mapping(raw, f"{where}: http_server_config.headers")
    out = {}
    for name, value in raw.items():
        if name not in HEADERS:
            raise ConfigError(f"{where}: HTTP header {name!r} can not be configured "
                              f"(one of {', '.join(HEADERS)})")
        if value is None or value == "":
            continue  # blank means unset, as in the toolkit
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise ConfigError(f"{where}: header {name} must be a one-line string")
        allowed = HEADERS[name]
        if allowed and value not in allowed:
            raise ConfigError(f"{where}: invalid value for {name}, expected one of "
                              f"{', '.join(allowed)}")
        out[name] = value
    return out


def _users(raw: Mapping[Any, Any], where: str) -> dict[str, bytes]:
    users = {}
    for user, hashed in raw.items():
        # YAML turns an unquoted yes/no/123 into a bool/int: make the operator quote it.
        if not isinstance(user, str) or not user or ":" in user:
            raise ConfigError(f"{where}: basic_auth_users: user name {user!r} must be a "
                              "non-empty string without ':' (quote it in YAML)")
        # Never echo the value: an operator may have pasted a plain-text password here.
        match = BCRYPT_HASH.match(hashed) if isinstance(hashed, str) else None
        if match is None:
            raise ConfigError(f"{where}: basic_auth_users.{user} is not a bcrypt hash "
                              "(value not shown; make one with `htpasswd -nBC 10 \"\"`)")
        if not 4 <= int(match.group(1)) <= 31:
            raise ConfigError(f"{where}: basic_auth_users.{user}: bcrypt cost out of range")
        users[user] = hashed.encode("ascii")
    return users


def build_ssl_context(tls: TLSSettings, where: str = "web config") -> ssl.SSLContext:
    """A server-side SSLContext for these settings; ConfigError if a file does not load."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSIONS[tls.min_version]
    ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    names = [n for n in (CIPHER_SUITES[c] for c in tls.cipher_suites) if n]
    for name, path in (("cert_file", tls.cert_file), ("key_file", tls.key_file),
                       ("client_ca_file", tls.client_ca_file)):
        if path is not None:
            try:
                path.open("rb").close()
            except OSError as exc:
                raise ConfigError(f"{where}: cannot read {name} {path}: {exc.strerror}") \
                    from None
    try:
        if names:
            ctx.set_ciphers(":".join(names))
        _load_cert_chain(ctx, tls)
        if tls.client_ca_file is not None:
            ctx.load_verify_locations(cafile=str(tls.client_ca_file))
        elif tls.client_ca is not None:
            ctx.load_verify_locations(cadata=tls.client_ca)
    except (ssl.SSLError, OSError, ValueError) as exc:
        # The reason (e.g. KEY_VALUES_MISMATCH) never contains key material.
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError(f"{where}: cannot load the TLS certificate, key or client CA "
                          f"({reason})") from None
    ctx.verify_mode = CLIENT_AUTH[tls.client_auth_type]
    return ctx


def _load_cert_chain(ctx: ssl.SSLContext, tls: TLSSettings) -> None:
    if tls.cert_file is not None and tls.key_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        return
    # Inline PEM: OpenSSL loads certificates and keys from files only. An anonymous memory file
    # (memfd) keeps the private key off the disk; elsewhere a 0600 temp file lives for the call.
    with _PemFile(tls.cert, tls.cert_file) as cert_path, _PemFile(tls.key, tls.key_file) as \
            key_path:
        ctx.load_cert_chain(cert_path, key_path)


class _PemFile:
    """The path of a PEM given inline or as a file, for the length of a `with` block."""

    def __init__(self, inline: str | None, path: Path | None) -> None:
        self.inline, self.path = inline, path
        self.fd: int | None = None
        self.tmp: str | None = None

    def __enter__(self) -> str:
        if self.inline is None:
            assert self.path is not None
            return str(self.path)
        data = self.inline.encode()
        if hasattr(os, "memfd_create"):
            self.fd = os.memfd_create("cj-health-pem", 0)
            os.write(self.fd, data)
            return f"/proc/self/fd/{self.fd}"
        fd, self.tmp = tempfile.mkstemp(prefix="cjh-pem-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return self.tmp

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
        if self.tmp is not None:
            os.unlink(self.tmp)


def peer_sans(cert: Mapping[str, Any] | None) -> list[str]:
    """The SAN values of a verified peer certificate, spelled as the toolkit compares them."""
    if not cert:
        return []
    return [str(value) for _kind, value in cert.get("subjectAltName", ())]


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


def _fingerprint(files: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for f in files:
        try:
            st = f.stat()  # follows symlinks: a Kubernetes secret swaps its ..data link
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((0, 0, 0))
    return tuple(out)


@dataclass(frozen=True)
class _State:
    config: WebConfig
    context: ssl.SSLContext | None
    auth: BasicAuth
    fingerprint: tuple[tuple[int, int, int], ...]


class WebSecurity:
    """The live state of a web config file, for exporter.web: TLS context, auth, headers.

    Built once at startup (errors exit 2 there), then reloaded when the file or a file it names
    changes. A reload that fails keeps the last good state and logs the error once; a reload that
    would switch TLS on or off is refused too (the listening socket cannot change its protocol).
    """

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._state = self._build(load(self.path))
        self._checked = clock()
        self._last_error: str | None = None

    @staticmethod
    def _build(config: WebConfig) -> _State:
        ctx = None if config.tls is None else build_ssl_context(config.tls, str(config.path))
        return _State(config, ctx, BasicAuth(config.users), _fingerprint(config.files()))

    @property
    def tls_enabled(self) -> bool:
        return self._state.context is not None

    @property
    def auth_enabled(self) -> bool:
        return self._state.auth.enabled

    def describe(self) -> str:
        s = self._state
        parts = ["TLS on" if s.context is not None else "TLS off"]
        if s.config.tls is not None and s.config.tls.client_auth_type != "NoClientCert":
            parts.append(f"client certificates {s.config.tls.client_auth_type}")
        parts.append(f"basic auth for {len(s.auth.users)} user(s)" if s.auth.enabled
                     else "no basic auth")
        return ", ".join(parts)

    def current(self) -> _State:
        """The state to use for this request, reloading first if the files changed."""
        now = self._clock()
        if now - self._checked < RELOAD_CHECK_SECONDS:
            return self._state
        with self._lock:
            if now - self._checked < RELOAD_CHECK_SECONDS:
                return self._state
            self._checked = now
            state = self._state
            files = state.config.files()
            if _fingerprint(files) == state.fingerprint:
                return state
            try:
                new = self._build(load(self.path))
                if (new.context is None) != (state.context is None):
                    raise ConfigError("switching TLS on or off needs a restart")
            except ConfigError as exc:
                message = str(exc)
                if message != self._last_error:
                    log.error("web config not reloaded, keeping the previous one: %s", message)
                    self._last_error = message
                # Remember the broken files so the check is not redone for every request.
                self._state = _State(state.config, state.context, state.auth,
                                     _fingerprint(files))
                return self._state
            self._last_error = None
            self._state = new
            log.info("web config reloaded from %s (%s)", self.path, self.describe())
            return new

    # -- the hooks exporter.web calls ------------------------------------------------------

    def context(self) -> ssl.SSLContext:
        ctx = self.current().context
        assert ctx is not None, "context() is only called when TLS is on"
        return ctx

    def accept_peer(self, sock: ssl.SSLSocket) -> bool:
        """client_allowed_sans: the verified client certificate must carry one of them."""
        tls = self._state.config.tls
        if tls is None or tls.client_allowed_sans is None:
            return True
        sans = peer_sans(sock.getpeercert())
        return any(s in tls.client_allowed_sans for s in sans)

    def authorize(self, handler: BaseHTTPRequestHandler) -> bool:
        return self.current().auth.check(handler.headers.get("Authorization"))

    def headers(self) -> Mapping[str, str]:
        return self._state.config.headers
