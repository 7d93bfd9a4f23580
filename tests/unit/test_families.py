"""exporter.families.new builds only declared families (exporter.vocabulary.FAMILIES), with the
declared type, help and labels: a family nobody declared cannot be exported."""

from __future__ import annotations

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from exporter.families import new
from exporter.vocabulary import COUNTER, FAMILIES, GAUGE


@pytest.mark.parametrize("name", ["cj_batch_wedged", "cj_health_polls_total", "", "CJ_HEALTH_UP"])
def test_an_undeclared_name_is_refused(name: str) -> None:
    with pytest.raises(KeyError):
        new(name)


def test_every_declared_family_is_built_as_declared() -> None:
    for name, declared in FAMILIES.items():
        assert declared.type in (GAUGE, COUNTER), name
        assert not name.endswith("_total"), "counters are declared without _total"
        family = new(name, None if declared.labels else 1.0)
        expected = CounterMetricFamily if declared.type == COUNTER else GaugeMetricFamily
        assert isinstance(family, expected), name
        assert (family.name, family.documentation, family.type) == (
            name, declared.help, declared.type)
        if declared.labels:
            assert family.samples == []  # filled by add_metric with exactly these labels
            family.add_metric(["x"] * len(declared.labels), 2.0)
            assert set(family.samples[0].labels) == set(declared.labels)
        else:
            (sample,) = family.samples
            assert sample.labels == {} and sample.value == 1.0
