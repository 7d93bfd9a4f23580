"""Helpers shared by the hardening tests (faults, TLS, roles, replicas); holds no tests itself.

Certificates come from the `openssl` command line (on every Debian machine; the `cryptography`
package is not a dependency of this project), as a real operator would make them.
"""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from exporter.db import APPLICATION_NAME


def basic(user: str, password: str) -> str:
    """An Authorization header for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_count(count: Callable[[], int], samples: int = 5, pause: float = 0.1) -> int:
    """The lowest of a few samples: an HTTP handler thread of a scrape may come and go."""
    seen = []
    for _ in range(samples):
        seen.append(count())
        time.sleep(pause)
    return min(seen)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               pause: float = 0.05) -> float:
    """Seconds it took for `predicate` to hold; AssertionError after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(pause)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def exporter_backends(url: str, database: str | None = None) -> list[tuple[int, str, str]]:
    """(pid, state, query) of every backend the exporter opened (by application_name)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT pid, state, query FROM pg_stat_activity WHERE application_name = :app"
                " AND (CAST(:db AS text) IS NULL OR datname = :db)"),
                {"app": APPLICATION_NAME, "db": database}).all()
    finally:
        engine.dispose()
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": q[49], "p99": q[98], "max": ordered[-1]}


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """A test CA with a server certificate for 127.0.0.1/localhost and client certificates."""

    folder: Path
    ca: KeyPair
    server: KeyPair
    client: KeyPair  # SAN DNS:prometheus.monitoring.svc, signed by ca
    other_client: KeyPair  # SAN DNS:intruder.example, signed by ca
    rogue_ca: KeyPair
    rogue_client: KeyPair  # signed by rogue_ca

    def client_context(self, cert: KeyPair | None = None,
                       max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca.cert))
        if cert is not None:
            ctx.load_cert_chain(str(cert.cert), str(cert.key))
        if max_version is not None:
            ctx.maximum_version = max_version
        return ctx


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    assert exe, "the openssl command line is needed to make test certificates"
    subprocess.run([exe, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(folder: Path, name: str) -> KeyPair:
    (folder / f"{name}.cnf").write_text(
        "[req]\ndistinguished_name=dn\nx509_extensions=v3\n[dn]\n"
        "[v3]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\n")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2",
             "-subj", f"/CN={name}", "-config", f"{name}.cnf", cwd=folder)
    return KeyPair(folder / f"{name}.crt", folder / f"{name}.key")


def make_leaf(folder: Path, ca: KeyPair, name: str, san: str, usage: str) -> KeyPair:
    """A certificate signed by `ca`; usage is serverAuth or clientAuth."""
    (folder / f"{name}.ext").write_text(
        f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\nsubjectAltName={san}\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
             "-config", f"{ca.cert.stem}.cnf", cwd=folder)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", str(ca.cert), "-CAkey", str(ca.key),
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
             cwd=folder)
    return KeyPair(folder / f"{name}.crt", folder / f"{name}.key")


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca(folder, "test-ca")
    rogue = make_ca(folder, "rogue-ca")
    return Pki(
        folder=folder, ca=ca,
        server=make_leaf(folder, ca, "server", "IP:127.0.0.1,DNS:localhost", "serverAuth"),
        client=make_leaf(folder, ca, "client", "DNS:prometheus.monitoring.svc", "clientAuth"),
        other_client=make_leaf(folder, ca, "other", "DNS:intruder.example", "clientAuth"),
        rogue_ca=rogue,
        rogue_client=make_leaf(folder, rogue, "rogue", "DNS:prometheus.monitoring.svc",
                               "clientAuth"),
    )


def psql_binary() -> str:
    """pgserver's own psql (matches its server), else the one on PATH."""
    try:
        import pgserver  # the test extra installs it

        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / "psql"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("psql")
    assert found, "psql is needed to run sql/roles.sql"
    return found


def libpq_url(url: URL) -> str:
    """A SQLAlchemy URL as psql/libpq take it (no +psycopg, keeps ?host=/socket/dir)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def apply_roles(admin_url: URL, **variables: str) -> subprocess.CompletedProcess[str]:
    """Run sql/roles.sql with psql as the admin, exactly as docs/security.md tells operators."""
    from exporter.sqlfiles import sql_dir

    args = [psql_binary(), libpq_url(admin_url), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-f", str(sql_dir() / "roles.sql")]
    for name, value in variables.items():
        args += ["-v", f"{name}={value}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def drop_roles(admin_url: URL, *roles: str) -> None:
    """Remove test roles from the (shared) server; their grants died with the test database."""
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for role in roles:
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
    engine.dispose()
