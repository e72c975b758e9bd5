"""The chart's Grafana dashboard asks Prometheus only what it can answer.

Every query of charts/llmpack/dashboards/llmdeployment.json (panels and variables), with Grafana's
variables filled in as Grafana would, is parsed by Prometheus' own PromQL parser (hack/promql: a
Go program on github.com/prometheus/prometheus/promql/parser, built into ~/.cache/llmpack-promql/
by hack/promql/build; the first build needs Go and the module proxy, like the testbed). Every metric
a selector names, and every label it matches on, exists on a page the dashboard reads: the
operator's /metrics (its registry, imported in-process), a serving router's (its registry, plus the
replicas' vLLM pages merged by the router's own code), or the real engine's /metrics captured in
tests/fixtures/vllm/metrics.txt.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "llmpack" / "dashboards" / "llmdeployment.json"
ENGINE_METRICS = ROOT / "tests" / "fixtures" / "vllm" / "metrics.txt"

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

# What Grafana puts in place of its variables before a query reaches Prometheus.
GRAFANA_VARIABLES = {
    "$__rate_interval": "2m",
    "$__interval": "30s",
    "$__range": "3h",
    "$namespace": "team-a",
    "$llmdeployment": "opt-1-3b",
}
# Labels a scrape adds to every series (Prometheus' job and instance; the pod's namespace and name;
# the serving pods' llmpack.io/llmdeployment label, relabelled as the chart README's PodMonitor does).
SCRAPE_LABELS = frozenset({"job", "instance", "namespace", "pod", "container", "llmdeployment"})

Series = dict[str, frozenset[str]]  # sample name -> the label names its samples carry


# -- the dashboard's queries ------------------------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(items: Iterable[dict]) -> Iterator[dict]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))  # a collapsed row holds its panels


LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[a-zA-Z_]\w*)\)$")


def queries(board: dict) -> list[tuple[str, str, str | None]]:
    """(where, PromQL, label a variable reads or None) for every query: panel targets, and the
    selector of each variable's label_values(SELECTOR, LABEL)."""
    found = []
    for panel in panels(board["panels"]):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"], None))
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = LABEL_VALUES.match(query)
        assert match, f"variable {variable['name']}: not label_values(SELECTOR, LABEL): {query}"
        found.append((f"variable {variable['name']}", match["selector"], match["label"]))
    return found


