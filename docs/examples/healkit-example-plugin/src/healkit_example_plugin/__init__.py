"""The example plugin of healkit's plugin guide: one request id per call.

Every attempt of a call carries the same request id header, so the server's
logs can tie retries together. Configured per service::

    [services.payments.request_id]
    header = "X-Request-Id"   # the header to set
    enabled = true
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Final, final

import msgspec

import healkit

__all__ = ["REQUEST_ID", "SECTION", "RequestIdPlugin", "RequestIdSettings"]


@final
class RequestIdSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``request_id`` section: which header carries the id, and whether to set it."""

    header: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9-]{1,64}$")] = "X-Request-Id"
    enabled: bool = True


SECTION: Final = healkit.ConfigSection(
    "request_id", RequestIdSettings, doc="a request id header per call"
)

REQUEST_ID: Final = healkit.StashKey[str]("healkit_example_plugin.request_id")
"""Where the plugin keeps the call's id (other plugins may read it)."""


@final
class RequestIdPlugin:
    """Sets one id per call, the same on every attempt; keeps an id the caller set."""

    __slots__ = ()

    healkit_name = "request-id"
    """The plugin's name, whether loaded from its entry point or passed explicitly."""

    @healkit.hookimpl
    def healkit_config_sections(self) -> Sequence[healkit.ConfigSection[Any]]:
        """Contribute the ``request_id`` section."""
        return (SECTION,)

    @healkit.hookimpl
    def healkit_pre_request(self, call: healkit.CallContext) -> None:
        """On the first attempt, choose the id and add it to the call's headers."""
        settings = call.policy.section(SECTION)
        if not settings.enabled or call.transport != "http" or REQUEST_ID in call.stash:
            return
        request_id = call.headers.get(settings.header) or uuid.uuid4().hex
        call.headers[settings.header] = request_id
        call.stash[REQUEST_ID] = request_id
