"""The Helm chart (deploy/helm/cj-health-exporter), checked by the real implementations:

* Helm's own Go SDK (PyPI helm-python-sdk) lints and renders it with default and full values and
  enforces values.schema.json;
* `kubernetes-validate --strict` checks every core object against the Kubernetes OpenAPI schemas
  of the oldest Kubernetes the chart supports and the newest the tool knows;
* the ServiceMonitor, PodMonitor and PrometheusRule are validated by the JSON schemas of the npm
  package @kubernetes-models/prometheus-operator (generated from the operator's API types) and
  compiled by `tsc --strict` against the same package's TypeScript interfaces (unknown fields);
* the PrometheusRule is the generated rule pack, and passes `promtool check rules` and the pack's
  own promtool unit tests with the chart's job and namespace labels.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import k8s
from tests.support.process import load_module

ROOT = k8s.ROOT
ALERT_TESTS = ROOT / "alerts" / "tests"
KUBE_VERSIONS = ("1.25.0", "1.37.0")  # Chart.yaml kubeVersion >=1.25; the newest the tool has

sync = load_module("cj_helm_sync", ROOT / "deploy" / "helm" / "sync.py")

BCRYPT = "$2b$10$" + "a" * 53  # shape only: rendering never checks a hash
FULL: dict[str, Any] = {
    "replicas": 2,
    "image": {"repository": "registry.example/cj-health-exporter", "tag": "0.1.0"},
    "database": {"existingSecret": "cj-ro-dsn", "secretKey": "url"},
    "remediation": {
        "enabled": True, "actions": ["backfill_anchors", "refinalize"], "dry_run": False,
        "writeDsn": {"existingSecret": "cj-rw-dsn", "secretKey": "url"},
    },
    "config": {"poll_interval_seconds": 30, "log_level": "warning"},
    "webConfig": {
        "config": {
            "tls_server_config": {"cert_file": "/etc/cj-health-exporter/tls/tls.crt",
                                  "key_file": "/etc/cj-health-exporter/tls/tls.key",
                                  "min_version": "TLS13"},
            "basic_auth_users": {"prometheus": BCRYPT, "probe": BCRYPT},
        },
        "tlsSecret": "cj-health-exporter-tls",
    },
    "probes": {"credentials": {"existingSecret": "cj-probe", "secretKey": "credentials"}},
    "kubePrometheusStack": {"release": "kube-prometheus-stack"},
    "serviceMonitor": {
        "enabled": True,
        "tlsConfig": {"ca": {"secret": {"name": "cj-health-exporter-tls", "key": "ca.crt"}},
                      "serverName": "cj-health-exporter.cj.svc"},
        "basicAuth": {"username": {"name": "cj-scrape", "key": "username"},
                      "password": {"name": "cj-scrape", "key": "password"}},
    },
    "prometheusRule": {"enabled": True, "extraSelector": 'cluster="eu-1"',
                       "grafanaUrl": "https://grafana.example"},
    "dashboards": {"enabled": True, "annotations": {"grafana_folder": "CJ"}},
    "networkPolicy": {"enabled": True, "databaseTo": [{"ipBlock": {"cidr": "10.0.12.0/24"}}]},
    "podAnnotations": {"example.com/team": "cj"},
}


def with_values(**changes: Any) -> dict[str, Any]:
    values = copy.deepcopy(FULL)
    values.update(changes)
    return values


def pod_monitor_values() -> dict[str, Any]:
    values = with_values()
    values["podMonitor"] = {**values.pop("serviceMonitor"), "enabled": True}
    return values


# --- files, lint, values schema -------------------------------------------------------------


def test_chart_files_are_the_generated_rule_pack_and_the_committed_dashboards() -> None:
    assert sync.main(["--check"]) == 0, "run `python deploy/helm/sync.py` and commit"
    boards = sorted(p.name for p in (k8s.CHART / "files" / "dashboards").glob("*.json"))
    assert boards == sorted(p.name for p in (ROOT / "dashboards").glob("*.json"))


def test_sync_check_fails_on_a_stale_copy(tmp_path: Path) -> None:
    copy_ = k8s.CHART / "files" / "dashboards" / "batch.json"
    saved = copy_.read_bytes()
    try:
        copy_.write_bytes(saved.replace(b'"version": 1', b'"version": 2'))
        assert sync.main(["--check"]) == 1
    finally:
        copy_.write_bytes(saved)


@pytest.mark.parametrize("values", [{}, FULL, pod_monitor_values()],
                         ids=["default", "full", "podmonitor"])
def test_helm_lint_is_clean(values: dict[str, Any]) -> None:
    report = k8s.helm().lint(str(k8s.CHART), values, strict=True, namespace="cj")
    assert report["errors"] == [], report
    # severity 1 is info ("icon is recommended"); 2 warning, 3 error
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize(("values", "message"), [
    ({"replicas": 0}, "/replicas"),
    ({"replica": 2}, "additional properties 'replica' not allowed"),
    ({"config": {"poll_interval": 15}}, "additional properties 'poll_interval' not allowed"),
    ({"config": {"log_level": "verbose"}}, "/config/log_level"),
    ({"remediation": {"enabled": True, "actions": [], "dry_run": True,
                      "writeDsn": {"existingSecret": "w", "secretKey": "dsn", "dsn": ""}}},
     "/remediation/actions"),
    ({"remediation": {"enabled": True, "actions": ["delete_everything"], "dry_run": True,
                      "writeDsn": {"existingSecret": "w", "secretKey": "dsn", "dsn": ""}}},
     "/remediation/actions/0"),
    ({"database": {"existingSecret": "", "secretKey": "dsn", "dsn": "mysql://x"}},
     "/database/dsn"),
    ({"webConfig": {"existingSecret": "", "config": {"basic_auth_users": {"p": "plaintext"}},
                    "tlsSecret": "", "tls": False, "authenticated": False}},
     "/webConfig/config/basic_auth_users/p"),
    ({"serviceMonitor": {"enabled": True, "interval": "30 seconds", "scrapeTimeout": "10s"}},
     "/serviceMonitor/interval"),
    ({"serviceMonitor": {"enabled": True, "interval": "30s", "scrapeTimeout": "10s"},
      "podMonitor": {"enabled": True, "interval": "30s", "scrapeTimeout": "10s"}}, "not"),
    ({"probes": {"type": "auto"}}, "/probes/type"),
    ({"probes": {"credentials": {"existingSecret": "", "secretKey": "credentials",
                                 "value": "no-colon"}}}, "/probes/credentials/value"),
    ({"probes": {"liveness": {"periodSeconds": 15, "timeoutSeconds": 1,
                              "failureThreshold": 4}}}, "/probes/liveness/timeoutSeconds"),
])
def test_values_schema_rejects_bad_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(k8s.helm().HelmValuesError, match=re.escape(message)):
        k8s.render(values)


@pytest.mark.parametrize(("values", "message"), [
    ({"database": {"existingSecret": "a", "secretKey": "dsn", "dsn": "postgresql://x@y/z"}},
     "database: give existingSecret or dsn, not both"),
    ({"prometheusRule": {"enabled": True, "namespaceSelector": True, "extraSelector": "",
                         "grafanaUrl": "http://g", "runbookUrlBase": "http://r/"}}, None),
    ({"webConfig": {"config": {"basic_auth_users": {"prometheus": BCRYPT}}}},
     "probes: the web config asks for basic auth: give the probe its own user"),
    ({"webConfig": {"config": {"basic_auth_users": {"prometheus": BCRYPT}}},
      "probes": {"credentials": {"value": "probe:pw"}}},
     'the probe user "probe" has no entry in webConfig.config.basic_auth_users'),
    ({"webConfig": {"config": {"basic_auth_users": {"probe": BCRYPT}}},
      "probes": {"credentials": {"value": "probe:pw"}}}, None),
    ({"probes": {"credentials": {"existingSecret": "p", "value": "probe:pw"}}},
     "probes.credentials: give existingSecret or value, not both"),
    ({"webConfig": {"config": {"tls_server_config": {
        "cert_file": "a", "key_file": "b", "client_auth_type": "RequireAndVerifyClientCert",
        "client_ca_file": "c"}}}}, "probes: the web config requires client certificates"),
    ({"webConfig": {"existingSecret": "web", "authenticated": True},
      "probes": {"type": "http"}}, "probes.type http: the metrics port needs credentials"),
])
def test_template_guards(values: dict[str, Any], message: str | None) -> None:
    if message is None:
        assert k8s.objects(values)
        return
    with pytest.raises(k8s.helm().HelmRenderError, match=re.escape(message)):
        k8s.render(values)


def test_render_time_and_object_counts() -> None:
    start = time.perf_counter()
    default = k8s.objects({})
    full = k8s.objects(FULL)
    took = time.perf_counter() - start
    kinds = sorted(o["kind"] for o in full)
    print(f"\nrendered default ({len(default)} objects) and full ({len(full)} objects) values "
          f"in {took * 1000:.0f} ms: {kinds}")
    assert sorted(o["kind"] for o in default) == [
        "ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    assert kinds == sorted(["ConfigMap", "ConfigMap", "ConfigMap", "Deployment", "NetworkPolicy",
                            "PodDisruptionBudget", "PrometheusRule", "Secret", "Service",
                            "ServiceAccount", "ServiceMonitor"])


# --- core objects: kubernetes-validate --strict ---------------------------------------------


def kubernetes_validate() -> str:
    path = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent /
                                                      "kubernetes-validate")
    assert Path(path).exists(), "kubernetes-validate is required (pip install -e '.[test]')"
    return path


def validate_core(objs: list[dict[str, Any]], folder: Path, version: str
                  ) -> subprocess.CompletedProcess[str]:
    files = []
    for index, obj in enumerate(objs):
        path = folder / f"{index:02d}-{obj['kind']}.yaml"
        path.write_text(yaml.safe_dump(obj), encoding="utf-8")
        files.append(str(path))
    return subprocess.run([kubernetes_validate(), "--strict", "-k", version, *files],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_core_objects_pass_kubernetes_validate_strict(tmp_path: Path, version: str) -> None:
    checked = 0
    for name, values in (("default", {}), ("full", FULL), ("podmonitor", pod_monitor_values()),
                         ("evaluation", {"database": {"dsn": "postgresql://ro@db/cj"}})):
        core = [o for o in k8s.objects(values) if o["kind"] in k8s.CORE_KINDS]
        assert core and {o["kind"] for o in k8s.objects(values)} - k8s.CORE_KINDS <= \
            k8s.OPERATOR_KINDS
        folder = tmp_path / name
        folder.mkdir()
        result = validate_core(core, folder, version)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count(" passed for resource ") == len(core), result.stdout
        checked += len(core)
    print(f"\nkubernetes-validate --strict -k {version}: {checked} objects passed")


def test_kubernetes_validate_catches_a_typo_and_a_wrong_type(tmp_path: Path) -> None:
    deployment = k8s.one(k8s.objects({}), "Deployment")
    typo = copy.deepcopy(deployment)
    container = typo["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFileSystem"] = True  # capital S: not a field
    wrong = copy.deepcopy(deployment)
    wrong["spec"]["replicas"] = "two"
    for name, obj in (("typo", typo), ("wrong", wrong)):
        (tmp_path / name).mkdir()
        result = validate_core([obj], tmp_path / name, KUBE_VERSIONS[-1])
        assert result.returncode != 0, (name, result.stdout)


# --- prometheus-operator objects ------------------------------------------------------------


def operator_objects() -> list[dict[str, Any]]:
    objs = [o for o in k8s.objects(FULL) if o["kind"] in k8s.OPERATOR_KINDS]
    objs += [o for o in k8s.objects(pod_monitor_values()) if o["kind"] == "PodMonitor"]
    assert sorted(o["kind"] for o in objs) == ["PodMonitor", "PrometheusRule", "ServiceMonitor"]
    return objs


def test_operator_objects_pass_the_prometheus_operator_schemas() -> None:
    objs = operator_objects()
    result = k8s.check_crds(objs)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("valid ") == len(objs), result.stdout
    print(f"\n{result.stdout.strip()}")


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda o: o["spec"]["endpoints"][0].update(scheme="ftp"), "scheme"),
    (lambda o: o["spec"]["endpoints"][0].update(interval="30 seconds"), "interval"),
    (lambda o: o["spec"]["endpoints"][0].update(port=10124), "port must be string"),
    (lambda o: o["spec"].pop("selector"), "selector"),
], ids=["scheme", "interval", "port-number", "no-selector"])
def test_the_operator_schemas_reject_an_invalid_service_monitor(mutate: Any,
                                                                expected: str) -> None:
    monitor = copy.deepcopy(k8s.one(k8s.objects(FULL), "ServiceMonitor"))
    mutate(monitor)
    result = k8s.check_crds([monitor])
    assert result.returncode == 1 and expected in result.stdout, result.stdout + result.stderr


def test_the_operator_schemas_reject_an_invalid_rule() -> None:
    rule = copy.deepcopy(k8s.one(k8s.objects(FULL), "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][-1]["for"] = "ten minutes"
    result = k8s.check_crds([rule])
    assert result.returncode == 1 and "/for" in result.stdout, result.stdout


OPERATOR_TYPES = {
    "ServiceMonitor": "IServiceMonitor",
    "PodMonitor": "IPodMonitor",
    "PrometheusRule": "IPrometheusRule",
}


def operator_ts(objs: list[dict[str, Any]]) -> dict[str, str]:
    lines = [f'import type {{ {iface} }} from "@kubernetes-models/prometheus-operator/'
             f'monitoring.coreos.com/v1/{kind}";' for kind, iface in OPERATOR_TYPES.items()]
    for index, obj in enumerate(objs):
        lines.append(f"export const object{index}: {OPERATOR_TYPES[obj['kind']]} = "
                     f"{k8s.ts_literal(obj)};")
    return {"operator.ts": "\n".join(lines) + "\n"}


def test_operator_objects_have_no_unknown_fields_for_tsc() -> None:
    diagnostics = k8s.tsc(operator_ts(operator_objects()))
    assert diagnostics == []


def test_tsc_catches_an_unknown_service_monitor_field() -> None:
    monitor = copy.deepcopy(k8s.one(k8s.objects(FULL), "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    diagnostics = k8s.tsc(operator_ts([monitor]))
    assert any("'\"intervall\"' does not exist" in d for d in diagnostics), diagnostics


# --- the job label: what the monitors produce is what the rules select ----------------------


@pytest.mark.parametrize("values", [FULL, pod_monitor_values(),
                                    with_values(nameOverride="cj-exporter-eu")],
                         ids=["servicemonitor", "podmonitor", "name-override"])
def test_rules_select_the_job_the_monitor_produces(values: dict[str, Any]) -> None:
    objs = k8s.objects(values, name="prod")
    monitor = next(o for o in objs if o["kind"] in ("ServiceMonitor", "PodMonitor"))
    job = k8s.operator_job(monitor, objs)
    rule = k8s.one(objs, "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    jobs = set(re.findall(r'\bjob="([^"]*)"', "\n".join(exprs)))
    assert jobs == {job}, (job, jobs)
    assert all('namespace="cj"' in m for m in re.findall(r"\{[^}]*job=[^}]*\}", "\n".join(exprs)))


def test_without_job_label_the_default_service_monitor_job_would_not_match() -> None:
    """The measured bug of issue 14: a default ServiceMonitor's job is the Service's name."""
    objs = k8s.objects(FULL, name="prod")
    monitor = copy.deepcopy(k8s.one(objs, "ServiceMonitor"))
    monitor["spec"].pop("jobLabel")
    assert k8s.operator_job(monitor, objs) == "prod-cj-health-exporter"
    assert k8s.operator_job(k8s.one(objs, "ServiceMonitor"), objs) == "cj-health-exporter"


# --- the PrometheusRule is the generated pack ------------------------------------------------


@pytest.mark.parametrize(("values", "namespace", "job", "extra"), [
    ({"prometheusRule": {"enabled": True, "namespaceSelector": False, "extraSelector": "",
                         "grafanaUrl": "http://localhost:3000",
                         "runbookUrlBase": "https://github.com/cj-health-exporter/"
                         "cj-health-exporter/blob/main/docs/runbooks/"}},
     "cj", "cj-health-exporter", ""),
    (FULL, "cj", "cj-health-exporter", 'namespace="cj", cluster="eu-1"'),
    (with_values(nameOverride="cj-exporter-eu",
                 prometheusRule={**FULL["prometheusRule"], "extraSelector":
                                 'cluster=~"eu-.*", env!="dev"',
                                 "runbookUrlBase": "https://wiki.example/runbooks/"}),
     "cj-prod", "cj-exporter-eu", 'namespace="cj-prod", cluster=~"eu-.*", env!="dev"'),
], ids=["no-selectors", "full", "override"])
def test_prometheus_rule_is_the_generated_rule_pack(values: dict[str, Any], namespace: str,
                                                    job: str, extra: str) -> None:
    rule = k8s.one(k8s.objects(values, namespace=namespace), "PrometheusRule")
    pr = {**FULL["prometheusRule"], **values.get("prometheusRule", {})}
    expected = sync.pack(job, extra, pr.get("grafanaUrl"), pr.get("runbookUrlBase"))
    assert rule["spec"] == expected
    labels = rule["metadata"]["labels"]
    if values is not FULL:
        return
    assert labels["release"] == "kube-prometheus-stack"


def test_default_prometheus_rule_equals_the_committed_pack_plus_the_namespace() -> None:
    rule = k8s.one(k8s.objects({"prometheusRule": {**FULL["prometheusRule"],
                                                    "extraSelector": "",
                                                    "grafanaUrl": "http://localhost:3000"}},
                               namespace="monitoring"), "PrometheusRule")
    committed = yaml.safe_load((ROOT / "alerts" / "cj-batch-health.rules.yml").read_text())
    text = json.dumps(committed).replace('job=\\"cj-health-exporter\\"',
                                         'job=\\"cj-health-exporter\\", namespace=\\"monitoring\\"')
    assert rule["spec"] == json.loads(text)


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "`promtool` is required: .ci/test.sh installs the Debian package prometheus"
    return path


@pytest.mark.parametrize(("values", "namespace", "extra_labels"), [
    (FULL, "cj", {"namespace": "cj", "cluster": "eu-1"}),
    (with_values(nameOverride="cj-exporter-eu",
                 prometheusRule={**FULL["prometheusRule"], "extraSelector": ""}),
     "cj-prod", {"namespace": "cj-prod"}),
], ids=["full", "name-override"])
def test_rendered_rules_pass_promtool_and_the_alert_unit_tests(
        tmp_path: Path, values: dict[str, Any], namespace: str,
        extra_labels: dict[str, str]) -> None:
    objs = k8s.objects(values, name="prod", namespace=namespace)
    monitor = k8s.one(objs, "ServiceMonitor")
    job = k8s.operator_job(monitor, objs)  # the job the scraped series will carry
    rule = k8s.one(objs, "PrometheusRule")
    rules_file = tmp_path / "chart-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
    check = subprocess.run([promtool(), "check", "rules", str(rules_file)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    committed = yaml.safe_load((ROOT / "alerts" / "cj-batch-health.rules.yml").read_text())
    count = sum(len(group["rules"]) for group in committed["groups"])
    assert f"SUCCESS: {count} rules found" in check.stdout, check.stdout
    tests = k8s.retarget_unit_tests(ALERT_TESTS, tmp_path, rules_file, job=job,
                                    extra_labels=extra_labels,
                                    grafana_url=values["prometheusRule"]["grafanaUrl"])
    assert len(tests) == len(list(ALERT_TESTS.glob("*.test.yml"))) >= 6
    result = subprocess.run([promtool(), "test", "rules", *map(str, tests)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(tests), result.stdout


def test_the_unit_tests_fail_with_the_job_a_default_service_monitor_gives(tmp_path: Path) -> None:
    """Mutation: series carrying the Service name as job (no jobLabel) match no rule."""
    objs = k8s.objects(FULL, name="prod")
    rule = k8s.one(objs, "PrometheusRule")
    rules_file = tmp_path / "chart-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
    tests = k8s.retarget_unit_tests(ALERT_TESTS, tmp_path, rules_file,
                                    job="prod-cj-health-exporter",
                                    extra_labels={"namespace": "cj", "cluster": "eu-1"},
                                    grafana_url=FULL["prometheusRule"]["grafanaUrl"])
    result = subprocess.run([promtool(), "test", "rules", *map(str, tests)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "CJHealthExporterDown" in result.stdout + result.stderr


# --- Deployment: two replicas with remediation, Secret mounts, probes ------------------------


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def mounted_file(deployment: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The volume and the key behind a file path in the container."""
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container(deployment)["volumeMounts"]:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            volume = volumes[mount["name"]]
            rest = path[len(prefix):]
            items = volume.get("secret", volume.get("configMap", {})).get("items")
            if items:
                keys = [i["key"] for i in items if i["path"] == rest]
                assert len(keys) == 1, (path, items)
                return volume, keys[0]
            return volume, rest
    raise AssertionError(f"{path} is on no volume")


