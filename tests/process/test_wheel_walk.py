"""README.md, docs/security.md and docs/runbooks/ walked end to end from the BUILT WHEEL, installed
in a fresh virtualenv outside the checkout, against the CJ service's own migrated schema
(../shared/upstream/cj_schema_alembic_head.sql) holding the demo batches (issue 13).

Every shell command and every SQL statement of those documents' code blocks runs, under the role
the document names, and must succeed without a traceback. The documents name roles through
their example DSNs, which the walk maps to real logins:

    postgresql://cj_owner@cj-db/...          the CJ tables' owner (no CREATEROLE), <owner DSN>
    postgresql://admin@cj-db/...             a superuser
    postgresql://cj_health_ro:...@cj-db/...  the polling role sql/roles.sql creates
    postgresql://alice@cj-db:5432/...        a person's login granted cj_health_operator,
                                             <your login>, and $CJ_HEALTH_DSN after the
                                             runbooks' `export`
    /etc/cj-health-exporter.yml              the exporter's config: dsn cj_health_ro,
                                             remediation with cj_health_remediator

SQL that writes must say, in its first line, `-- as the CJ tables' owner`: it runs as the owner
in a transaction that is rolled back; every other statement runs as the operator login in a
READ ONLY transaction. Commands that cannot run here are listed in SKIPPED with the reason,
and each of those rules must still match something (a stale rule fails). Cost: one wheel build
and one pip install per session (~1 min), then ~60 short commands. The walk has a PostgreSQL of
its own (pgserver: local connections are trusted, so the roles need no passwords, and the
roles it creates vanish with it).
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL

from exporter import sqlfiles
from exporter.demo import scenarios
from exporter.demo.embedded import EmbeddedPostgres, runtime_dir_env
from exporter.vocabulary import PROBLEM_KINDS
from tests.support.exposition import parse
from tests.support.hardening import libpq_url
from tests.support.paths import ALEMBIC_SCHEMA, ROOT
from tests.support.process import free_port, http_get
from tests.support.wheel import Venv, build_wheel, fresh_venv, wheel_files

DATABASE = "huleedu_cj_assessment"
RUNBOOKS = ROOT / "docs" / "runbooks"
DOCS = [ROOT / "README.md", ROOT / "docs" / "security.md", RUNBOOKS / "README.md",
        *sorted(p for p in RUNBOOKS.glob("CJ*.md"))]
OWNER_MARK = "-- as the CJ tables' owner"
# (pattern, why it does not run here). Each must match at least one command of the documents.
SKIPPED = {
    r"^python3 -m venv \.venv": "the checkout's demo one-liner; its wheel equivalent "
                                "(`demo --remediation`) runs",
    r"^bash \.ci/test\.sh": "the test suite itself",
    r"^pip install": "how this walk's venv was made (from the built wheel)",
    r"^docker compose": "no Docker engine on the build machines",
    r"^\.venv/bin/python -m bench": "a benchmark of the source checkout (~20 min)",
    r"http://prometheus:9090": "needs a Prometheus (tests/stack/ runs one)",
    r"\\password": "interactive: psql prompts for the password",
}
# Pages whose alert is not a problem kind: the problem of the batch they are about.
PAGE_PROBLEM = {"CJCompletionEventRunaway": "duplicate_completion",
                "CJManyBatchesWedged": "wedged"}


def metric(body: bytes | str, name: str, **labels: str) -> float | None:
    return parse(body).value(name, **labels)


@dataclass
class Walk:
    venv: Venv
    server: EmbeddedPostgres
    wheel: Path
    config: Path
    planted: dict[int, frozenset[str]]
    listen: str
    env: dict[str, str] = field(default_factory=dict)
    serve: subprocess.Popen[bytes] | None = None
    serve_log: Path | None = None
    used_skips: set[str] = field(default_factory=set)
    inspected: dict[str, set[str]] = field(default_factory=dict)  # batch -> inspect --json keys
    ran: list[str] = field(default_factory=list)

    def url(self, user: str) -> URL:
        return self.server.url(DATABASE).set(username=user)

    def dsn(self, user: str) -> str:
        return libpq_url(self.url(user))

    def batch(self, problem: str) -> int:
        return min(b for b, p in self.planted.items() if problem in p)

    def bos(self, batch: int) -> str:
        with self.owner() as conn:
            return str(conn.execute("SELECT bos_batch_id FROM cj_batch_uploads WHERE id = %s",
                                    (batch,)).fetchone()[0])  # type: ignore[index]

    def event_id(self) -> str:
        with self.owner() as conn:
            return str(conn.execute("SELECT id FROM event_outbox WHERE published_at IS NULL"
                                    " ORDER BY retry_count DESC LIMIT 1").fetchone()[0])  # type: ignore[index]

    def owner(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn("cj_owner"), autocommit=True)

    def substitutions(self, page: str) -> list[tuple[str, str]]:
        kind = next((k.label for k in PROBLEM_KINDS if k.alert == page),
                    PAGE_PROBLEM.get(page, "wedged"))
        batch = self.batch(kind)
        return [
            ("postgresql://cj_owner@cj-db/huleedu_cj_assessment", self.dsn("cj_owner")),
            ("postgresql://admin@cj-db/huleedu_cj_assessment", self.dsn("postgres")),
            ("postgresql://cj_health_ro:...@cj-db/huleedu_cj_assessment",
             self.dsn("cj_health_ro")),
            ("postgresql://alice@cj-db:5432/huleedu_cj_assessment", self.dsn("alice")),
            ("<owner DSN>", self.dsn("cj_owner")),
            ("<your login>", self.dsn("alice")),
            ("/etc/cj-health-exporter.yml", str(self.config)),
            ("http://<exporter-host>:<port>", f"http://{self.listen}"),
            ("<cj_batch_id>", str(batch)),
            ("<bos_batch_id>", self.bos(batch)),
            ("<event id>", self.event_id()),
            ("<ticket>", "TICKET-1"),
        ]


def code_blocks(doc: Path) -> Iterator[tuple[int, str, str]]:
    """(line, language, body) of every fenced block, the body dedented."""
    lines = doc.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start, body = len(m.group(1)), m.group(2), i + 1, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        i += 1
        yield start, lang, "\n".join(body)


def shell_commands(body: str) -> Iterator[str]:
    """Logical commands: continuation lines, open quotes and `| ...` lines joined."""
    pending: list[str] = []
    lines = body.splitlines()
    for n, line in enumerate(lines):
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending.append(line)
        joined = "\n".join(pending)
        nxt = next((x for x in lines[n + 1:] if x.strip()), "")
        try:
            shlex.split(joined, comments=True)
            complete = True
        except ValueError:  # an open quote
            complete = False
        if complete and not joined.rstrip().endswith("\\") and not nxt.lstrip().startswith("|"):
            yield joined
            pending = []
    assert not pending, f"unfinished command: {pending}"


def sql_statements(body: str) -> Iterator[str]:
    cleaned = "\n".join(line for line in body.splitlines()
                        if not line.strip().startswith("--"))
    for statement in re.split(r";\s*(?:--[^\n]*)?\n", cleaned + "\n"):
        statement = statement.strip()
        if statement and statement.upper() not in ("BEGIN", "COMMIT"):
            yield statement


def substitute(text_: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        text_ = text_.replace(old, new)
    return text_


@pytest.fixture(scope="module")
def walk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walk]:
    assert ALEMBIC_SCHEMA.is_file(), f"the upstream schema dump is missing: {ALEMBIC_SCHEMA}"
    folder = tmp_path_factory.mktemp("wheel-walk")
    wheel = build_wheel(folder / "dist")
    venv = fresh_venv(folder)
    venv.pip_install(f"{wheel}[remediation,demo]")
    runtime_dir_env()
    pg = EmbeddedPostgres()
    try:
        admin = create_engine(pg.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("CREATE ROLE cj_owner LOGIN NOCREATEROLE"))  # the CJ service's
            conn.execute(text("CREATE ROLE alice LOGIN"))  # a person on call
            conn.execute(text(f"CREATE DATABASE {DATABASE} OWNER cj_owner"))
        admin.dispose()
        owner = create_engine(pg.url(DATABASE).set(username="cj_owner"))
        with owner.begin() as conn:
            sqlfiles.run_script(conn, ALEMBIC_SCHEMA.read_text())
            planted = scenarios.seed_demo(conn)
        owner.dispose()
        config = folder / "cj-health-exporter.yml"
        w = Walk(venv, pg, wheel, config, planted, f"127.0.0.1:{free_port()}")
        config.write_text(
            f"dsn: {w.dsn('cj_health_ro')}\nremediation:\n  enabled: true\n"
            f"  write_dsn: {w.dsn('cj_health_remediator')}\n"
            "  actions: [backfill_anchors, refinalize]\n  dry_run: false\n")
        w.env = venv.env(CJ_HEALTH_LISTEN_ADDRESS=w.listen)
        yield w
        if w.serve is not None and w.serve.poll() is None:
            w.serve.send_signal(signal.SIGTERM)
            w.serve.wait(10)
    finally:
        pg.close()


def test_the_wheel_carries_what_operators_deploy(walk: Walk) -> None:
    files = wheel_files(walk.wheel)
    for json_file in sorted((ROOT / "dashboards").glob("*.json")):
        assert f"exporter/assets/dashboards/{json_file.name}" in files, json_file.name
    for name in ("exporter/assets/alerts/cj-batch-health.rules.yml",
                 "exporter/assets/alerts/alertmanager.example.yml", "exporter/sql/roles.sql"):
        assert name in files, name
    listing = walk.venv.run(["cj-health-exporter", "assets"], env=walk.env)
    assert listing.returncode == 0, listing.stderr
    assert str(walk.venv.root) in listing.stdout and str(ROOT) not in listing.stdout
    out = walk.venv.home / "assets"
    written = walk.venv.run(["cj-health-exporter", "assets", "--write", str(out)], env=walk.env)
    assert written.returncode == 0, written.stderr
    rules = out / "alerts" / "cj-batch-health.rules.yml"
    assert rules.read_bytes() == (ROOT / "alerts" / "cj-batch-health.rules.yml").read_bytes()
    assert (out / "sql" / "roles.sql").is_file() and (out / "dashboards" / "batch.json").is_file()
    version = walk.venv.run(["cj-health-exporter", "--version"], env=walk.env)
    assert re.fullmatch(r"cj-health-exporter \d+\.\d+\.\d+\S* \(python 3\.\d+\.\d+\)\n",
                        version.stdout), version.stdout


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_and_statement_works_under_its_role(walk: Walk, doc: Path) -> None:
    page = doc.stem
    pairs = walk.substitutions(page)
    for line, lang, body in code_blocks(doc):
        where = f"{doc.relative_to(ROOT)}:{line}"
        if lang == "sh":
            for command in shell_commands(body):
                run_command(walk, substitute(command, pairs), command, where)
        elif lang == "sql":
            run_sql(walk, substitute(body, pairs), where)


def test_every_skip_rule_is_still_needed(walk: Walk) -> None:
    assert walk.ran, "the walk ran nothing"
    assert set(SKIPPED) == walk.used_skips, set(SKIPPED) - walk.used_skips


def test_the_readme_names_the_demo_batches_by_their_real_ids(walk: Walk) -> None:
    """README: the demo's wedged batch is 7, planted like Batch 20; 8 is stuck in SCORING."""
    planted = walk.planted
    assert "wedged" in planted[7] and "anchor_mismatch" in planted[7]
    assert "stuck_scoring" in planted[8]
    readme = (ROOT / "README.md").read_text()
    assert "its wedged batch is cj_batch_id **7**" in readme and "**8** is stuck" in readme


