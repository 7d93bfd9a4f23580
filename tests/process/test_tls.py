"""`--web.config.file`: TLS, client certificates and basic auth on a real `serve` process.

The certificates are made by `openssl` in the test (a CA, a server certificate for 127.0.0.1,
client certificates from that CA and from a rogue one); passwords are bcrypt-hashed here. The
web config parser and the bcrypt cache are also tested in-process, where their inner counts can
be seen: tests/unit/test_web_config.py and tests/unit/test_basic_auth.py.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from exporter.web import config as webconfig
from exporter.web import tls
from tests.support.database import SeededDb, Server, database
from tests.support.exposition import parse
from tests.support.hardening import Pki, basic, make_leaf, make_pki, percentiles
from tests.support.process import ExporterProcess, free_port, http_get, run_cli

PASSWORD = "scrape-pässword-1"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
# htpasswd -B writes $2y$; Python's bcrypt and Go's accept it: the file must too.
HASH_2Y = "$2y$" + HASH[4:]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def https_get(url: str, ctx: ssl.SSLContext | None, headers: dict[str, str] | None = None,
              method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return http_get(url, headers, context=ctx, method=method)


def tls_exporter(dsn: str, web_config: Path, ctx: ssl.SSLContext,
                 authorization: str | None = None) -> ExporterProcess:
    """`serve --web.config.file`, reached over HTTPS with `ctx` (and credentials, if given)."""
    return ExporterProcess(dsn, extra_args=["--web.config.file", str(web_config)],
                           poll_interval=0.5, scheme="https", ssl_context=ctx,
                           headers={"Authorization": authorization} if authorization else None)


def write_config(folder: Path, body: str, name: str = "web.yml") -> Path:
    path = folder / name
    path.write_text(body)
    return path


@pytest.fixture(scope="module")
def module_db(pg_server: Server) -> Iterator[str]:
    """A seeded database shared by this module's read-only TLS tests (one process for all)."""
    with database(pg_server, demo=True) as db:
        yield db.url


@pytest.fixture(scope="module")
def tls_auth_exporter(pki: Pki, module_db: str,
                      tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExporterProcess]:
    tmp_path = tmp_path_factory.mktemp("tls")
    # Relative file names resolve against the config's folder, as in exporter-toolkit.
    shutil.copy(pki.server.cert, tmp_path / "server.crt")
    shutil.copy(pki.server.key, tmp_path / "server.key")
    config = write_config(tmp_path, f"""
tls_server_config:
  cert_file: server.crt
  key_file: server.key
  min_version: TLS13
http_server_config:
  headers:
    X-Content-Type-Options: nosniff
    X-Frame-Options: deny
basic_auth_users:
  prometheus: '{HASH}'
  grafana: '{HASH_2Y}'
""")
    with tls_exporter(module_db, config, pki.client_context(),
                      basic("prometheus", PASSWORD)) as exp:
        yield exp


def test_tls_and_basic_auth_on_every_endpoint(tls_auth_exporter: ExporterProcess, pki: Pki) -> None:
    exp = tls_auth_exporter
    ctx = pki.client_context()
    for path in ("/metrics", "/", "/healthz"):
        status, headers, body = exp.get(path)
        assert status == 200, path
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "deny"
    assert parse(exp.get("/metrics")[2]).samples("cj_batch_problem")
    assert https_get(f"{exp.url}/metrics", ctx, {"Authorization": basic("grafana",
                                                                        PASSWORD)})[0] == 200
    # Missing, wrong, unknown, malformed credentials: 401 with a Basic challenge, everywhere,
    # and nothing of the page leaks into the 401 body.
    denied = [None, basic("prometheus", "wrong"), basic("nobody", PASSWORD),
              basic("prometheus", PASSWORD + "x" * 80), "Basic !!!notbase64", "Bearer abc",
              basic("prometheus", PASSWORD.upper())]
    for authorization in denied:
        for path in ("/metrics", "/", "/healthz", "/does-not-exist"):
            headers = {"Authorization": authorization} if authorization else {}
            status, response_headers, body = https_get(f"{exp.url}{path}", ctx, headers)
            assert status == 401, (authorization, path, status)
            assert response_headers["WWW-Authenticate"].startswith("Basic ")
            assert body == b"Unauthorized\n"
    # Every endpoint is read-only, and a write attempt without credentials learns nothing.
    assert https_get(f"{exp.url}/metrics", ctx, method="POST")[0] == 401
    assert exp.get("/metrics", method="POST")[0] == 405
    assert exp.get("/metrics", method="DELETE")[0] == 405