def interpolate(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"a variable the dashboard does not define: {expr}"
    return expr


# -- Prometheus' parser -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promql_check() -> Path:
    build = subprocess.run([str(ROOT / "hack" / "promql" / "build")], capture_output=True, text=True)
    if build.returncode != 0:
        pytest.fail(f"hack/promql/build failed:\n{build.stderr[-3000:]}", pytrace=False)
    return Path(build.stdout.strip().splitlines()[-1])


def parse(promql_check: Path, exprs: list[str]) -> list[dict]:
    result = subprocess.run(
        [str(promql_check)], input=json.dumps(exprs), capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(result.stdout)


# -- what the pages expose --------------------------------------------------------------------------


def sample_names(family: Metric) -> dict[str, frozenset[str]]:
    """The sample names the text format writes for a family, with the labels each adds."""
    name, kind = family.name, family.type
    if kind == "counter":
        return {f"{name}_total": frozenset(), f"{name}_created": frozenset()}
    if kind == "histogram":
        return {
            f"{name}_bucket": frozenset({"le"}),
            f"{name}_sum": frozenset(),
            f"{name}_count": frozenset(),
            f"{name}_created": frozenset(),
        }
    if kind == "summary":
        return {name: frozenset({"quantile"}), f"{name}_sum": frozenset(), f"{name}_count": frozenset()}
    if kind == "info":
        return {f"{name}_info": frozenset()}
    return {name: frozenset()}


def registry_series(
    registry: CollectorRegistry, metrics: Iterable[object], families: dict[str, tuple[str, ...]] | None = None
) -> Series:
    """Every series `registry` serves. A labelled metric with no child yet has no sample to read
    its label names from: those come from the metric object (`metrics`, e.g. a module's globals),
    or, for a collector's families, from their declared label names (`families`)."""
    declared: dict[str, frozenset[str]] = {
        name: frozenset(labels) for name, labels in (families or {}).items()
    }
    for metric in metrics:
        if isinstance(metric, MetricWrapperBase):
            for family in metric.describe():
                declared[family.name] = frozenset(metric._labelnames)
    series: Series = {}
    for family in registry.collect():
        own = declared.get(family.name, frozenset()) | {k for s in family.samples for k in s.labels}
        for name, extra in sample_names(family).items():
            series[name] = series.get(name, frozenset()) | own | extra
    return series


def text_series(text: str) -> Series:
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series[sample.name] = series.get(sample.name, frozenset()) | set(sample.labels)
    return series


def merge(*pages: Series) -> Series:
    merged: Series = {}
    for page in pages:
        for name, labels in page.items():
            merged[name] = merged.get(name, frozenset()) | labels
    return merged


@pytest.fixture(scope="module")
def exposed() -> Series:
    import llmpack.controller.metrics as operator_metrics
    import llmpack.controller.operator  # noqa: F401  (everything `llmpack operator` registers)
    import llmpack.runtime.metrics as runtime_metrics
    from llmpack.launcher.metrics import RouterMetrics, merge_replica_metrics

    families = {name: labels for name, (_, labels) in operator_metrics.FAMILIES.items()}
    globals_ = [*vars(operator_metrics).values(), *vars(runtime_metrics).values()]
    operator = registry_series(REGISTRY, globals_, families)
    router_metrics = RouterMetrics()
    router = registry_series(router_metrics.registry, vars(router_metrics).values())
    engine_text = ENGINE_METRICS.read_text()
    engine = text_series(engine_text)  # a vLLM container scraped directly
    # a DRA pod's router serves its replicas' pages, each sample labelled replica="i"
    routed = text_series(merge_replica_metrics({"0": engine_text, "1": engine_text}).decode())
    assert "vllm:kv_cache_usage_perc" in engine and "replica" in routed["vllm:kv_cache_usage_perc"]
    return merge(operator, router, engine, routed)


# -- the tests --------------------------------------------------------------------------------------


def test_the_dashboard_has_the_panels_a_platform_team_expects():
    board = dashboard()
    titles = {p["title"] for p in panels(board["panels"]) if p["type"] != "row"}
    for wanted in (
        "Replicas serving",
        "Tokens/s",
        "Inter-token latency vs SLO",
        "Time to first token vs SLO",
        "KV cache use per replica",
        "Preemptions per replica",
        "Client disconnects and refusals",
        "Work queue",
        "Reconcile errors",
        "GPUs: in use vs desired",
    ):
        assert wanted in titles
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "namespace", "llmdeployment"]
    for panel in panels(board["panels"]):
        if panel["type"] != "row":
            assert panel["targets"], f"panel {panel['title']!r} has no query"
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    ids = [p["id"] for p in panels(board["panels"])]
    assert len(ids) == len(set(ids)), "two panels share an id"


def test_every_query_parses_with_prometheus_own_parser(promql_check):
    found = queries(dashboard())
    results = parse(promql_check, [interpolate(expr) for _, expr, _ in found])
    errors = [
        f"{where}: {result['error']}\n  {expr}"
        for (where, expr, _), result in zip(found, results, strict=True)
        if result.get("error")
    ]
    assert not errors, "\n".join(errors)


def test_the_parser_refuses_what_prometheus_refuses(promql_check):
    """The check has teeth: Prometheus' parser, not a lenient one."""
    bad = ["sum(rate(x[5m])", "rate(x)", "histogram_quantile(0.9, x) by (le)", 'x{a=~"("}', "no_such_fn(x)"]
    assert all(r.get("error") for r in parse(promql_check, bad))


def test_every_metric_and_label_a_query_selects_is_exposed(promql_check, exposed):
    found = queries(dashboard())
    results = parse(promql_check, [interpolate(expr) for _, expr, _ in found])
    problems = []
    for (where, _expr, variable_label), result in zip(found, results, strict=True):
        if result.get("error"):
            continue  # test_every_query_parses_with_prometheus_own_parser names it
        if not result["selectors"]:
            problems.append(f"{where}: selects nothing")
        for selector in result["selectors"]:
            metric = selector["metric"]
            if metric not in exposed:
                problems.append(f"{where}: no page exposes {metric}")
                continue
            labels = exposed[metric] | SCRAPE_LABELS
            problems += [
                f"{where}: {metric} has no label {label}"
                for label in selector["labels"]
                if label not in labels
            ]
            if variable_label and variable_label not in labels:
                problems.append(f"{where}: {metric} has no label {variable_label} to list")
    assert not problems, "\n".join(problems)


def test_a_misspelt_metric_or_label_would_be_caught(promql_check, exposed):
    """The same check on queries that are wrong in the ways a dashboard goes wrong."""
    (typo,) = parse(promql_check, ['rate(vllm:generation_tokens{namespace="a"}[5m])'])
    assert typo["selectors"][0]["metric"] not in exposed  # the counter's sample is ..._total
    (label,) = parse(promql_check, ['llmpack_llmdeployment_slo_seconds{slo="itl_p99"}'])
    assert "slo" not in exposed[label["selectors"][0]["metric"]] | SCRAPE_LABELS
