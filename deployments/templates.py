"""Render the Prometheus and Alertmanager configs we ship from their templates.

The templates (deployments/prometheus/prometheus.yml.tmpl,
deployments/alertmanager/alertmanager.yml.tmpl) hold `${NAME}` placeholders
for what differs per installation: addresses, the bridge URL, the path of the
bridge's token file. Secrets are never rendered in: Alertmanager reads the
token from its file when it sends.

    text = render_alertmanager_config(bridge_url="http://127.0.0.1:19200/alerts",
                                      bridge_token_file="/var/lib/rblab/bridge.token")
"""

from __future__ import annotations

import string
from pathlib import Path

HERE = Path(__file__).resolve().parent
RULES_FILE = HERE / "prometheus" / "rules.yml"
PROMETHEUS_TEMPLATE = HERE / "prometheus" / "prometheus.yml.tmpl"
ALERTMANAGER_TEMPLATE = HERE / "alertmanager" / "alertmanager.yml.tmpl"


class TemplateError(ValueError):
    """A placeholder was left without a value, or a value was not expected."""


def placeholders(template: Path) -> set[str]:
    return {m.group("braced") or m.group("named")
            for m in string.Template.pattern.finditer(template.read_text())
            if m.group("braced") or m.group("named")}


def render(template: Path, values: dict[str, str]) -> str:
    """The template with every placeholder filled; refuses missing or unknown names."""
    wanted = placeholders(template)
    missing, unknown = wanted - values.keys(), values.keys() - wanted
    if missing or unknown:
        raise TemplateError(f"{template.name}: missing values for {sorted(missing)}, unknown names {sorted(unknown)}")
    for name, value in values.items():
        # Values land inside double-quoted YAML scalars.
        if any(c in str(value) for c in '"\\\n\r'):
            raise TemplateError(f"{template.name}: value of {name} must not contain quotes, backslashes or newlines")
    return string.Template(template.read_text()).substitute({k: str(v) for k, v in values.items()})


def render_prometheus_config(exporter_address: str, alertmanager_address: str,
                             rules_file: Path | str = RULES_FILE) -> str:
    return render(PROMETHEUS_TEMPLATE, {"EXPORTER_ADDRESS": exporter_address,
                                        "ALERTMANAGER_ADDRESS": alertmanager_address,
                                        "RULES_FILE": str(rules_file)})


def render_alertmanager_config(bridge_url: str, bridge_token_file: Path | str) -> str:
    return render(ALERTMANAGER_TEMPLATE, {"BRIDGE_URL": bridge_url, "BRIDGE_TOKEN_FILE": str(bridge_token_file)})
