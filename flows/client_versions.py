"""Report: every node's client version against the newest release and its chain's pinned version.

Read-only, daily: what each node reports (web3_clientVersion, parsed) beside the newest release its
client's release source lists (pre-releases left out), and the nodes that drift from the version
their chain pins (inventory `chains.<c>.pinned_versions`). A table artifact and one Slack message
when something drifts; no audit record (nothing changes).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from inventory import load_inventory
from tasks import slack
from tasks.probes.evm import version_key
from tasks.releases import ReleaseSource, ReleaseSourceError, newest, normalize_version
from tasks.redaction import register_secret
from tasks.steps import assess_nodes


def _norm(version: str | None) -> str | None:
    try:
        return normalize_version(version) if version else None
    except Exception:  # noqa: BLE001 - an odd string is reported as it is
        return version


def version_rows(inventory) -> list[dict]:
    newest_by_client: dict[str, str] = {}
    for client, spec in inventory.releases.items():
        try:
            found = newest(ReleaseSource(client.value, spec.base_url, spec.index_url).releases()) if spec.index_url else None
            newest_by_client[client.value] = found.version if found else "unknown"
        except (ReleaseSourceError, ValueError) as exc:
            newest_by_client[client.value] = f"unreadable: {str(exc)[:120]}"
    rows = []
    for name, a in sorted(assess_nodes(inventory, sorted(inventory.nodes)).items()):
        node = inventory.nodes[name]
        running = _norm(a.version)
        pinned = inventory.chains[node.chain].pinned_versions.get(node.client)
        pinned = _norm(pinned)
        latest = newest_by_client.get(node.client.value, "no release source")
        behind = bool(running and latest[:1].isdigit() and version_key(running) < version_key(latest))
        rows.append({"node": name, "chain": node.chain, "client": node.client.value, "running": running or "unknown",
                     "pinned": pinned or "-", "newest": latest, "drifts": bool(pinned and running != pinned),
                     "behind_newest": behind})
    return rows


@flow(name="client-versions", log_prints=True)
def client_versions() -> dict:
    """Each node's running version, the newest release, the chain's pin; the nodes that drift."""
    inventory = load_inventory()
    rows = version_rows(inventory)
    create_table_artifact(rows, key="client-versions", description="client versions: running, pinned, newest")
    drifting = [r for r in rows if r["drifts"]]
    text = (f"{len(drifting)} node(s) drift from their chain's pinned version: "
            + ", ".join(f"{r['node']} runs {r['running']} (pinned {r['pinned']})" for r in drifting)) if drifting \
        else f"every pinned node runs its pinned version ({len(rows)} nodes)"
    get_run_logger().info(text)
    if drifting and inventory.notifications.slack_block:
        from blocks import SlackWorkspace

        workspace = SlackWorkspace.load(inventory.notifications.slack_block)
        register_secret(workspace.token.get_secret_value())
        try:
            slack.post(workspace, text=f"client-versions: {text}", blocks=[])
        except Exception as exc:  # noqa: BLE001 - the report stands without Slack
            get_run_logger().warning("Slack: %s", exc)
    return {"nodes": rows, "drifting": [r["node"] for r in drifting], "summary": text}