def test_plain_http_and_old_tls_are_refused(tls_auth_exporter: ExporterProcess, pki: Pki) -> None:
    exp = tls_auth_exporter
    with pytest.raises((OSError, urllib.error.URLError)):
        urllib.request.urlopen(f"http://127.0.0.1:{exp.port}/metrics", timeout=5)
    tls12 = pki.client_context(max_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises((ssl.SSLError, urllib.error.URLError)):
        https_get(f"{exp.url}/metrics", tls12, exp.headers)
    untrusting = ssl.create_default_context()  # does not know the test CA
    with pytest.raises((ssl.SSLError, urllib.error.URLError)):
        https_get(f"{exp.url}/metrics", untrusting, exp.headers)
    assert exp.get("/metrics")[0] == 200  # the server shrugs all that off


def test_a_silent_client_does_not_block_others(tls_auth_exporter: ExporterProcess) -> None:
    """The handshake runs in the connection's thread: a client that connects and never
    speaks TLS must not hold up the accept loop."""
    exp = tls_auth_exporter
    silent = [socket.create_connection(("127.0.0.1", exp.port)) for _ in range(5)]
    try:
        started = time.monotonic()
        assert exp.get("/metrics")[0] == 200
        assert time.monotonic() - started < 1.0
    finally:
        for sock in silent:
            sock.close()


def test_scrape_storm_over_tls_with_basic_auth(tls_auth_exporter: ExporterProcess) -> None:
    """200 concurrent authenticated HTTPS scrapes: bcrypt (~70 ms at cost 10) must run about
    once, not 200 times (that alone would be 14 s of CPU)."""
    exp = tls_auth_exporter
    scrapes = 200
    barrier = threading.Barrier(scrapes)

    def scrape(_: int) -> tuple[float, int]:
        barrier.wait()
        started = time.monotonic()
        status = exp.get("/metrics", timeout=30)[0]
        return time.monotonic() - started, status

    with concurrent.futures.ThreadPoolExecutor(scrapes) as pool:
        results = list(pool.map(scrape, range(scrapes)))
    assert all(status == 200 for _, status in results)
    figures = percentiles([elapsed for elapsed, _ in results])
    print(f"\nTLS + basic auth storm, {scrapes} concurrent: p50 {figures['p50'] * 1000:.0f} ms, "
          f"p99 {figures['p99'] * 1000:.0f} ms, max {figures['max'] * 1000:.0f} ms")
    assert figures["p99"] < 2.5, figures


def test_certificate_rotation_needs_no_restart(pki: Pki, seeded_db: SeededDb,
                                               tmp_path: Path) -> None:
    shutil.copy(pki.server.cert, tmp_path / "server.crt")
    shutil.copy(pki.server.key, tmp_path / "server.key")
    config = write_config(tmp_path, "tls_server_config:\n  cert_file: server.crt\n"
                                    "  key_file: server.key\n")
    with tls_exporter(seeded_db.url, config, pki.client_context()) as exp:
        assert serial_of_server(exp.port, pki) == serial_of_file(pki.server.cert)
        rotated = make_leaf(pki.folder, pki.ca, "server-rotated", "IP:127.0.0.1",
                            "serverAuth")
        # Key first, then certificate: a half-rotated pair fails to load and the old one stays.
        shutil.copy(rotated.key, tmp_path / "server.key")
        time.sleep(1.2)
        assert exp.get("/metrics")[0] == 200  # mismatched pair: the previous context serves
        shutil.copy(rotated.cert, tmp_path / "server.crt")
        deadline = time.monotonic() + 5
        while serial_of_server(exp.port, pki) != serial_of_file(rotated.cert):
            assert time.monotonic() < deadline, "the rotated certificate was never served"
            time.sleep(0.2)
        assert exp.get("/metrics")[0] == 200
    assert "web config not reloaded, keeping the previous one" in exp.output()
    assert "web config reloaded" in exp.output()


def serial_of_server(port: int, pki: Pki) -> int:
    ctx = pki.client_context()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        cert = tls.getpeercert()
    assert cert is not None
    return int(str(cert["serialNumber"]), 16)


def serial_of_file(path: Path) -> int:
    out = subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-serial"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip().split("=", 1)[1], 16)


def test_client_certificates_and_allowed_sans(pki: Pki, seeded_db: SeededDb,
                                              tmp_path: Path) -> None:
    config = write_config(tmp_path, f"""
tls_server_config:
  cert_file: {pki.server.cert}
  key_file: {pki.server.key}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {pki.ca.cert}
  client_allowed_sans: [prometheus.monitoring.svc]
""")
    good = pki.client_context(pki.client)
    with tls_exporter(seeded_db.url, config, good) as exp:
        assert exp.get("/metrics")[0] == 200
        refused = {
            "no client certificate": pki.client_context(),
            "certificate from another CA": pki.client_context(pki.rogue_client),
            "right CA, SAN not allowed": pki.client_context(pki.other_client),
        }
        for what, ctx in refused.items():
            with pytest.raises((OSError, urllib.error.URLError)):
                status = https_get(f"{exp.url}/metrics", ctx)[0]
                pytest.fail(f"{what}: answered {status}")
        assert exp.get("/metrics")[0] == 200
    assert "Traceback" not in exp.output()


def test_bad_web_config_exits_2_with_one_line_and_no_secret(tmp_path: Path,
                                                            pki: Pki) -> None:
    plaintext = "hunter2-plain-text-password"
    # The parser's other errors are checked in-process below; these go through the CLI.
    cases = {
        f"basic_auth_users:\n  alice: {plaintext}\n": "is not a bcrypt hash",
        "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n":
            "cannot read cert_file",
        f"tls_server_config:\n  cert_file: {pki.server.cert}\n  key_file: {pki.client.key}\n":
            "cannot load the TLS certificate",
    }
    for body, expected in cases.items():
        config = write_config(tmp_path, body)
        result = run_cli("serve", "--dsn", "postgresql://u:pw@h/db", "--web.config.file",
                         str(config), "--web.listen-address", f"127.0.0.1:{free_port()}")
        assert result.returncode == 2, (body, result.stderr)
        assert expected in result.stderr, (expected, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert plaintext not in result.stderr


# -- the toolkit format in full (in-process, but it needs the openssl-made certificates) ------


def test_web_config_accepts_the_toolkit_format(tmp_path: Path, pki: Pki) -> None:
    inline_cert = pki.server.cert.read_text()
    inline_key = pki.server.key.read_text()
    config = webconfig.load(write_config(tmp_path, f"""
tls_server_config:
  cert: |
{_indent(inline_cert, 4)}
  key: |
{_indent(inline_key, 4)}
  client_auth_type: VerifyClientCertIfGiven
  client_ca: |
{_indent(pki.ca.cert.read_text(), 4)}
  min_version: TLS12
  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]
  prefer_server_cipher_suites: false
http_server_config:
  http2: true
  headers:
    Strict-Transport-Security: max-age=31536000
    Content-Security-Policy: ''
basic_auth_users:
  alice: '{HASH}'
"""))
    assert config.tls is not None and config.tls.client_auth_type == "VerifyClientCertIfGiven"
    assert config.headers == {"Strict-Transport-Security": "max-age=31536000"}
    assert inline_key.strip().splitlines()[1] not in repr(config)  # a private key: never shown
    assert HASH not in repr(config)
    ctx = tls.build_ssl_context(config.tls)
    assert ctx.verify_mode == ssl.CERT_OPTIONAL
    assert not ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"} == {
        "ECDHE-ECDSA-AES128-GCM-SHA256"}
    # An empty file is valid: plain HTTP, no authentication (as in the toolkit).
    empty = webconfig.load(write_config(tmp_path, "", "empty.yml"))
    assert empty.tls is None and not empty.users


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.strip().splitlines())
