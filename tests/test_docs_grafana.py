"""docs/grafana/healkit-dashboard.json queries only what the tracing plugin exports.

The exported names are not spelled here: every instrument of the plugin records
one point through a real OpenTelemetry ``PrometheusMetricReader``, and the
names are read back from prometheus_client's text format, so a renamed
instrument, a changed unit or a new exporter translation fails the test.
Label names are the plugin's attribute names (``_names``) with dots made
underscores, plus the labels of Prometheus itself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client.parser import text_string_to_metric_families

from healkit_tracing import _names
from healkit_tracing._metrics import Instruments

DASHBOARD = Path(__file__).resolve().parent.parent / "docs/grafana/healkit-dashboard.json"
PROMETHEUS_LABELS = frozenset({"instance", "job", "le"})
"""Labels Prometheus adds (the scrape target) or histograms have (the bucket bound)."""
PROMQL_WORDS = frozenset(
    {
        "by",
        "without",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "rate",
        "increase",
        "histogram_quantile",
        "scalar",
        "label_values",
    }
)


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """The sample names Prometheus sees when every instrument of the plugin has a point."""
    registry = prometheus_client.CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    provider = MeterProvider(metric_readers=[reader])
    try:
        instruments = Instruments(provider.get_meter("healkit-dashboard-test"))
        for slot in Instruments.__slots__:
            instrument = getattr(instruments, slot)
            for verb in ("add", "record", "set"):  # counter, histogram, gauge
                if hasattr(instrument, verb):
                    getattr(instrument, verb)(1)
                    break
            else:
                pytest.fail(f"instrument {slot} takes no point")
        text = prometheus_client.generate_latest(registry).decode()
    finally:
        provider.shutdown()
    return {
        sample.name
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(("healkit_", "http_", "dns_"))
    }


def attribute_labels() -> set[str]:
    """Every attribute the plugin writes, as a Prometheus label."""
    return {
        value.replace(".", "_")
        for name, value in vars(_names).items()
        if name.isupper() and not name.startswith("METRIC_") and isinstance(value, str)
    }


def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def expressions() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries."""
    found = [
        target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])
    ]
    found += [
        variable["definition"]
        for variable in dashboard()["templating"]["list"]
        if variable["type"] == "query"
    ]
    assert found
    return found


def parse(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and the label names an expression uses."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # string values: $service, regexes
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors: [$__rate_interval]
    labels: set[str] = set()
    for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in clause.split(",") if label.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    expr = re.sub(r"\b(?:by|without)\s*\([^)]*\)|\{[^}]*\}", " ", expr)
    if expr.startswith("label_values("):  # label_values(metric, label)
        metric, label = (part.strip() for part in expr[len("label_values(") : -1].split(","))
        return {metric}, labels | {label}
    names = set(re.findall(r"\b[a-zA-Z_:][\w:]*\b", expr)) - PROMQL_WORDS
    return names, labels


def test_parse_reads_metrics_and_labels() -> None:
    expr = 'sum by (a, b) (rate(m_total{c=~"$x", d="y"}[$__rate_interval])) == 1'
    assert parse(expr) == ({"m_total"}, {"a", "b", "c", "d"})
    assert parse("label_values(m_count, s)") == ({"m_count"}, {"s"})


def test_dashboard_is_grafana_json() -> None:
    board = dashboard()
    assert board["title"] == "healkit"
    assert isinstance(board["schemaVersion"], int)
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        refs = [target["refId"] for target in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]


@pytest.mark.parametrize("expr", expressions())
def test_every_metric_queried_is_exported(expr: str, exported: set[str]) -> None:
    metrics, labels = parse(expr)
    assert metrics, expr
    assert metrics <= exported, f"not exported: {sorted(metrics - exported)}"
    unknown = labels - attribute_labels() - PROMETHEUS_LABELS
    assert not unknown, f"not a label of the plugin's metrics: {sorted(unknown)}"


def test_the_dashboard_covers_what_healkit_reports(exported: set[str]) -> None:
    """A panel for each of the issue's subjects (and the exported set is not empty)."""
    used = set().union(*(parse(expr)[0] for expr in expressions()))
    assert (
        {
            "healkit_call_duration_seconds_count",  # calls by path
            "healkit_attempts_total",
            "healkit_retries_total",
            "healkit_fallbacks_total",  # failovers
            "healkit_breaker_state",
            "healkit_breaker_refusals_total",
            "healkit_config_version",
            "healkit_etcd_connected",
            "healkit_state_evictions_total",
        }
        <= used
        <= exported
    )


def test_names_in_the_recipe_are_exported(exported: set[str]) -> None:
    """The Prometheus names docs/plugins/tracing.md spells out are exported (metrics, labels)."""
    page = DASHBOARD.parent.parent / "plugins/tracing.md"
    text = page.read_text(encoding="utf-8")
    recipe = text[text.index("### Exporting metrics to Prometheus") :]
    names = set(re.findall(r"`((?:healkit|http_client)_[a-z_]+)`", recipe))
    assert "healkit_attempts_total" in names
    known = exported | attribute_labels()
    assert names <= known, f"not exported: {sorted(names - known)}"
