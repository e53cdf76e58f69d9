"""`python -m deployments.register --paused`: prefect.yaml as shipped, with every schedule and trigger off.

That the server then has them off is checked by register.main itself (trigger_problems(paused=True)) each time
the suite registers the lab's deployments.
"""

from __future__ import annotations

import yaml

from deployments import register


def test_the_paused_copy_is_prefect_yaml_with_every_schedule_and_trigger_off(tmp_path):
    shipped = yaml.safe_load((register.ROOT / "prefect.yaml").read_text())
    paused = yaml.safe_load(register._paused_copy(tmp_path).read_text())
    schedules = [s for d in paused["deployments"] for s in d.get("schedules") or []]
    triggers = [t for d in paused["deployments"] for t in d.get("triggers") or []]
    # As shipped, some are on (so the copy has something to switch off); in the copy, none is.
    assert any(s.get("active", True) for d in shipped["deployments"] for s in d.get("schedules") or [])
    assert any(t.get("enabled", True) for d in shipped["deployments"] for t in d.get("triggers") or [])
    assert schedules and not any(s["active"] for s in schedules)
    assert triggers and not any(t["enabled"] for t in triggers)
    # Nothing else changed: the same deployments, parameters, trigger templates, work pool, pull steps.
    for d in shipped["deployments"]:
        for s in d.get("schedules") or []:
            s["active"] = False
        for t in d.get("triggers") or []:
            t["enabled"] = False
    assert paused == shipped
