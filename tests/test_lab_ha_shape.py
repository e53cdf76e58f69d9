"""`lab up --ha`'s definitions, without a lab: what every process is given and in which order Prefect's parts
are started. (The shape itself running under faults is tests/test_prefect_ha.py; the lab brought up in it is
measured in the README.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lab import services, topology

ROOT = Path(__file__).resolve().parent.parent

READ_ENV = """
import sys
from pathlib import Path
from lab import services, topology
paths = topology.Paths(Path(sys.argv[1]))
if sys.argv[2] == "ha":
    (paths.root / topology.HA_MARKER).write_text("")
env = services.runbook_env(paths)
print(env.get("PREFECT_API_AUTH_STRING", "-").split(":")[0], "prefect" in sys.modules)
"""


def read_env(root: Path, shape: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", READ_ENV, str(root), shape], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_ha_labs_login_reaches_runbook_env_before_prefect_is_imported(tmp_path):
    # Prefect reads its settings once, when it is imported: a caller sets runbook_env() first, so computing
    # it must not import Prefect (it once did, and every client of the HA lab talked to a temporary server).
    (tmp_path / "ha").mkdir()
    (tmp_path / "embedded").mkdir()
    assert read_env(tmp_path / "ha", "ha") == ["runbooks", "False"]
    assert read_env(tmp_path / "embedded", "embedded") == ["-", "False"]


def test_the_ha_shape_leaves_prefect_stopped_for_up_to_start_in_order_and_keeps_the_url(tmp_path):
    paths = topology.Paths(tmp_path)
    (tmp_path / topology.HA_MARKER).write_text("")
    programs = {p.name: p for p in services.prefect_programs(paths, ha=True)}
    assert "prefect-server" not in programs
    regional = [f"{kind}-{region}" for kind in ("prestart", "worker") for region in topology.worker_hosts()]
    assert len(regional) == 2 * len({h.region for h in topology.HOSTS.values()})
    started_by_up = ["prefect-api-1", "prefect-api-2", "prefect-services", "prefect-lb", *regional]
    assert all(not programs[name].autostart for name in started_by_up)
    assert programs["redis"].autostart  # before the migration, with the rest of the lab
    ha = services.lab_ha(paths)
    assert ha.api_url == topology.PREFECT_API_URL  # clients see one URL in both shapes
    # The login and the database password reach processes through their environment, never their argv.
    password = ha.auth_string.split(":", 1)[1]
    for p in programs.values():
        assert password not in " ".join(p.argv)
    embedded = {p.name for p in services.prefect_programs(topology.Paths(tmp_path / "x"), ha=False)}
    gateways = {"gateway", *(f"gateway-{region}" for region in topology.worker_hosts())}
    assert embedded == {"prefect-server", *regional, *gateways}
