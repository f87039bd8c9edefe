"""The shipped monitoring: Prometheus alert rules (checked and unit-tested with promtool), the
Grafana dashboard (every query valid PromQL), and that both only use metrics and labels a
running bridge really exports, which docs/monitoring.md documents."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from support import REPO
from support.helpers import BridgeFactory, make_settings

from bridge.sim import Simulator
from bridge.sim import brokers as mosquitto

MONITORING = REPO / "monitoring"
ALERTS = MONITORING / "alerts.yml"
ALERT_TESTS = MONITORING / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
MONITORING_PAGE = REPO / "docs" / "monitoring.md"
DS_VARIABLE = "DS_PROMETHEUS"
# What a scrape adds to every series (the dashboard selects on them): job and instance
# everywhere; on Kubernetes the Prometheus Operator adds namespace, service and pod, and the
# chart's ServiceMonitor the pod's shard (the rules aggregate replicas over them).
TARGET_LABELS = {"job", "instance", "namespace", "service", "pod", "shard"}
# Grafana variables -> a value that makes the query plain PromQL.
GRAFANA_VARIABLES = {
    "__rate_interval": "5m", "__interval": "1m", "__range": "1h",
    "job": "flespi-bridge", "instance": ".+", "device": ".*",
}


def promtool() -> str:
    found = shutil.which("promtool") or ("/usr/bin/promtool"
                                         if Path("/usr/bin/promtool").exists() else None)
    if found is None:
        pytest.fail("promtool not found: install Debian's `prometheus` package "
                    "(apt-get install prometheus; .ci/run does) to check the monitoring rules")
    return found


def run_promtool(*args: str, stdin: str | None = None,
                 cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], input=stdin, capture_output=True, text=True,
                          cwd=cwd, timeout=120, check=False)


# --- alert rules ------------------------------------------------------------------------

def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def test_alert_rules_are_valid() -> None:
    result = run_promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_alert_rule_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    doc = yaml.safe_load(ALERT_TESTS.read_text())
    assert doc["rule_files"] == [ALERTS.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert {"FlespiDeviceBatteryLow", "FlespiDeviceOffline", "FlespiBridgeDown",
            "FlespiBridgeAbsent", "FlespiBridgeNotReady",
            "FlespiBridgeUpstreamReconnectStorm", "FlespiBridgeShardDown"} <= names
    assert names - firing == set(), "alerts without a case where they fire"
    assert names - quiet == set(), "alerts without a case where they stay quiet"
    assert (firing | quiet) - names == set(), "tests of alerts that do not exist"


def test_every_alert_is_actionable() -> None:
    """Alertmanager routes on severity; the notification needs a summary and description,
    and fleet alerts must say which device."""
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
        assert 'job="flespi-bridge"' in rule["expr"], f"{rule['alert']}: select the job"
        if "flespi_bridge_device_" in rule["expr"]:
            text = rule["annotations"]["summary"] + rule["annotations"]["description"]
            assert "$labels.device_name" in text, rule["alert"]
            assert "$labels.device_id" in text, rule["alert"]


@pytest.mark.parametrize(("wrong", "right"), [
    ("< 20", "<= 20"),  # the threshold itself is not "below"
    ("for: 15m", "for: 1m"),  # a short dip must not page
    ('side="upstream"}[15m]', 'side=~".+"}[15m]'),  # local reconnects are not a flespi storm
    ("absent(up{job=\"flespi-bridge\"})", "absent(up)"),  # any other target would hide it
    # a device is one alert whichever replica exports it, its pending time kept as it moves
    ("max without (instance, pod, shard) (flespi_bridge_device_battery_percent"
     "{job=\"flespi-bridge\"}) < 20", "flespi_bridge_device_battery_percent"
     "{job=\"flespi-bridge\"} < 20"),
    # a shard that is gone, not only one that is still scraped
    ("max_over_time(flespi_bridge_shard_info{job=\"flespi-bridge\"}[1d])",
     "flespi_bridge_shard_info{job=\"flespi-bridge\"}"),
    # a shard index served under the new count during a resize is not down
    ("unless on (job, namespace, service, shard) ",
     "unless on (job, namespace, service, shard, shards) "),
    # a finished resize away from a shard count is not a shard down
    ("\n          and on (job, namespace, service, shards) flespi_bridge_shard_info"
     "{job=\"flespi-bridge\"}", ""),
])
def test_alert_unit_tests_catch_a_broken_rule(tmp_path: Path, wrong: str, right: str) -> None:
    """The unit tests are worth something: a plausible mistake in a rule makes them fail."""
    text = ALERTS.read_text()
    assert wrong in text
    (tmp_path / ALERTS.name).write_text(text.replace(wrong, right))
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    result = run_promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0, f"a rule with {right!r} instead of {wrong!r} passed"


# --- the dashboard ----------------------------------------------------------------------

def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in doc["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels inside collapsed rows
    return out


def substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in GRAFANA_VARIABLES:
            raise AssertionError(f"unknown Grafana variable ${name} in {expr}")
        return GRAFANA_VARIABLES[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)


def dashboard_queries(doc: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets, and the series selectors of the variables'
    `label_values(selector, label)` queries (their label goes in a `by` clause)."""
    exprs = [t["expr"] for p in panels(doc) for t in p.get("targets", [])]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"] if isinstance(var["query"], str) else var["query"]["query"]
            match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip())
            assert match, f"variable {var['name']}: unexpected query {query}"
            exprs.append(f"count by ({match.group(2)}) ({match.group(1)})")
    return [substitute(e) for e in exprs]


