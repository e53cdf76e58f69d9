"""Endpoints: a URL written in the inventory, or the name of a Prefect Secret
block that holds it.

Provider URLs carry their API key in the path (`https://eth-mainnet.example/v2/KEY`),
so they cannot be written in a file kept in git. Such an endpoint is written

    rpc_url: {secret: mainnet-rpc}

and the URL is read from the Secret block `mainnet-rpc` only where a request
is about to be sent (`endpoint_url`). Loading the inventory never talks to
Prefect: the block name is checked for form only.
"""

from __future__ import annotations

import threading
import time
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, HttpUrl, Tag, TypeAdapter, ValidationError

from inventory.yamlfile import credentials_problem

# Prefect's own rule for block document names (prefect.types.names): lowercase
# letters, digits and dashes. Checked here so a bad name fails at load, not mid-run.
SECRET_BLOCK_NAME_RE = r"^[a-z0-9][a-z0-9-]{0,62}$"

# How long a resolved URL is reused. The exporter sweeps every second; without
# this every sweep would be one Prefect API call per secret endpoint. A rotated
# key is picked up within this time.
RESOLVED_TTL_SECONDS = 60.0


class EndpointError(ValueError):
    """A Secret block named by the inventory could not give a usable URL."""


def _no_credentials(url: HttpUrl) -> HttpUrl:
    # load_inventory refuses these with the line number before validation;
    # this covers models built in code.
    if url.username or url.password:
        problem = credentials_problem(str(url))
        raise ValueError(problem or "the URL carries credentials; put it in a Prefect Secret block")
    return url


PlainUrl = Annotated[HttpUrl, AfterValidator(_no_credentials)]


class SecretEndpoint(BaseModel):
    """An endpoint whose URL lives in a Prefect Secret block (it carries an API key)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    secret: Annotated[str, Field(
        pattern=SECRET_BLOCK_NAME_RE,
        description="Name of the Prefect Secret block holding the URL (lowercase letters, digits, -)",
    )]

    def __str__(self) -> str:
        # Never the URL: this is what plans, logs and errors may show.
        return f"<Secret block {self.secret}>"


def _kind(value: Any) -> str:
    return "(secret block)" if isinstance(value, (dict, SecretEndpoint)) else "(url)"


# A URL string or {secret: block-name}. The tags appear in pydantic's error
# locations; load_inventory drops them (parenthesised so no key can look like one).
Endpoint = Annotated[
    Annotated[PlainUrl, Tag("(url)")] | Annotated[SecretEndpoint, Tag("(secret block)")],
    Discriminator(_kind),
]

_url_adapter = TypeAdapter(HttpUrl)
_cache_lock = threading.Lock()
_cache: dict[str, tuple[float, str]] = {}


def _load_secret(name: str) -> Any:
    """The value of the Secret block `name` (a Prefect API call)."""
    from prefect.blocks.system import Secret  # here: loading the inventory needs no Prefect

    # _sync: the sweep is sync code, but may be called under an async flow's context.
    return Secret.load(name, _sync=True).get()


def resolve_secret_url(name: str) -> str:
    """The http(s) URL held by the Secret block `name`, registered for redaction
    before anything can echo it. EndpointError (never showing the value) otherwise."""
    from tasks.redaction import register_secret

    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get(name)
    if hit and hit[0] > now:
        return hit[1]
    try:
        value = _load_secret(name)
    except Exception as exc:  # noqa: BLE001 - missing block, server down...: one clear error
        raise EndpointError(
            f"Secret block {name!r} could not be loaded ({type(exc).__name__}: {exc}); "
            f"create it with the endpoint URL as its value"
        ) from None
    if not isinstance(value, str):
        raise EndpointError(f"Secret block {name!r} must hold the endpoint URL as a string, not {type(value).__name__}")
    url = value.strip()
    register_secret(url)
    try:
        _url_adapter.validate_python(url)
    except ValidationError:
        raise EndpointError(f"Secret block {name!r} does not hold an http(s) URL") from None
    with _cache_lock:
        _cache[name] = (now + RESOLVED_TTL_SECONDS, url)
    return url


def endpoint_url(endpoint: HttpUrl | SecretEndpoint | str) -> str:
    """The URL to send requests to: the inventory's own, or its Secret block's."""
    if isinstance(endpoint, SecretEndpoint):
        return resolve_secret_url(endpoint.secret)
    return str(endpoint)


def forget_resolved() -> None:
    """Drop cached URLs (tests; or after rotating a key, to not wait for the TTL)."""
    with _cache_lock:
        _cache.clear()
