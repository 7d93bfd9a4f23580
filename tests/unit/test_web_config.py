"""The exporter-toolkit web config file, parsed and validated in-process: every refusal is one
clear line (OperatorError). Accepting the full toolkit format, which needs real certificates
(made by the openssl command line), is tested in tests/process/test_tls.py with the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.errors import OperatorError
from exporter.web import config as webconfig
from exporter.web.reload import WebSecurity


def write_config(folder: Path, body: str, name: str = "web.yml") -> Path:
    path = folder / name
    path.write_text(body)
    return path


@pytest.mark.parametrize(("body", "message"), [
    ("rate_limit:\n  interval: 1s\n  burst: 5\n", "rate_limit is not supported"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: "
     "RequireAnyClientCert\n  client_ca_file: c\n", "nobody verified"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n",
     "without a client_auth_type"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: "
     "RequireAndVerifyClientCert\n", "needs client_ca_file"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_allowed_sans: [x]\n",
     "client_allowed_sans requires"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS14\n",
     "unknown TLS version"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n"
     "  max_version: TLS12\n", "above max_version"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [RC4]\n",
     "unknown cipher: RC4"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [X25519]\n",
     "curve_preferences is not supported"),
    ("tls_server_config:\n  cert: x\n  cert_file: a\n  key_file: b\n", "not both"),
    ("tls_server_config:\n  key_file: b\n", "missing one of cert or cert_file"),
    ("tls_server_config:\n  cert_file: a\n  key_file: b\n  certfile: c\n",
     "unknown setting tls_server_config.certfile"),
    ("http_server_config:\n  headers:\n    Server: x\n", "can not be configured"),
    ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "invalid value"),
    ("basic_auth_users:\n  yes: '$2b$10$" + "a" * 53 + "'\n", "quote it"),
    ("basic_auth_users:\n  alice: '$2b$99$" + "a" * 53 + "'\n", "cost out of range"),
    ("- a list\n", "must be a mapping"),
    ("tls_server_config: [\n", "not valid YAML"),
])
def test_web_config_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(OperatorError, match=message):
        webconfig.load(write_config(tmp_path, body))


def test_security_without_users_lets_everyone_in(tmp_path: Path) -> None:
    security = WebSecurity(write_config(tmp_path, "http_server_config:\n  http2: false\n"))
    assert not security.tls_enabled and not security.auth_enabled
    assert security.describe() == "TLS off, no basic auth"
