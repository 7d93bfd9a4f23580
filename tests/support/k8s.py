"""Helpers for the Helm chart and schema tests: render the chart with Helm's own Go SDK, and run
the pinned npm tools of .ci/node (tsc, the prometheus-operator models).

Every tool is required: a missing one fails the test with the command that installs it, it never
skips. `.ci/test.sh` installs all of them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "cj-health-exporter"
NODE_DIR = ROOT / ".ci" / "node"
NODE_MODULES = NODE_DIR / "node_modules"
TSC = NODE_MODULES / "typescript" / "bin" / "tsc"
OPERATOR_KINDS = frozenset({"ServiceMonitor", "PodMonitor", "PrometheusRule"})
CORE_KINDS = frozenset({"Deployment", "Service", "ServiceAccount", "Secret", "ConfigMap",
                        "PodDisruptionBudget", "NetworkPolicy"})
RULE_PACK_JOB = "cj-health-exporter"  # alerts/params.yml `job`, the job of alerts/tests/


def helm() -> Any:
    try:
        import helm_python
    except ImportError as exc:  # pragma: no cover - a broken install
        raise AssertionError("helm-python-sdk is required (pip install -e '.[test]')") from exc
    return helm_python


def render(values: Mapping[str, Any] | None = None, *, name: str = "cj",
           namespace: str = "cj") -> dict[str, str]:
    """template path -> rendered text, as `helm template` renders it (values.schema.json is
    enforced by Helm itself)."""
    chart = helm().Chart.load(str(CHART))
    out: dict[str, str] = chart.render(dict(values or {}), name=name, namespace=namespace)
    return out


def objects(values: Mapping[str, Any] | None = None, *, name: str = "cj",
            namespace: str = "cj") -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders (NOTES.txt left out)."""
    found: list[dict[str, Any]] = []
    for path, text in sorted(render(values, name=name, namespace=namespace).items()):
        if path.endswith("NOTES.txt"):
            continue
        found.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return found