# ---- running one command ----------------------------------------------------------------------

def run_command(walk: Walk, command: str, original: str, where: str) -> None:
    for pattern in SKIPPED:
        if re.search(pattern, original):
            walk.used_skips.add(pattern)
            return
    walk.ran.append(original)
    assign = re.fullmatch(r"export (\w+)='?([^'\s]+)'?\s*(#.*)?", command.strip())
    if assign:
        walk.env[assign.group(1)] = assign.group(2)
        return
    if re.search(r"\bcj-health-exporter demo\b", command):
        return run_demo(walk, command, where)
    if re.search(r"\bcj-health-exporter serve\b", command):
        return start_serve(walk, command, where)
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True,
                            text=True, timeout=180, env=walk.env, cwd=walk.venv.home,
                            stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{where}: `{original}` exited {result.returncode}:\n{output}"
    assert "Traceback" not in output, f"{where}: `{original}`:\n{output}"
    if "| jq" in command and "inspect" in command:
        check_jq_keys(walk, command, where)


def check_jq_keys(walk: Walk, command: str, where: str) -> None:
    """jq prints null for a key that does not exist: every key the page picks must exist."""
    keys = re.search(r"\{([^}]*)\}", command.split("| jq", 1)[1])
    batch = re.search(r"inspect (\S+)", command)
    assert keys and batch, command
    key = batch.group(1)
    if key not in walk.inspected:  # one inspect per batch: the walk runs ~60 commands already
        result = walk.venv.run(["cj-health-exporter", "inspect", key, "--json"], env=walk.env)
        walk.inspected[key] = set(json.loads(result.stdout)[0])
    have = walk.inspected[key]
    wanted = {k.strip() for k in keys.group(1).replace("\n", " ").split(",")}
    assert wanted <= have, f"{where}: jq picks keys inspect --json lacks: {wanted - have}"


