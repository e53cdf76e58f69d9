"""The alert rules and monitoring configs we ship are valid and behave as the runbooks expect.

Validated by the real tools (promtool from Debian's prometheus, amtool from
prometheus-alertmanager); alert behaviour by `promtool test rules` against
tests/prometheus/rules_test.yml.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deployments import templates
from deployments.disk_facts import DiskFacts, DiskSample
from deployments.exporter import FleetCollector
from inventory import Inventory
from tasks.probes.assessment import Assessment, Sweep
from tasks.probes.model import NodeProbe

ROOT = Path(__file__).resolve().parent.parent
RULES = templates.RULES_FILE
RULE_TESTS = ROOT / "tests" / "prometheus" / "rules_test.yml"


def tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.skip(f"{name} is not installed (Debian: prometheus / prometheus-alertmanager)")
    return path


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def test_promtool_accepts_the_rules():
    result = run(tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_every_alert_rule_passes_its_unit_tests():
    result = run(tool("promtool"), "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_names_its_cause_severity_and_a_summary():
    by_name = {r["alert"]: r for r in alert_rules()}
    assert set(by_name) == {"NodeDown", "NodeStalled", "NodeLagging", "DiskFilling", "DiskCritical", "DiskSpaceWarning"}
    reasons = {name: r["labels"]["reason"] for name, r in by_name.items()}
    assert reasons == {"NodeDown": "down", "NodeStalled": "stalled", "NodeLagging": "lagging", "DiskFilling": "disk",
                       "DiskCritical": "disk", "DiskSpaceWarning": "disk"}
    for name, rule in by_name.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name
        assert rule.get("for"), f"{name} has no `for:`: one bad sample would page"


def test_every_alert_is_tested_and_the_start_up_case_of_the_stall_rule_too():
    spec = yaml.safe_load(RULE_TESTS.read_text())
    tested = {t["alertname"] for case in spec["tests"] for t in case.get("alert_rule_test", [])}
    assert tested == {r["alert"] for r in alert_rules()}
    assert any("start-up" in case["name"] for case in spec["tests"])


def test_the_rules_use_only_metrics_the_exporter_exports():
    """A renamed metric would silently disable an alert."""
    inventory = Inventory.model_validate({
        "chains": {"c": {"family": "ethereum", "references": ["http://127.0.0.1:1"], "max_lag_blocks": 5,
                         "max_head_age_seconds": 8.0}},
        "hosts": {"h": {"address": "127.0.0.1", "ssh_user": "ops", "ssh_identity_block": "b", "region": "r"}},
        "nodes": {"n": {"chain": "c", "client": "anvil", "host": "h", "service": {"manager": "supervisor", "name": "n"},
                        "rpc_url": "http://127.0.0.1:2", "datadir": "/var/tmp/n"}},
    })
    reference = NodeProbe(name="ref:c:0", url="http://127.0.0.1:1", ok=True, head=1, latency_s=0.01)
    sweep = Sweep(nodes={"n": Assessment("n", "healthy", "", 1, 1, 0, 0.0, None, chain="c", up=True,
                                         head_timestamp=1.0, latency_s=0.01)},
                  references={"c": [reference]}, completed_at=1.0, duration_s=0.1)
    disks = DiskFacts()
    disks.add([DiskSample("n", 1.0, 100, 50, 50, 40), DiskSample("n", 2.0, 100, 51, 49, 41)])
    collector = FleetCollector(disks)
    collector.publish(inventory, sweep)
    exported = {s.name for family in collector.collect() for s in family.samples}
    for rule in alert_rules():
        used = set(re.findall(r"\brunbooks_[a-z_]+", rule["expr"]))
        assert used <= exported, (rule["alert"], used - exported)


def test_the_rendered_prometheus_config_is_valid(tmp_path):
    config = tmp_path / "prometheus.yml"
    config.write_text(templates.render_prometheus_config("127.0.0.1:19100", "127.0.0.1:19093"))
    result = run(tool("promtool"), "check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    parsed = yaml.safe_load(config.read_text())
    assert parsed["global"]["scrape_interval"] == parsed["global"]["evaluation_interval"] == "1s"
    assert parsed["rule_files"] == [str(RULES)]


def test_the_rendered_alertmanager_config_is_valid_and_keeps_the_token_out(tmp_path):
    token_file = tmp_path / "bridge.token"
    token_file.write_text("brg-secret-value\n")
    config = tmp_path / "alertmanager.yml"
    config.write_text(templates.render_alertmanager_config("http://127.0.0.1:19200/alerts", token_file))
    result = run(tool("amtool"), "check-config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    text = config.read_text()
    assert "brg-secret-value" not in text
    parsed = yaml.safe_load(text)
    route = parsed["route"]
    assert route["group_by"] == ["node", "alertname"] and route["group_wait"] == "0s"
    [webhook] = parsed["receivers"][0]["webhook_configs"]
    assert webhook["send_resolved"] is True
    assert webhook["url"] == "http://127.0.0.1:19200/alerts"
    assert webhook["http_config"]["authorization"] == {"type": "Bearer", "credentials_file": str(token_file)}


def test_a_template_refuses_missing_or_unexpected_values():
    with pytest.raises(templates.TemplateError, match="missing values for .'BRIDGE_TOKEN_FILE'."):
        templates.render(templates.ALERTMANAGER_TEMPLATE, {"BRIDGE_URL": "http://x/alerts"})
    with pytest.raises(templates.TemplateError, match="unknown names .'TYPO'."):
        templates.render(templates.ALERTMANAGER_TEMPLATE,
                         {"BRIDGE_URL": "http://x", "BRIDGE_TOKEN_FILE": "/t", "TYPO": "1"})
    with pytest.raises(templates.TemplateError, match="quotes"):
        templates.render_alertmanager_config('http://x/"alerts', "/t")