def one(objs: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [o for o in objs if o["kind"] == kind]
    assert len(matches) == 1, f"want one {kind}, got {len(matches)}"
    return matches[0]


def by_kind(objs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def node() -> str:
    path = shutil.which("node")
    assert path, "`node` is required (Debian package nodejs); .ci/test.sh installs it"
    assert NODE_MODULES.is_dir(), (
        f"{NODE_MODULES} is missing: run `npm ci --prefix .ci/node` (.ci/test.sh does)")
    return path


def npm_version(package: str) -> str:
    node()
    meta = json.loads((NODE_MODULES / package / "package.json").read_text(encoding="utf-8"))
    return str(meta["version"])


def check_crds(objs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    """Validate prometheus-operator objects with .ci/node/check-crds.mjs."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(objs, fh)
    try:
        return subprocess.run([node(), str(NODE_DIR / "check-crds.mjs"), fh.name],
                              capture_output=True, text=True, timeout=120, cwd=NODE_DIR)
    finally:
        Path(fh.name).unlink()


def tsc(sources: Mapping[str, str]) -> list[str]:
    """Compile TypeScript sources with `tsc --strict --noEmit`; return its diagnostics."""
    node()
    build = NODE_DIR / "build"
    build.mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=build))
    try:
        for name, text in sources.items():
            (folder / name).write_text(text, encoding="utf-8")
        (folder / "tsconfig.json").write_text(json.dumps({
            "compilerOptions": {
                "strict": True, "noEmit": True, "target": "es2022", "module": "esnext",
                "moduleResolution": "bundler", "skipLibCheck": True, "types": [],
                "noErrorTruncation": True,
            },
            "files": sorted(sources),
        }), encoding="utf-8")
        result = subprocess.run([node(), str(TSC), "-p", str(folder), "--pretty", "false"],
                                capture_output=True, text=True, timeout=600, cwd=folder)
        diagnostics = [line for line in result.stdout.splitlines() if ": error TS" in line]
        assert result.returncode == 0 or diagnostics, result.stdout + result.stderr
        return diagnostics
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def ts_literal(value: Any) -> str:
    """A JSON value as a TypeScript object literal (JSON is valid TypeScript)."""
    return json.dumps(value, indent=1, ensure_ascii=False)


# --- what the prometheus-operator makes of a ServiceMonitor / PodMonitor ------------------------


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    wanted = selector.get("matchLabels") or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def operator_job(monitor: Mapping[str, Any], objs: Iterable[dict[str, Any]]) -> str:
    """The `job` label Prometheus gives the targets of a ServiceMonitor or PodMonitor, following
    the operator's documented rules (API reference, `jobLabel`):

    * ServiceMonitor: the value of the Service's label named by `jobLabel`; without it (or
      without that label) the Service's name;
    * PodMonitor: the value of the pod's label named by `jobLabel`; without it
      `<namespace>/<PodMonitor name>`;

    then the endpoint's relabelings that target `job` with a fixed replacement.
    """
    spec = monitor["spec"]
    namespaces = set(spec.get("namespaceSelector", {}).get("matchNames") or [])
    job_label = spec.get("jobLabel") or ""
    if monitor["kind"] == "ServiceMonitor":
        services = [o for o in objs if o["kind"] == "Service"
                    and (not namespaces or o["metadata"]["namespace"] in namespaces)
                    and _selects(spec["selector"], o["metadata"].get("labels") or {})]
        assert len(services) == 1, f"the ServiceMonitor selects {len(services)} Services"
        labels = services[0]["metadata"].get("labels") or {}
        job = labels.get(job_label) or services[0]["metadata"]["name"]
        endpoints = spec["endpoints"]
    else:
        pods = [o for o in objs if o["kind"] == "Deployment"
                and _selects(spec["selector"], o["spec"]["template"]["metadata"]["labels"])]
        assert len(pods) == 1, f"the PodMonitor selects the pods of {len(pods)} Deployments"
        labels = pods[0]["spec"]["template"]["metadata"]["labels"]
        meta = monitor["metadata"]
        job = labels.get(job_label) or f"{meta['namespace']}/{meta['name']}"
        endpoints = spec["podMetricsEndpoints"]
    assert len(endpoints) == 1
    for relabel in endpoints[0].get("relabelings") or []:
        if relabel.get("targetLabel") == "job" and relabel.get("action", "replace") == "replace" \
                and not relabel.get("sourceLabels"):
            job = relabel.get("replacement", "$1")
    return str(job)


# --- the promtool unit tests of alerts/tests/, re-aimed at another job and extra labels -------


def retarget_unit_tests(source_dir: Path, out_dir: Path, rules_file: Path, *, job: str,
                        extra_labels: Mapping[str, str], grafana_url: str | None = None
                        ) -> list[Path]:
    """Copies of alerts/tests/*.test.yml for a rule pack rendered with `job` and extra
    equality matchers: every series and expected label set of the pack's job gets the new job and
    the extra labels (as a ServiceMonitor's series carry `namespace`), and the annotations that
    print the job (descriptions, dashboard links) say the new one."""
    old = f'job="{RULE_PACK_JOB}"'
    new = ", ".join([f'job="{job}"', *(f'{k}="{v}"' for k, v in extra_labels.items())])

    def series(text: str) -> str:
        return text.replace(old, new)

    def labels(mapping: dict[str, Any]) -> dict[str, Any]:
        if mapping.get("job") != RULE_PACK_JOB:
            return mapping
        return {**mapping, "job": job, **extra_labels}

    def annotation(text: str) -> str:
        text = text.replace(f"var-job={RULE_PACK_JOB}", f"var-job={job}")
        text = re.sub(rf"\bjob {re.escape(RULE_PACK_JOB)}\b", f"job {job}", text)
        if grafana_url is not None:
            text = text.replace("http://localhost:3000/", grafana_url.rstrip("/") + "/")
        return text

    written = []
    for path in sorted(source_dir.glob("*.test.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        data["rule_files"] = [str(rules_file)]
        for test in data["tests"]:
            for item in test.get("input_series", []):
                item["series"] = series(item["series"])
            for case in test.get("alert_rule_test", []):
                for alert in case.get("exp_alerts") or []:
                    alert["exp_labels"] = labels(alert.get("exp_labels") or {})
                    alert["exp_annotations"] = {
                        k: annotation(v) for k, v in (alert.get("exp_annotations") or {}).items()}
            for case in test.get("promql_expr_test", []):
                for sample in case.get("exp_samples") or []:
                    sample["labels"] = series(sample["labels"])
        target = out_dir / path.name
        target.write_text(yaml.safe_dump(data, sort_keys=False, width=1 << 16), encoding="utf-8")
        written.append(target)
    return written


# --- a container's exec probe, run as the kubelet runs it ------------------------------------


def pod_path(text: str, root: Path) -> str:
    """A path (or a file's text) of the pod's /etc/cj-health-exporter/ tree, under `root`."""
    return text.replace("/etc/cj-health-exporter/", f"{root}/etc/cj-health-exporter/")


def container_env(container: Mapping[str, Any], pod_name: str) -> dict[str, str]:
    """The container's rendered `env`: plain values, and metadata.name field references."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        field = item["valueFrom"]["fieldRef"]["fieldPath"]
        assert field == "metadata.name", f"no stand-in for the field {field}"
        env[item["name"]] = pod_name
    return env


def exec_probe(container: Mapping[str, Any], probe: str, root: Path,
               env: Mapping[str, str]) -> tuple[int, str, float]:
    """(exit code, stdout, seconds) of the container's `probe` (livenessProbe/readinessProbe)
    `exec.command` exactly as rendered, with the pod's file tree under `root`: the command's
    program found on PATH as the image's (this virtualenv's console script), the kubelet's
    timeoutSeconds as the deadline."""
    spec = container[probe]
    command = [pod_path(a, root) for a in spec["exec"]["command"]]
    program = Path(sys.executable).parent / command[0]
    assert program.is_file(), f"{command[0]} is not installed beside {sys.executable}"
    start = time.perf_counter()
    result = subprocess.run([str(program), *command[1:]], capture_output=True, text=True,
                            env=dict(env), timeout=spec["timeoutSeconds"])
    return result.returncode, result.stdout.strip(), time.perf_counter() - start