def start_serve(walk: Walk, command: str, where: str) -> None:
    """`NAME=value ... cj-health-exporter serve`: runs until the end of the walk."""
    assert walk.serve is None, f"{where}: a second serve"
    words = shlex.split(command, comments=True)
    env = dict(walk.env)
    while "=" in words[0] and not words[0].startswith("-"):
        name, _, value = words.pop(0).partition("=")
        env[name] = value
    walk.serve_log = walk.venv.home / "serve.log"
    with walk.serve_log.open("wb") as log:
        walk.serve = subprocess.Popen(words, stdout=log, stderr=subprocess.STDOUT, env=env,
                                      cwd=walk.venv.home)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert walk.serve.poll() is None, f"{where}: serve exited:\n{walk.serve_log.read_text()}"
        try:
            body = http_get(f"http://{walk.listen}/metrics", timeout=2)[2]
            if metric(body, "cj_health_up") == 1:
                assert b'problem="wedged"' in body  # the upstream schema, polled as ro
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{where}: serve never polled:\n{walk.serve_log.read_text()}")


def run_demo(walk: Walk, command: str, where: str) -> None:
    """`demo --remediation` from the wheel: the listing names 7 and 8, and both heal."""
    port = free_port()
    argv = [*shlex.split(command, comments=True), "--web.listen-address", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=walk.env, cwd=walk.venv.home)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        out = "".join(lines)
        assert re.search(r"^\s+7: .*wedged", out, re.M) and re.search(
            r"^\s+8: .*stuck_scoring", out, re.M), f"{where}: {out}"
        deadline = time.monotonic() + 60
        body = b""
        while time.monotonic() < deadline:
            body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=2)[2]
            healed = (b'cj_batch_problem{cj_batch_id="7"' not in body
                      and b'cj_batch_problem{cj_batch_id="8"' not in body)
            if healed and metric(body, "cj_health_up") == 1:
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"{where}: 7 and 8 were not healed:\n{body.decode()[-2000:]}")
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, rest
    assert "Traceback" not in out + rest


