"""prometheus_client metric families built from their declarations in exporter.vocabulary.

The collector and the finalizer's metrics build every family through `new()`, so a family can
only be exported under a declared name, type, help text and label set.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from exporter.vocabulary import COUNTER, family

Family = GaugeMetricFamily | CounterMetricFamily


def new(name: str, value: float | None = None) -> Family:
    """An empty family (labelled), or one sample `value` (unlabelled)."""
    spec = family(name)
    cls = CounterMetricFamily if spec.type == COUNTER else GaugeMetricFamily
    if spec.labels:
        return cls(spec.name, spec.help, labels=list(spec.labels))
    return cls(spec.name, spec.help, value=value)
