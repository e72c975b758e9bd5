"""values.yaml and values.schema.json describe the same values (the schema refuses unknown keys, so
a value documented in values.yaml but missing from the schema would make the chart uninstallable),
and the defaults are the ones the operator and the README promise."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "llmpack"


def load():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    return values, schema


def resolve(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    if ref:
        target = schema
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        return target
    return node


def walk(schema: dict, node: dict, value, path: str) -> list[str]:
    """Every key of `value` that the schema (objects with additionalProperties: false) refuses."""
    node = resolve(schema, node)
    if not isinstance(value, dict) or node.get("type") != "object":
        return []
    problems = []
    properties = node.get("properties", {})
    for key, child in value.items():
        if key in properties:
            problems += walk(schema, properties[key], child, f"{path}/{key}")
        elif node.get("additionalProperties") is False:
            problems.append(f"{path}/{key}")
    return problems


def test_every_default_value_is_known_to_the_schema():
    values, schema = load()
    assert walk(schema, schema, values, "") == []


def test_every_top_level_schema_property_has_a_default():
    values, schema = load()
    assert set(schema["properties"]) - {"global"} == set(values)


def test_defaults_match_the_operator():
    values, _ = load()
    assert values["replicaCount"] == 1
    assert values["logLevel"] == "INFO"
    assert values["metrics"]["port"] == 8080  # llmpack operator --metrics-port default
    assert values["health"]["port"] == 8081  # llmpack operator --liveness default
    assert values["metrics"]["serviceMonitor"]["enabled"] is False
    assert values["watchNamespaces"] == []
    # leader election on by default, with client-go's durations (llmpack operator's flag defaults)
    assert values["leaderElection"] == {
        "enabled": True,
        "leaseName": "",
        "leaseDuration": "15s",
        "renewDeadline": "10s",
        "retryPeriod": "2s",
    }
    for image in ("operator", "profiler", "serving"):
        assert values["images"][image]["tag"] == ""  # the chart's appVersion
    assert values["crds"] == {"check": True}  # an upgrade over an older CRD is refused, saying why
    assert values["grafanaDashboard"]["enabled"] is False
    assert (values["grafanaDashboard"]["label"], values["grafanaDashboard"]["labelValue"]) == (
        "grafana_dashboard",  # the Grafana sidecar's default (kube-prometheus-stack)
        "1",
    )


def test_log_level_choices_are_the_operators():
    _, schema = load()
    assert schema["properties"]["logLevel"]["enum"] == ["DEBUG", "INFO", "WARNING", "ERROR"]


def test_leader_election_durations_are_the_operators_defaults():
    import argparse

    from llmpack.controller.cli import add_arguments, duration

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = parser.parse_args([])
    values, _ = load()
    election = values["leaderElection"]
    assert duration(election["leaseDuration"]) == defaults.leader_elect_lease_duration == 15
    assert duration(election["renewDeadline"]) == defaults.leader_elect_renew_deadline == 10
    assert duration(election["retryPeriod"]) == defaults.leader_elect_retry_period == 2
    assert defaults.leader_elect is False  # off for a bare `llmpack operator`; the chart turns it on
    assert duration("1m30s") == 90 and duration("500ms") == 0.5 and duration("2.5") == 2.5