def run_sql(walk: Walk, body: str, where: str) -> None:
    as_owner = body.lstrip().startswith(OWNER_MARK)
    writes = re.search(r"\b(UPDATE|INSERT|DELETE)\b", body, re.I)
    assert as_owner or not writes, f"{where}: SQL that writes must name its role ({OWNER_MARK})"
    user = "cj_owner" if as_owner else "alice"
    for statement in sql_statements(body):
        walk.ran.append(statement)
        with psycopg.connect(walk.dsn(user)) as conn:
            conn.read_only = not as_owner
            try:
                conn.execute(statement)
            except psycopg.Error as exc:
                raise AssertionError(f"{where}: as {user}: {exc}\n{statement}") from None
            finally:
                conn.rollback()  # prove the grant and the syntax; change nothing


def test_serve_from_the_wheel_stops_cleanly(walk: Walk) -> None:
    assert walk.serve is not None, "README's serve command did not run"
    walk.serve.send_signal(signal.SIGTERM)
    assert walk.serve.wait(10) == 0
    assert walk.serve_log is not None
    log = walk.serve_log.read_text()
    # The one warning expected: the demo plants a batch whose essay metadata holds a NUL,
    # which the poll reports (rate-limited) as unreadable JSON. Nothing else may warn.
    warnings = [line for line in log.splitlines() if "level=warning" in line]
    unexpected = [w for w in warnings if "JSON documents PostgreSQL cannot read" not in w
                  and "batches with unreadable JSON documents" not in w]
    assert "Traceback" not in log and not unexpected, log


def test_a_missing_extra_is_one_line_naming_it(walk: Walk) -> None:
    """Last, because it takes the extras' packages out again (cheaper than a second venv)."""
    result = walk.venv.run([str(walk.venv.bin / "pip"), "uninstall", "-q", "-y", "choix",
                            "pgserver"], env={**walk.env, "PIP_NO_INPUT": "1"})
    assert result.returncode == 0, result.stderr
    for command, extra in (("demo", "demo"),
                           ("remediate --dsn postgresql://u@h/d --resume", "remediation")):
        result = walk.venv.run(["cj-health-exporter", *command.split()], env=walk.env)
        assert result.returncode == 2, result.stdout + result.stderr
        line, = result.stderr.strip().splitlines()
        assert f"needs the [{extra}] extra" in line and "Traceback" not in result.stderr
        assert f"pip install 'cj-health-exporter[{extra}]'" in line
