"""`healthcheck [--ready]`: ask the running exporter over HTTP(S) whether it is alive (or ready),
for Docker's HEALTHCHECK and Kubernetes exec probes. Exit 0 or 1 with one line on stdout.

It reads the settings `serve` reads (file, env, flags): `listen_address` says where to knock
(the loopback address when the exporter listens on every interface) and `web_config_file` how:

- TLS on: https, trusting exactly the certificate the exporter serves (its cert_file or inline
  cert; hostname not checked: the check runs beside the exporter and knocks on loopback);
- client certificates required: it presents `healthcheck.cert_file` / `healthcheck.key_file`;
- basic auth on: it sends the user and password of `healthcheck.credentials_file`, one line
  `USER:PASSWORD` (give it its own bcrypt entry in `basic_auth_users`, so that rotating
  Prometheus' password does not touch the probe).

Liveness asks /healthz (200 while the process serves); --ready asks /-/ready (503 while the
snapshot is stale or before the first good poll). See exporter.web.pages.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
from pathlib import Path

from exporter import PROG
from exporter.config import HealthcheckSettings, Settings, parse_listen_address
from exporter.errors import OperatorError
from exporter.web import config as webconfig
from exporter.web.tls import TLSSettings

HEALTHY, UNHEALTHY = 0, 1


def run(settings: Settings, ready: bool) -> int:
    path = "/-/ready" if ready else "/healthz"
    url = path
    try:
        web = webconfig.load(settings.web_config_file) if settings.web_config_file else None
        url = url_for(settings, web, path)
        status, body = get(settings, web, path)
    except OperatorError as exc:
        print(f"unhealthy: {exc}")
        return UNHEALTHY
    except (OSError, http.client.HTTPException) as exc:
        print(f"unhealthy: {url}: {type(exc).__name__}: {exc}")
        return UNHEALTHY
    what = _summary(body)
    if status == 200:
        print(f"ok: {url} answered 200{what}")
        return HEALTHY
    print(f"unhealthy: {url} answered {status}{what}")
    return UNHEALTHY


def target(settings: Settings) -> tuple[str, int]:
    """Where to knock: the listen address, or loopback when it listens on every interface."""
    host, port = parse_listen_address(settings.listen_address)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, port


def url_for(settings: Settings, web: webconfig.WebConfig | None, path: str) -> str:
    host, port = target(settings)
    scheme = "https" if web is not None and web.tls is not None else "http"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}{path}"


def get(settings: Settings, web: webconfig.WebConfig | None, path: str) -> tuple[int, bytes]:
    """(HTTP status, body) of GET path on the running exporter."""
    host, port = target(settings)
    check = settings.healthcheck
    headers = {"User-Agent": f"{PROG}-healthcheck"}
    if web is not None and web.users:
        headers["Authorization"] = _basic(check)
    if web is not None and web.tls is not None:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=check.timeout_seconds, context=client_context(web.tls, check))
    else:
        conn = http.client.HTTPConnection(host, port, timeout=check.timeout_seconds)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(4096)
    finally:
        conn.close()


def _basic(check: HealthcheckSettings) -> str:
    if not check.credentials_file:
        raise OperatorError("the web config asks for basic auth: give the probe a "
                            "healthcheck.credentials_file (USER:PASSWORD) "
                            "[CJ_HEALTH_HEALTHCHECK_CREDENTIALS_FILE]")
    line = read_credentials(check.credentials_file)
    return "Basic " + base64.b64encode(line.encode()).decode("ascii")


def read_credentials(path: str) -> str:
    """The one USER:PASSWORD line of healthcheck.credentials_file, or OperatorError (never
    showing the value)."""
    try:
        line = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise OperatorError(f"cannot read healthcheck.credentials_file {path}: "
                            f"{exc.strerror}") from None
    if ":" not in line or "\n" in line:
        raise OperatorError(f"healthcheck.credentials_file {path} must hold one line "
                            "USER:PASSWORD (value not shown)")
    return line


def client_context(tls: TLSSettings, check: HealthcheckSettings) -> ssl.SSLContext:
    """Trust exactly the exporter's own certificate; present ours when it asks for one."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # loopback, pinned certificate: the name proves nothing more
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a leaf may be its own trust anchor
    try:
        pem = tls.cert if tls.cert else Path(str(tls.cert_file)).read_text(encoding="ascii")
        ctx.load_verify_locations(cadata=pem)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise OperatorError(f"cannot load the exporter's certificate to trust it: {exc}") from None
    if check.cert_file and check.key_file:
        try:
            ctx.load_cert_chain(check.cert_file, check.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise OperatorError(f"cannot load healthcheck.cert_file/key_file: {exc}") from None
    elif tls.client_auth_type == "RequireAndVerifyClientCert":
        raise OperatorError("the web config requires client certificates: give the probe "
                            "healthcheck.cert_file and healthcheck.key_file")
    return ctx


def _summary(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(doc, dict) or "status" not in doc:
        return ""
    return f" (status {doc['status']})"
