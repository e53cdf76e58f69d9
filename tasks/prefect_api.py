"""The one way to talk to the Prefect API from the building blocks: a bounded sync client.

Prefect's own client waits as long as httpx's default lets it and retries up
to five times with back-off on connection errors and 5xx answers: a guard
that cannot reach the API would say so after a minute instead of within its
timeout. Every call here is bounded by `timeout` per request, and callers
that must answer quickly (the pause switch, leases) turn the retries off.

Prefect is imported when a client is asked for, not at import time, so
the modules that use this stay cheap to import.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from prefect.client.orchestration import SyncPrefectClient

# Every call to the Prefect API made by the building blocks is bounded by this.
API_TIMEOUT_S = 10.0


@contextmanager
def client(timeout: float = API_TIMEOUT_S, retries: bool = False) -> Iterator["SyncPrefectClient"]:
    """A sync Prefect client whose every request is bounded by `timeout` seconds.

    retries=False (the default) turns off the client's own retries, so a
    failing API costs at most `timeout` per request.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    settings = {} if retries else {PREFECT_CLIENT_MAX_RETRIES: 0}
    with temporary_settings(settings), get_client(sync_client=True, httpx_settings={"timeout": timeout}) as c:
        yield c