def exporter_config(objs: list[dict[str, Any]]) -> dict[str, Any]:
    configmap = next(o for o in objs if o["kind"] == "ConfigMap" and "config.yml" in o["data"])
    data: dict[str, Any] = yaml.safe_load(configmap["data"]["config.yml"])
    return data


def test_two_replicas_with_remediation() -> None:
    objs = k8s.objects(FULL)
    deployment = k8s.one(objs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert k8s.one(objs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1

    # the read DSN: --dsn-file on the existing Secret's key, never in argv or env
    args = c["args"]
    assert args[0] == "serve"
    dsn_path = args[args.index("--dsn-file") + 1]
    volume, key = mounted_file(deployment, dsn_path)
    assert volume["secret"]["secretName"] == "cj-ro-dsn" and key == "url"
    assert volume["secret"]["defaultMode"] == 0o440
    assert not any("postgres" in a for a in args)
    # the settings file, and in it the remediation with the write DSN file
    config_path = args[args.index("--config") + 1]
    volume, key = mounted_file(deployment, config_path)
    assert "configMap" in volume and key == "config.yml"
    settings = exporter_config(objs)
    remediation = settings["remediation"]
    assert remediation["enabled"] is True and remediation["dry_run"] is False
    assert remediation["actions"] == ["backfill_anchors", "refinalize"]
    volume, key = mounted_file(deployment, remediation["write_dsn_file"])
    assert volume["secret"]["secretName"] == "cj-rw-dsn" and key == "url"
    assert volume["secret"]["defaultMode"] == 0o440
    volume, key = mounted_file(deployment, settings["web_config_file"])
    assert volume["secret"]["secretName"] == "cj-cj-health-exporter-web-config"
    assert key == "web-config.yml"
    volume, _ = mounted_file(deployment, FULL["webConfig"]["config"]["tls_server_config"]
                             ["cert_file"])
    assert volume["secret"]["secretName"] == "cj-health-exporter-tls"
    assert all(m.get("readOnly") for m in c["volumeMounts"] if m["name"] != "tmp")
    env = {e["name"]: e for e in c.get("env", [])}
    assert env["CJ_HEALTH_REMEDIATION_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.name"
    assert "CJ_HEALTH_DSN" not in env and "CJ_HEALTH_REMEDIATION_WRITE_DSN" not in env
    assert not any("postgres" in str(e.get("value", "")) for e in env.values())
    # the chart made no Secret of the DSNs it was given by reference
    assert [s["metadata"]["name"] for s in k8s.by_kind(objs, "Secret")] == [
        "cj-cj-health-exporter-web-config"]

    # hardened pod
    assert pod["enableServiceLinks"] is False and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001 == pod["securityContext"]["fsGroup"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]

    # TLS + basic auth: the probes run the healthcheck, which reads the settings file serve
    # reads; the probe user's credentials are a file of the existing Secret named there
    for probe in ("livenessProbe", "readinessProbe"):
        command = c[probe]["exec"]["command"]
        assert command[:2] == ["cj-health-exporter", "healthcheck"], command
        assert ("--ready" in command) is (probe == "readinessProbe")
        assert command[command.index("--config") + 1] == config_path
        assert "httpGet" not in c[probe] and "tcpSocket" not in c[probe]
    volume, key = mounted_file(deployment, settings["healthcheck"]["credentials_file"])
    assert volume["secret"]["secretName"] == "cj-probe" and key == "credentials"
    assert volume["secret"]["defaultMode"] == 0o440
    assert [p["name"] for p in c["ports"]] == ["metrics"]


def test_the_exporter_accepts_the_rendered_settings(tmp_path: Path) -> None:
    """The rendered config.yml, the DSN files and the web config laid out as the pod's volumes
    lay them out (under tmp_path instead of /), loaded by the exporter's own config parser."""
    from exporter import config as exporter_config_module

    values = with_values(database={"existingSecret": "", "secretKey": "dsn",
                                   "dsn": "postgresql://cj_health_ro:pw@db/cj"})
    values["remediation"] = {**FULL["remediation"],
                             "writeDsn": {"existingSecret": "", "secretKey": "dsn",
                                          "dsn": "postgresql://cj_health_remediator:pw@db/cj"}}
    values["webConfig"] = {"config": {"basic_auth_users": {
        "prometheus": "$2b$10$3euPcmQFCiblsZeEu5s7p.9OVHgeHWFDk9nhMqZ0m/3pd/lhwZgES"}}}
    objs = k8s.objects(values)
    layout_pod(objs, tmp_path)
    deployment = k8s.one(objs, "Deployment")
    args = container(deployment)["args"]
    config_file = tmp_path / args[args.index("--config") + 1].lstrip("/")
    text = config_file.read_text().replace("/etc/cj-health-exporter/",
                                           f"{tmp_path}/etc/cj-health-exporter/")
    config_file.write_text(text)
    dsn_file = str(tmp_path / args[args.index("--dsn-file") + 1].lstrip("/"))
    settings = exporter_config_module.load(str(config_file), {}, {"dsn_file": dsn_file})
    assert settings.poll_interval_seconds == 30 and settings.log_level == "warning"
    assert settings.listen_address == ":10124"
    assert settings.remediation.enabled and not settings.remediation.dry_run
    read = exporter_config_module.resolve_dsn(settings.dsn, settings.dsn_file)
    write = exporter_config_module.resolve_dsn(None, settings.remediation.write_dsn_file,
                                               "remediation.write_dsn")
    assert read.username == "cj_health_ro" and write.username == "cj_health_remediator"


def layout_pod(objs: list[dict[str, Any]], root: Path) -> None:
    """Write every ConfigMap/Secret volume of the Deployment where the pod would see it."""
    deployment = k8s.one(objs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    sources = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    for mount in container(deployment)["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            obj, ref = sources[("ConfigMap", volume["configMap"]["name"])], volume["configMap"]
            data = obj["data"]
        elif "secret" in volume:
            key = ("Secret", volume["secret"]["secretName"])
            if key not in sources:
                continue  # an existing Secret the chart does not make
            obj, ref = sources[key], volume["secret"]
            data = obj["stringData"]
        else:
            continue
        items = ref.get("items") or [{"key": k, "path": k} for k in data]
        for item in items:
            target = root / mount["mountPath"].lstrip("/") / item["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[item["key"]], encoding="utf-8")


@pytest.mark.parametrize(("values", "ready", "handler"), [
    ({}, False, {"exec": {"command": [
        "cj-health-exporter", "healthcheck", "--config",
        "/etc/cj-health-exporter/config/config.yml", "--healthcheck.timeout", "2s"]}}),
    ({}, True, {"exec": {"command": [
        "cj-health-exporter", "healthcheck", "--ready", "--config",
        "/etc/cj-health-exporter/config/config.yml", "--healthcheck.timeout", "2s"]}}),
    ({"probes": {"readiness": {"periodSeconds": 10, "timeoutSeconds": 5,
                               "failureThreshold": 3}}}, True, {"exec": {"command": [
        "cj-health-exporter", "healthcheck", "--ready", "--config",
        "/etc/cj-health-exporter/config/config.yml", "--healthcheck.timeout", "4s"]}}),
    ({"probes": {"type": "http"}}, False,
     {"httpGet": {"path": "/healthz", "port": "metrics", "scheme": "HTTP"}}),
    ({"probes": {"type": "http"}, "webConfig": {"existingSecret": "web", "tls": True}}, True,
     {"httpGet": {"path": "/-/ready", "port": "metrics", "scheme": "HTTPS"}}),
    ({"probes": {"type": "tcp"}}, True, {"tcpSocket": {"port": "metrics"}}),
], ids=["exec-liveness", "exec-readiness", "exec-timeout", "http", "http-tls-ready", "tcp"])
def test_probe_handlers(values: dict[str, Any], ready: bool, handler: dict[str, Any]) -> None:
    c = container(k8s.one(k8s.objects(values), "Deployment"))
    probe = c["readinessProbe" if ready else "livenessProbe"]
    assert {k: v for k, v in probe.items() if k in ("httpGet", "tcpSocket", "exec")} == handler


def test_probe_credentials_from_a_value_and_a_client_certificate() -> None:
    values = with_values(probes={"credentials": {"existingSecret": "", "value": "probe:pw"},
                                 "clientCertSecret": "cj-probe-client"})
    objs = k8s.objects(values)
    deployment = k8s.one(objs, "Deployment")
    check = exporter_config(objs)["healthcheck"]
    volume, key = mounted_file(deployment, check["credentials_file"])
    secret = next(s for s in k8s.by_kind(objs, "Secret")
                  if s["metadata"]["name"] == volume["secret"]["secretName"])
    assert secret["stringData"][key] == "probe:pw"
    for file, wanted in ((check["cert_file"], "tls.crt"), (check["key_file"], "tls.key")):
        volume, key = mounted_file(deployment, file)
        assert volume["secret"]["secretName"] == "cj-probe-client" and key == wanted


# --- the other objects ----------------------------------------------------------------------


def test_service_monitor_scrapes_the_named_port_with_tls_and_basic_auth() -> None:
    objs = k8s.objects(FULL)
    service = k8s.one(objs, "Service")
    monitor = k8s.one(objs, "ServiceMonitor")
    assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["scheme"] == "https"
    assert endpoint["basicAuth"] == FULL["serviceMonitor"]["basicAuth"]
    assert endpoint["tlsConfig"] == FULL["serviceMonitor"]["tlsConfig"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"] == \
        k8s.one(objs, "Deployment")["spec"]["selector"]["matchLabels"]


def test_dashboards_are_config_maps_for_the_sidecar() -> None:
    values = with_values(dashboards={"enabled": True, "label": "cj_dashboard",
                                     "labelValue": "yes", "namespace": "grafana",
                                     "annotations": {"grafana_folder": "CJ"}})
    maps = [o for o in k8s.objects(values) if o["kind"] == "ConfigMap"
            and "config.yml" not in o["data"]]
    assert len(maps) == len(list((ROOT / "dashboards").glob("*.json"))) == 2
    for cm in maps:
        assert cm["metadata"]["labels"]["cj_dashboard"] == "yes"
        assert cm["metadata"]["namespace"] == "grafana"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "CJ"}
        (key, text), = cm["data"].items()
        board = json.loads(text)
        assert key == f"{board['uid']}.json"
        committed = {json.loads(p.read_text())["uid"]: p.read_text()
                     for p in (ROOT / "dashboards").glob("*.json")}
        assert text + "\n" == committed[board["uid"]]
    default = [o for o in k8s.objects(FULL) if o["kind"] == "ConfigMap"
               and "config.yml" not in o["data"]]
    assert all(o["metadata"]["labels"]["grafana_dashboard"] == "1" for o in default)


def test_network_policy_admits_prometheus_and_reaches_the_database_and_dns() -> None:
    policy = k8s.one(k8s.objects(FULL), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert ingress["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"}
    database, dns = policy["egress"]
    assert database == {"ports": [{"port": 5432, "protocol": "TCP"}],
                        "to": [{"ipBlock": {"cidr": "10.0.12.0/24"}}]}
    assert {p["port"] for p in dns["ports"]} == {53}


def test_notes_say_what_to_do_next() -> None:
    notes = k8s.render({})["cj-health-exporter/templates/NOTES.txt"]
    assert "kubectl -n cj create secret generic cj-cj-health-exporter-dsn" in notes
    assert 'job_name "cj-health-exporter"' in notes
    full = k8s.render(FULL)["cj-health-exporter/templates/NOTES.txt"]
    assert "Remediation is ENABLED and WRITES" in full
    assert "`healthcheck --ready` (readiness" in full and "the Secret cj-probe" in full
    assert "create secret" not in full


# --- the probes against the real exporter, with TLS and basic auth on -----------------------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "tls.crt", folder / "tls.key"
    folder.mkdir(parents=True, exist_ok=True)
    openssl = shutil.which("openssl")
    assert openssl, "`openssl` is required: .ci/test.sh installs it"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_the_rendered_exec_probes_against_the_exporter_with_tls_and_basic_auth(
        tmp_path: Path, cj_db: str) -> None:
    """The probes' exec.command and env exactly as rendered, run beside a real `serve` started
    with the rendered args and files (the pod's /etc tree under tmp_path), TLS and basic auth on:
    liveness and readiness pass once polling; readiness fails before the first good poll (the
    database unreachable) while liveness passes; both fail with wrong credentials and once the
    exporter is gone."""
    import bcrypt

    from tests.support.process import child_env, free_port, http_get

    probe_password, scrape_password = "probe-secret", "scrape-secret"

    def hashed(password: str) -> str:
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()

    values = {
        "database": {"existingSecret": "", "secretKey": "dsn", "dsn": cj_db},
        "config": {"poll_interval_seconds": 1},
        "webConfig": {"config": {
            "tls_server_config": {"cert_file": "/etc/cj-health-exporter/tls/tls.crt",
                                  "key_file": "/etc/cj-health-exporter/tls/tls.key"},
            "basic_auth_users": {"prometheus": hashed(scrape_password),
                                 "probe": hashed(probe_password)}},
            "tlsSecret": "cj-health-exporter-tls"},
        "probes": {"credentials": {"value": f"probe:{probe_password}"}},
    }
    objs = k8s.objects(values)
    layout_pod(objs, tmp_path)
    _self_signed(tmp_path / "etc" / "cj-health-exporter" / "tls")  # the tlsSecret's files
    port = free_port()
    for rendered in (tmp_path / "etc").rglob("*.yml"):  # the pod's absolute paths, under tmp
        text = k8s.pod_path(rendered.read_text(), tmp_path)
        rendered.write_text(text.replace("listen_address: :10124",
                                         f"listen_address: 127.0.0.1:{port}"))
    c = container(k8s.one(objs, "Deployment"))
    env = child_env(k8s.container_env(c, "cj-cj-health-exporter-0"))
    dsn_file = tmp_path / "etc" / "cj-health-exporter" / "dsn" / "dsn"
    credentials = tmp_path / "etc" / "cj-health-exporter" / "probe" / "credentials"
    assert credentials.read_text() == f"probe:{probe_password}"

    def probe(name: str) -> tuple[int, str]:
        code, line, seconds = k8s.exec_probe(c, name, tmp_path, env)
        print(f"{name}: exit {code} in {seconds:.2f} s: {line}")
        return code, line

    def serve() -> subprocess.Popen[bytes]:
        args = [k8s.pod_path(a, tmp_path) for a in c["args"]]
        return subprocess.Popen([sys.executable, "-m", "exporter", *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT)

    def until(name: str, code: int, proc: subprocess.Popen[bytes]) -> tuple[int, str]:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "exporter.log").read_text()
            got = probe(name)
            if got[0] == code or time.monotonic() > deadline:
                return got
            time.sleep(0.3)

    log = (tmp_path / "exporter.log").open("wb")
    try:
        # before the first good poll: the database is unreachable (a closed port)
        dsn_file.write_text(f"postgresql://cj_health_ro:pw@127.0.0.1:{free_port()}/cj")
        proc = serve()
        try:
            assert until("livenessProbe", 0, proc)[0] == 0
            code, line = probe("readinessProbe")
            assert code == 1 and "/-/ready answered 503" in line, line
            assert line.startswith(f"unhealthy: https://127.0.0.1:{port}/"), line
        finally:
            proc.terminate()
            proc.wait(10)

        dsn_file.write_text(cj_db)
        proc = serve()
        try:
            code, line = until("readinessProbe", 0, proc)
            assert code == 0 and "/-/ready answered 200" in line, line
            code, line = probe("livenessProbe")
            assert code == 0 and "/healthz answered 200" in line, line
            # the probe really authenticates: a wrong password is refused
            credentials.write_text(f"probe:not-{probe_password}")
            for name in ("livenessProbe", "readinessProbe"):
                code, line = probe(name)
                assert code == 1 and "answered 401" in line, line
            credentials.write_text(f"probe:{probe_password}")
            # and the kubelet's own GET could not: no credentials, 401
            status, _, _ = http_get(f"https://127.0.0.1:{port}/healthz",
                                    context=_unverified())
            assert status == 401
        finally:
            proc.terminate()
            proc.wait(10)
    finally:
        log.close()
    for name in ("livenessProbe", "readinessProbe"):  # the exporter is gone
        code, line = probe(name)
        assert code == 1 and "ConnectionRefusedError" in line, line


def _unverified() -> Any:
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
