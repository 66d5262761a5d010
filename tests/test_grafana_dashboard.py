"""`ops/grafana/inferbus.json` asks only for what the processes export: every panel's query
names metrics of the router's or a worker's registry, with labels those metrics have."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from node_worker.metrics import WorkerMetrics
from router.metrics import RouterMetrics

DASHBOARD = Path(__file__).resolve().parents[1] / "ops" / "grafana" / "inferbus.json"
METRIC = re.compile(r"\binferbus_[a-z_]+")
SELECTOR = re.compile(r"(inferbus_[a-z_]+)\{([^}]*)\}")
BY = re.compile(r"\bby \(([^)]*)\)")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
PROMETHEUS_LABELS = {"le", "instance", "job"}  # added by histograms and by the scraper


def exported(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Series name → its labels, for every family the registry exports."""
    names: dict[str, set[str]] = {}
    for family in registry.collect():
        labels = {label for sample in family.samples for label in sample.labels}
        documented = getattr(family, "_labelnames", ())
        for suffix in SUFFIXES.get(family.type, ("",)):
            names[family.name + suffix] = labels | set(documented)
    return names


def all_exported() -> dict[str, set[str]]:
    router = RouterMetrics(
        lambda: {"n": {"llm": "open"}},
        lambda: {
            "providers": [
                {
                    "provider": "p",
                    "keys": [{"key_id": "K", "cooldown_left_s": 1.0}],
                    "models": [{"model": "m", "state": "healthy"}],
                    "usage": [
                        {
                            "key_id": "K",
                            "model": "m",
                            "invocations": 1,
                            "failures": 0,
                            "tokens": {"prompt": 1, "completion": 1},
                            "cost": 0.0,
                        }
                    ],
                }
            ]
        },
    )
    worker = WorkerMetrics()
    found = exported(router.registry)
    found.update(exported(worker.registry))
    for metrics in (router, worker):  # labelled metrics with no sample yet: their label names
        for name, collector in vars(metrics).items():
            labelnames = getattr(collector, "_labelnames", None)
            family = getattr(collector, "_name", None)
            if labelnames is None or family is None or name == "registry":
                continue
            for series, labels in found.items():
                if series.startswith(family):
                    labels.update(labelnames)
    return found


def panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [panel for panel in dashboard["panels"] if panel["type"] != "row"]


def test_the_dashboard_has_panels_with_queries() -> None:
    found = panels()
    assert len(found) >= 10
    for panel in found:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert METRIC.search(target["expr"]), (panel["title"], target["expr"])


@pytest.mark.parametrize("panel", panels(), ids=lambda panel: panel["title"])
def test_every_query_names_exported_metrics_and_their_labels(panel: dict[str, Any]) -> None:
    known = all_exported()
    for target in panel["targets"]:
        expr = target["expr"]
        used = METRIC.findall(expr)
        for name in used:
            assert name in known, f"{panel['title']}: {name} is not exported"
        labels_of_query = set().union(*(known[name] for name in used)) | PROMETHEUS_LABELS
        for name, selector in SELECTOR.findall(expr):
            for matcher in filter(None, (part.strip() for part in selector.split(","))):
                label = re.split(r"[=!~]", matcher, maxsplit=1)[0]
                assert label in known[name] | PROMETHEUS_LABELS, f"{name} has no label {label}"
        for grouping in BY.findall(expr):
            for label in (part.strip() for part in grouping.split(",")):
                assert label in labels_of_query, f"{panel['title']}: no metric has {label}"
