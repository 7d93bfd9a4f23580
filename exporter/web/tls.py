"""TLS for the metrics server: the settings of `tls_server_config` and the SSLContext they make.

Names and semantics are exporter-toolkit's (web/tls_config.go): Go's cipher suite names, TLS
version spellings, client_auth_type values. exporter.web.config parses the file into
TLSSettings; exporter.web.reload builds a new context when the certificate files change.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.errors import OperatorError

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


def build_ssl_context(tls: TLSSettings, where: str = "web config") -> ssl.SSLContext:
    """A server-side SSLContext for these settings; OperatorError if a file does not load."""
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
                raise OperatorError(f"{where}: cannot read {name} {path}: {exc.strerror}") \
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
        raise OperatorError(f"{where}: cannot load the TLS certificate, key or client CA "
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


