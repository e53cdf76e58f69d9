"""One Prefect worker per region, on a host of that region: a run for a node executes in the node's region.

    python -m deployments.regional_worker --region eu-west --pool runbooks [--name NAME]

Every runbook has one deployment in one work pool, and each region's worker polls that pool but takes only
the runs that belong to its region: the region of the host the run works on (a restore's target, a prune's
host), else of its node (`Inventory.run_region`). A fleet-wide run (fleet-health, the daily report) belongs
to no region; the first worker to claim it runs it. Prefect lets one worker claim a run (the move to
Pending is refused to the second), so two workers never both run it.

Routing by the run's parameters rather than by one work queue per region, because Prefect's automations
create a triggered run in its deployment's queue and cannot choose another (the `run-deployment` action
has no queue field): per-region queues would need one deployment per runbook and region, and an operator
starting a run from the UI would have to pick the right one.

Fallback: a run still waiting `fallback_after_seconds` after it was due is taken by the worker of its
region's `fallback` (the inventory's `regions:`), so a region that lost its worker, its host or its network
still gets its nodes handled. The run learns where it runs from RUNBOOKS_REGION (this worker's region, in
the environment it hands every run) and its audit record says so (`tasks/runbook.py`).

The inventory is read again when its file changes; a broken edit keeps the last good one (and logs why).
"""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import datetime, timezone
from pathlib import Path

from tasks.vocabulary import REGION_ENV


def takes(inventory, parameters: dict, waited_seconds: float, my_region: str) -> str | None:
    """Whether the worker of `my_region` takes a run: "own" (its region's, or fleet-wide), "fallback"
    (another region's that has waited past that region's bound, and `my_region` is its fallback), or None."""
    region = inventory.run_region(parameters)
    if region is None or region == my_region:
        return "own"
    policy = inventory.regions.get(region)
    if policy is not None and policy.fallback == my_region and waited_seconds >= policy.fallback_after_seconds:
        return "fallback"
    return None


class _InventoryFile:
    """The inventory, read again when the file changes; the last good one when an edit does not validate."""

    def __init__(self, path: str, log) -> None:
        self.path, self.log = Path(path), log
        self._seen: tuple | None = None
        self._inventory = None

    def get(self):
        from inventory import load_inventory

        try:
            st = self.path.stat()
            seen = (st.st_mtime_ns, st.st_size)
        except OSError as exc:
            seen = repr(exc)
        if seen != self._seen:
            self._seen = seen
            try:
                self._inventory = load_inventory(self.path)
            except Exception as exc:  # noqa: BLE001 - keep routing with the last good inventory
                self.log.error("inventory %s does not load, routing with the last good one: %s", self.path, exc)
        return self._inventory


def worker_class():
    """Built on first use: importing Prefect reads its settings, which callers must set first."""
    import warnings

    from prefect.workers.process import ProcessWorker

    # It keeps the pool's worker type ("process"), so Prefect's type registry (in this process only) now
    # maps "process" to it; Prefect warns about that, and it is what we want.
    warnings.filterwarnings("ignore", message="Type 'RegionalWorker' .* has key 'process'")

    class RegionalWorker(ProcessWorker):
        def __init__(self, *args, region: str, inventory_path: str, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.region = region
            self._inventory = _InventoryFile(inventory_path, self._logger)
            self._announced: set = set()

        # The one seam: the base worker's poll, filtered. A private method of Prefect's, pinned at the
        # version in uv.lock (3.9.1); tests/test_regions.py fails if an upgrade changes it.
        async def _get_scheduled_flow_runs(self):
            responses = await super()._get_scheduled_flow_runs()
            inventory = self._inventory.get()
            if inventory is None:
                return []  # no inventory yet: no way to know which runs are ours
            now = datetime.now(timezone.utc)
            mine = []
            for response in responses:
                run = response.flow_run
                due = run.next_scheduled_start_time or run.expected_start_time or now
                verdict = takes(inventory, run.parameters or {}, (now - due).total_seconds(), self.region)
                if verdict is None:
                    continue
                if verdict == "fallback" and run.id not in self._announced:
                    if len(self._announced) > 10_000:  # runs announced long ago; a repeat line is harmless
                        self._announced.clear()
                    self._announced.add(run.id)
                    waited_for = inventory.run_region(run.parameters or {})
                    self.get_flow_run_logger(run).warning(
                        "region %s has not taken this run for %.0f s: its fallback region %s takes it",
                        waited_for, (now - due).total_seconds(), self.region)
                mine.append(response)
            return mine

    return RegionalWorker


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--region", required=True, help="the region whose runs this worker takes")
    parser.add_argument("--pool", required=True, help="the work pool to poll")
    parser.add_argument("--name", help="the worker's name (default: region-<region>)")
    parser.add_argument("--inventory", default=os.environ.get("RUNBOOKS_INVENTORY", "inventory.yaml"))
    args = parser.parse_args(argv)
    os.environ[REGION_ENV] = args.region  # handed to every run it starts (the process worker passes its env on)

    from prefect.settings import (
        PREFECT_WORKER_HEARTBEAT_SECONDS,
        PREFECT_WORKER_PREFETCH_SECONDS,
    )
    from prefect.utilities.processutils import setup_signal_handlers_worker

    setup_signal_handlers_worker(os.getpid(), f"the {args.region} worker", print)
    worker = worker_class()(
        name=args.name or f"region-{args.region}", work_pool_name=args.pool, region=args.region,
        inventory_path=args.inventory, prefetch_seconds=PREFECT_WORKER_PREFETCH_SECONDS.value(),
        heartbeat_interval_seconds=int(PREFECT_WORKER_HEARTBEAT_SECONDS.value()))
    asyncio.run(worker.start(printer=print))


if __name__ == "__main__":
    main()
