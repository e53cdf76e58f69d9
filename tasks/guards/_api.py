"""The bounded Prefect client the guards use.

TODO: replace with `tasks.prefect_api.client` once it lands (same signature).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def client(timeout: float, retries: bool = False) -> Iterator[Any]:
    """A sync Prefect client whose every request is bounded by `timeout`.

    retries=False turns off the client's own retries (up to 5, with
    back-off, on connection errors and 5xx): a guard that cannot reach the
    API must say so within `timeout`, not after a minute of retrying.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    settings = {} if retries else {PREFECT_CLIENT_MAX_RETRIES: 0}
    with temporary_settings(settings), get_client(sync_client=True, httpx_settings={"timeout": timeout}) as c:
        yield c
