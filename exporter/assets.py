"""The files the wheel ships for operators, and where they are in this install.

Prometheus rules, the Alertmanager example, the Grafana dashboards and roles.sql are made in
the repository (alerts/, dashboards/, sql/) and copied into the wheel by pyproject.toml
(`exporter/assets/...`, `exporter/sql/...`), so someone who only ran `pip install` can find
them with `cj-health-exporter assets` instead of a source checkout. An editable install reads
them from the checkout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Asset:
    name: str  # what `assets NAME` takes
    group: str  # the repository folder (and the folder `assets --write DIR` writes into)
    what: str

    def candidates(self) -> tuple[Path, ...]:
        shipped = PACKAGE / ("sql" if self.group == "sql" else f"assets/{self.group}")
        return shipped / self.name, PACKAGE.parent / self.group / self.name

    def path(self) -> Path:
        for candidate in self.candidates():
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{self.name} is missing from this install "
                                f"(looked in {', '.join(map(str, self.candidates()))})")


ASSETS: tuple[Asset, ...] = (
    Asset("cj-batch-health.rules.yml", "alerts",
          "Prometheus recording and alerting rules (rule_files)"),
    Asset("alertmanager.example.yml", "alerts", "Alertmanager routes and inhibitions"),
    Asset("overview.json", "dashboards", "Grafana dashboard: CJ health overview"),
    Asset("batch.json", "dashboards", "Grafana dashboard: CJ batch drill-down"),
    Asset("roles.sql", "sql", "least-privilege database roles (psql -f, as a superuser, or the"
                              " tables' owner with CREATEROLE)"),
)
BY_NAME = {a.name: a for a in ASSETS}
