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

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter import yamlfile
from exporter.errors import OperatorError
from exporter.web.auth import BCRYPT_HASH
from exporter.web.tls import (
    CIPHER_SUITES,
    CLIENT_AUTH,
    TLS_VERSIONS,
    UNVERIFIED_CLIENT_AUTH,
    TLSSettings,
    build_ssl_context,
)

TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
TLS_KEYS = ("cert", "key", "client_ca", "cert_file", "key_file", "client_auth_type",
            "client_ca_file", "client_allowed_sans", "min_version", "max_version",
            "cipher_suites", "prefer_server_cipher_suites", "curve_preferences")
HTTP_KEYS = ("http2", "headers")

# The toolkit lets only these response headers be configured; some have a closed set of values.
HEADERS: Mapping[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}


@dataclass(frozen=True)
class WebConfig:
    path: Path
    tls: TLSSettings | None  # None: plain HTTP
    headers: Mapping[str, str]
    users: Mapping[str, bytes] = field(repr=False)  # user -> bcrypt hash
    # Built once by load(), so a broken certificate fails there, not at the first scrape.
    context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)

    def files(self) -> tuple[Path, ...]:
        """The files whose change triggers a reload: this file and those it names."""
        named = () if self.tls is None else (self.tls.cert_file, self.tls.key_file,
                                              self.tls.client_ca_file)
        return (self.path, *(p for p in named if p is not None))


def load(path: str | Path) -> WebConfig:
    """Read and validate a web config file, or raise OperatorError (one line, no secrets)."""
    path = Path(path)
    where = f"web config file {path}"
    data = yamlfile.read(path, where)
    _expect_mapping(data, where)
    _no_unknown(data, TOP_KEYS, where, "")
    if data.get("rate_limit") is not None:
        raise OperatorError(f"{where}: rate_limit is not supported by cj-health-exporter")
    tls_raw = data.get("tls_server_config") or {}
    http_raw = data.get("http_server_config") or {}
    users_raw = data.get("basic_auth_users") or {}
    _expect_mapping(tls_raw, f"{where}: tls_server_config")
    _expect_mapping(http_raw, f"{where}: http_server_config")
    _expect_mapping(users_raw, f"{where}: basic_auth_users")
    _no_unknown(tls_raw, TLS_KEYS, where, "tls_server_config.")
    _no_unknown(http_raw, HTTP_KEYS, where, "http_server_config.")
    tls = _tls(tls_raw, path.parent, where)
    if "http2" in http_raw and not isinstance(http_raw["http2"], bool):
        raise OperatorError(f"{where}: http_server_config.http2 must be true or false")
    headers, users = _headers(http_raw.get("headers"), where), _users(users_raw, where)
    context = None if tls is None else build_ssl_context(tls, where)
    return WebConfig(path=path, tls=tls, headers=headers, users=users, context=context)


def _expect_mapping(value: Any, what: str) -> None:
    if not isinstance(value, dict):
        raise OperatorError(f"{what} must be a mapping")


def _no_unknown(raw: Mapping[Any, Any], known: tuple[str, ...], where: str, prefix: str) -> None:
    for key in raw:
        if key not in known:
            raise OperatorError(f"{where}: unknown setting {prefix}{key}")


def _text(raw: Mapping[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise OperatorError(f"{where}: tls_server_config.{key} must be a string")
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
            raise OperatorError(f"{where}: give tls_server_config.{name} or {name}_file, not both")
    if not (cert or cert_file):
        raise OperatorError(f"{where}: tls_server_config is missing one of cert or cert_file")
    if not (key or key_file):
        raise OperatorError(f"{where}: tls_server_config is missing one of key or key_file")
    auth = auth or "NoClientCert"
    if auth in UNVERIFIED_CLIENT_AUTH:
        raise OperatorError(
            f"{where}: client_auth_type {auth} accepts client certificates that nobody "
            "verified; use RequireAndVerifyClientCert (or VerifyClientCertIfGiven)")
    if auth not in CLIENT_AUTH:
        raise OperatorError(f"{where}: invalid client_auth_type {auth!r} "
                          f"(one of {', '.join(CLIENT_AUTH)})")
    has_ca = bool(ca or ca_file)
    if has_ca and auth == "NoClientCert":
        raise OperatorError(f"{where}: client CAs are configured without a client_auth_type "
                          "(set RequireAndVerifyClientCert)")
    if not has_ca and auth != "NoClientCert":
        raise OperatorError(f"{where}: client_auth_type {auth} needs client_ca_file (or client_ca)")
    sans = raw.get("client_allowed_sans")
    if sans is not None:
        if not isinstance(sans, list) or not all(isinstance(s, str) and s for s in sans):
            raise OperatorError(f"{where}: client_allowed_sans must be a list of strings")
        if auth != "RequireAndVerifyClientCert":
            raise OperatorError(f"{where}: client_allowed_sans requires client_auth_type "
                              "RequireAndVerifyClientCert")
    versions = []
    for key_name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        value = raw.get(key_name) or default
        if value not in TLS_VERSIONS:
            raise OperatorError(f"{where}: unknown TLS version {value!r} for {key_name} "
                              f"(one of {', '.join(TLS_VERSIONS)})")
        versions.append(value)
    if TLS_VERSIONS[versions[0]] > TLS_VERSIONS[versions[1]]:
        raise OperatorError(f"{where}: min_version {versions[0]} is above max_version "
                          f"{versions[1]}")
    if raw.get("curve_preferences"):
        raise OperatorError(f"{where}: curve_preferences is not supported by cj-health-exporter "
                          "(Python's ssl module cannot set it); remove it to use OpenSSL's "
                          "defaults")
    ciphers = raw.get("cipher_suites") or []
    if not isinstance(ciphers, list):
        raise OperatorError(f"{where}: cipher_suites must be a list")
    for name in ciphers:
        if name not in CIPHER_SUITES:
            raise OperatorError(f"{where}: unknown cipher: {name}")
    prefer = raw.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise OperatorError(f"{where}: prefer_server_cipher_suites must be true or false")
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
            raise OperatorError(f"{where}: HTTP header {name!r} can not be configured "
                              f"(one of {', '.join(HEADERS)})")
        if value is None or value == "":
            continue  # blank means unset, as in the toolkit
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise OperatorError(f"{where}: header {name} must be a one-line string")
        allowed = HEADERS[name]
        if allowed and value not in allowed:
            raise OperatorError(f"{where}: invalid value for {name}, expected one of "
                              f"{', '.join(allowed)}")
        out[name] = value
    return out


def _users(raw: Mapping[Any, Any], where: str) -> dict[str, bytes]:
    users = {}
    for user, hashed in raw.items():
        # YAML turns an unquoted yes/no/123 into a bool/int: make the operator quote it.
        if not isinstance(user, str) or not user or ":" in user:
            raise OperatorError(f"{where}: basic_auth_users: user name {user!r} must be a "
                              "non-empty string without ':' (quote it in YAML)")
        # Never echo the value: an operator may have pasted a plain-text password here.
        match = BCRYPT_HASH.match(hashed) if isinstance(hashed, str) else None
        if match is None:
            raise OperatorError(f"{where}: basic_auth_users.{user} is not a bcrypt hash "
                              "(value not shown; make one with `htpasswd -nBC 10 \"\"`)")
        if not 4 <= int(match.group(1)) <= 31:
            raise OperatorError(f"{where}: basic_auth_users.{user}: bcrypt cost out of range")
        users[user] = hashed.encode("ascii")
    return users