def check_promql(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """promtool parses PromQL only in rule files: each expression becomes a recording rule."""
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    return run_promtool("check", "rules", str(path))


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    exprs = dashboard_queries(dashboard())
    assert len(exprs) >= 20
    result = check_promql(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_promql_check_rejects_a_broken_query(tmp_path: Path) -> None:
    """The check above can fail: a query Grafana would show as an error is caught."""
    result = check_promql(['sum by (kind (rate(flespi_bridge_upstream_messages_total[5m]))'],
                          tmp_path)
    assert result.returncode != 0


def test_dashboard_layout_and_datasource() -> None:
    doc = dashboard()
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables[DS_VARIABLE]["type"] == "datasource"
    assert variables[DS_VARIABLE]["query"] == "prometheus"
    assert "__inputs" not in doc  # loads as it is through provisioning too
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in panels(doc):
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == f"${{{DS_VARIABLE}}}", p["title"]
        assert p["targets"], p["title"]
        for target in p["targets"]:
            assert target["datasource"]["uid"] == f"${{{DS_VARIABLE}}}", p["title"]
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"]["uid"] == f"${{{DS_VARIABLE}}}", var["name"]


def test_dashboard_shows_what_operators_need() -> None:
    doc = dashboard()
    by_title = {p["title"]: p for p in panels(doc)}
    text = "\n".join(dashboard_queries(doc))
    for metric in ("flespi_bridge_upstream_messages_total",
                   "flespi_bridge_local_publications_total", "flespi_bridge_commands_total",
                   "flespi_bridge_invalid_inputs_total",
                   "flespi_bridge_connection_up", "flespi_bridge_queue_depth",
                   "flespi_bridge_device_online", "flespi_bridge_devices_online"):
        assert metric in text, f"no panel shows {metric}"
    assert re.search(r"histogram_quantile\(0\.99, sum by \(le\) \(rate\("
                     r"flespi_bridge_processing_latency_seconds_bucket", text)
    table = by_title["Fleet battery"]
    assert table["type"] == "table"
    assert any("flespi_bridge_device_battery_percent" in t["expr"] for t in table["targets"])
    assert by_title["Battery level"]["type"] == "timeseries"
    assert "{{device_name}}" in by_title["Battery level"]["targets"][0]["legendFormat"]


# --- names used vs names exported -------------------------------------------------------

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
             "group_right", "bool", "offset", "inf", "nan", "atan2"}


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression uses. A small tokenizer, enough for the
    PromQL of alerts and dashboards: label matchers, grouping clauses, ranges, functions."""
    labels: set[str] = set()
    # label matchers, before the strings in them are dropped
    for block in re.findall(r"\{([^{}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", block))
    rest = re.sub(r"\{[^{}]*\}", " ", expr)
    rest = re.sub(r'"(?:[^"\\]|\\.)*"', " ", rest)
    for clause in re.findall(
            r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", rest):
        labels |= {name.strip() for name in clause.split(",") if name.strip()}
    rest = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ",
                  rest)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)
    rest = re.sub(r"\boffset\s+\w+", " ", rest)
    metrics = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", rest):
        name, call = match.group(1), match.group(2)
        if call or name in _KEYWORDS or re.fullmatch(r"\d\w*", name):
            continue
        metrics.add(name)
    return metrics, labels


def test_promql_names_finds_metrics_and_labels() -> None:
    """The tokenizer below is what the name checks rely on: it must not miss names."""
    metrics, labels = promql_names(
        'histogram_quantile(0.9, sum by (le, kind) (rate(flespi_bridge_x_bucket{job=~"a|b",'
        ' side!="up"}[5m]))) / on (instance) group_left (zone) up offset 5m '
        '+ count(flespi_bridge_typo == 0) or vector(0)')
    assert metrics == {"flespi_bridge_x_bucket", "up", "flespi_bridge_typo"}
    assert labels == {"le", "kind", "job", "side", "instance", "zone"}


def exported_schema(exposition: str) -> tuple[set[str], set[str], set[str]]:
    """(series names, label names, metric names as documented) of a scrape, families
    without samples included."""
    names: set[str] = set()
    labels: set[str] = set()
    documented: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        if family.type == "counter":
            names.add(family.name + "_total")
            documented.add(family.name + "_total")
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_count", "_sum")}
            documented.add(family.name)
        else:
            names.add(family.name)
            documented.add(family.name)
        for sample in family.samples:
            names.add(sample.name)
            labels |= set(sample.labels)
    return names, labels, documented


@pytest.fixture
async def scrape_text(upstream: mosquitto.Broker, local: mosquitto.Broker, sim: Simulator,
                      bridge_factory: BridgeFactory) -> str:
    """A real scrape of a bridge with the default metrics settings, after the simulator's
    fleet arrived, an invalid input was rejected, and a command and a drop were counted
    (as the command gateway and the publisher count them)."""
    bridge = await bridge_factory(make_settings(upstream, local))
    await asyncio.wait_for(bridge.loaded.wait(), 30)
    topic = f"flespi/state/gw/devices/{next(iter(sim.devices))}/telemetry/battery.level"
    async with aiomqtt.Client(upstream.host, upstream.port) as client:
        await client.publish(topic, b"{not json", qos=1)
    bridge.stats.commands["ok"] += 1
    bridge.stats.dropped["example"] += 1
    assert bridge.health is not None
    url = f"http://127.0.0.1:{bridge.health.port}/metrics"
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            text = (await client.get(url)).text
            values = {(s.name, tuple(sorted(s.labels.items()))): s.value
                      for f in text_string_to_metric_families(text) for s in f.samples}
            bad = ("flespi_bridge_invalid_inputs_total",
                   (("reason", "bad_json"), ("source", "upstream")))
            latency = ("flespi_bridge_processing_latency_seconds_count", ())
            if values.get(bad) == 1 and values.get(latency, 0) > 0:
                return text
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("the bridge did not count the fleet and the bad input")
            await asyncio.sleep(0.05)


def test_alerts_use_only_exported_metrics_and_labels(scrape_text: str) -> None:
    names, labels, _ = exported_schema(scrape_text)
    used_metrics: set[str] = set()
    for rule in alert_rules():
        metrics, used_labels = promql_names(rule["expr"])
        templated = set(re.findall(r"\$labels\.(\w+)", json.dumps(rule["annotations"])))
        assert metrics - names - {"up"} == set(), rule["alert"]
        assert (used_labels | templated) - labels - TARGET_LABELS == set(), rule["alert"]
        used_metrics |= metrics
    assert {"flespi_bridge_device_battery_percent", "flespi_bridge_device_online",
            "flespi_bridge_connection_up", "flespi_bridge_reconnects_total", "up"} <= used_metrics


def test_dashboard_uses_only_exported_metrics_and_labels(scrape_text: str) -> None:
    names, labels, _ = exported_schema(scrape_text)
    used_metrics: set[str] = set()
    for expr in dashboard_queries(dashboard()):
        metrics, used_labels = promql_names(expr)
        assert metrics - names - {"up"} == set(), expr
        assert used_labels - labels - TARGET_LABELS == set(), expr
        used_metrics |= metrics
    legends = [t.get("legendFormat", "") for p in panels(dashboard()) for t in p.get("targets", [])]
    for legend in legends:
        assert set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)) - labels - TARGET_LABELS == set()
    assert len(used_metrics) >= 15


def test_docs_document_every_exported_metric(scrape_text: str) -> None:
    _, labels, documented = exported_schema(scrape_text)
    page = MONITORING_PAGE.read_text(encoding="utf-8")
    assert len(documented) >= 19
    missing = sorted(n for n in documented if f"`{n}`" not in page)
    assert not missing, f"docs/monitoring.md does not list {missing}"
    missing = sorted(label for label in labels if f"`{label}`" not in page)
    assert not missing, f"docs/monitoring.md does not describe the labels {missing}"
