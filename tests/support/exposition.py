"""The one parser of /metrics bodies in the tests, and the one sample lookup.

Bodies are parsed by prometheus_client's own parsers (text format 0.0.4, or OpenMetrics), so a
test reads what Prometheus would read, never a regex's idea of it. The lookup is modelled on
client_python's `CollectorRegistry.get_sample_value(name, labels)`, with two differences that
suit scraped bodies: the labels given need only be a subset of the sample's (a test names the
labels it cares about), and more than one match is an error, never a silent pick.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as _openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as _text_families
from prometheus_client.samples import Sample

Body = bytes | str


@dataclass(frozen=True)
class Exposition:
    """A parsed exposition: its families by name (counters without `_total`)."""

    families: Mapping[str, Metric]

    def samples(self, name: str, **labels: str) -> list[Sample]:
        """The samples called `name` (as exposed: counters with `_total`) whose labels include
        `labels`, in exposition order."""
        return [s for family in self.families.values() for s in family.samples
                if s.name == name and labels.items() <= s.labels.items()]

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the one sample `name{labels...}`; None when there is none."""
        found = self.samples(name, **labels)
        assert len(found) <= 1, f"{name}{labels} is ambiguous: {found}"
        return found[0].value if found else None

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        """Every sample called `name`, by its full label set."""
        return {frozenset(s.labels.items()): s.value for s in self.samples(name)}

    def names(self) -> set[str]:
        """The exposed sample names (counters with `_total`)."""
        return {s.name for family in self.families.values() for s in family.samples}


def parse(body: Body, *, openmetrics: bool = False) -> Exposition:
    text = body.decode() if isinstance(body, bytes) else body
    parsed: Iterable[Metric] = (
        _openmetrics_families(text)  # type: ignore[no-untyped-call]
        if openmetrics else _text_families(text))
    families: dict[str, Metric] = {}
    for family in parsed:
        assert family.name not in families, f"family {family.name} exposed twice"
        families[family.name] = family
    return Exposition(families)


def sample_value(body: Body, name: str, **labels: str) -> float | None:
    """`parse(body).value(name, **labels)`: for one look at a body (e.g. a wait predicate)."""
    return parse(body).value(name, **labels)
