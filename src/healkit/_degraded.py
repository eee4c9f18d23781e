"""Degraded responses: a built-in plugin answering for a service that cannot.

Configured per service in the ``degraded`` section. With a ``template``, an HTTP
call of the service gets the template's response, marked ``degraded``
(``response.outcome.path`` and the ``Healkit-Outcome`` header):

* at once, when the upstream answers one of ``on_statuses`` (503 and 504 by
  default): no retry is made for it;
* when the call failed for good (every attempt and every other fallback
  failed), unless ``when_failed = false``;
* for every call while ``force = true``: nothing is sent (an operator's switch,
  one configuration write).

Without a template the plugin does nothing. Decorated functions are never
answered by a template (a Response is not their return type): in forced mode
they raise :class:`~healkit.DegradedModeError` without being called.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Annotated, Any, Final, final

import msgspec

from healkit._config.models import ConfigSection, HealkitConfig, ServicePolicy
from healkit._context import AttemptContext, CallContext, Fallback, RetryDecision
from healkit._errors import CircuitOpenError, DegradedModeError, HealkitError, HTTPStatusError
from healkit._response import Response
from healkit._stash import StashKey
from healkit._templates import DegradedTemplate
from healkit.hookspecs import hookimpl

__all__ = ["SECTION", "DegradedResponses", "DegradedSettings"]

REQUEST_ID_HEADER: Final = "X-Request-ID"
EXCERPT_BYTES: Final = 200

Status = Annotated[int, msgspec.Meta(ge=400, le=599)]


@final
class DegradedSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``degraded`` section of a service document.

    Attributes:
        template: the degraded response (``None``: the service has none, and
            nothing below applies).
        on_statuses: upstream statuses answered with the template at once,
            without a retry.
        when_failed: answer with the template when the call failed for good.
        force: answer every call with the template without sending anything.

    """

    template: DegradedTemplate | None = None
    on_statuses: tuple[Status, ...] = (503, 504)
    when_failed: bool = True
    force: bool = False

    def __post_init__(self) -> None:
        """Reject a forced degraded mode without a template, and repeated statuses."""
        if self.force and self.template is None:
            raise ValueError("force = true needs a template to answer with")
        if len(set(self.on_statuses)) != len(self.on_statuses):
            raise ValueError("on_statuses must not repeat")


SECTION: Final = ConfigSection(
    "degraded", DegradedSettings, doc="a degraded response template per service"
)
"""The ``degraded`` section; read it with ``policy.section(SECTION)``."""

_SETTINGS: Final = StashKey[DegradedSettings]("healkit.degraded")
_TEMPLATED: Final = StashKey[bool]("healkit.degraded.templated")


def _templated(config: HealkitConfig) -> bool:
    """Whether a policy of ``config`` has a template."""
    policies = (config.defaults, *config.services.values())
    return any(policy.section(SECTION).template is not None for policy in policies)


@final
class DegradedResponses:
    """The built-in plugin behind the ``degraded`` section (registered as ``degraded``)."""

    healkit_name = "degraded"

    @hookimpl
    def healkit_prepare(self, config: HealkitConfig) -> None:
        """Note whether some service has a template (off the event loop)."""
        config.stash[_TEMPLATED] = _templated(config)

    @hookimpl
    def healkit_idle(self, config: HealkitConfig) -> bool:
        """Whether no service has a template: the plugin then stays out of the call plan."""
        templated = config.stash.get(_TEMPLATED)  # None: healkit_prepare failed
        return not (_templated(config) if templated is None else templated)

    @hookimpl
    def healkit_config_sections(self) -> Sequence[ConfigSection[Any]]:
        """Contribute the ``degraded`` section."""
        return (SECTION,)

    @hookimpl(tryfirst=True)
    def healkit_pre_request(
        self, call: CallContext, attempt: AttemptContext
    ) -> DegradedModeError | None:
        """Refuse every attempt of a service forced into degraded mode."""
        del attempt
        # _settings(), inlined: this runs before every attempt of every call.
        settings = call.policy.stash.get(_SETTINGS) or _settings(call.policy)
        return DegradedModeError(call.service) if settings.force else None

    @hookimpl(tryfirst=True)
    def healkit_post_response(
        self, call: CallContext, attempt: AttemptContext, response: Response | None
    ) -> HealkitError | None:
        """Declare a response with one of ``on_statuses`` a failure, if there is a template."""
        del attempt
        if response is None or response.status < 400:  # every status listed is >= 400
            return None
        settings = _settings(call.policy)
        if settings.template is None or response.status not in settings.on_statuses:
            return None
        excerpt = b"" if response.is_streaming else response.body[:EXCERPT_BYTES]
        return HTTPStatusError(
            response.status, url=response.url, body_excerpt=excerpt.decode("utf-8", "replace")
        )

    @hookimpl(tryfirst=True)
    def healkit_on_error(
        self, call: CallContext, attempt: AttemptContext, error: HealkitError
    ) -> RetryDecision | None:
        """Stop at once when the template answers this error: no retry, no wait."""
        if isinstance(error, DegradedModeError):
            return RetryDecision.stop("the service is in degraded mode (degraded.force)")
        if not isinstance(error, HTTPStatusError) or attempt.status is None:
            return None
        settings = _settings(call.policy)
        if settings.template is not None and error.status in settings.on_statuses:
            return RetryDecision.stop(
                f"HTTP {error.status} is answered by the degraded response (degraded.on_statuses)"
            )
        return None

    @hookimpl(trylast=True)
    def healkit_fallback(self, call: CallContext, error: HealkitError) -> Fallback | None:
        """Answer with the template, after every other fallback declined."""
        if call.transport != "http":
            return None
        settings = _settings(call.policy)
        template = settings.template
        if template is None:
            return None
        if not (
            settings.when_failed
            or isinstance(error, DegradedModeError)
            or (isinstance(error, HTTPStatusError) and error.status in settings.on_statuses)
        ):
            return None
        rendered = template.render(_variables(call, error))
        response = Response(rendered.status, headers=rendered.headers, body=rendered.body)
        return Fallback(response, path="degraded")


def _settings(policy: ServicePolicy) -> DegradedSettings:
    settings = policy.stash.get(_SETTINGS)
    if settings is None:
        settings = policy.stash[_SETTINGS] = policy.section(SECTION)
    return settings


def _variables(call: CallContext, error: HealkitError) -> dict[str, str]:
    """Return the values of the template's placeholders for this call."""
    retry_after = ""
    if isinstance(error, HTTPStatusError) and error.retry_after is not None:
        retry_after = str(math.ceil(max(error.retry_after, 0.0)))
    elif isinstance(error, CircuitOpenError) and math.isfinite(error.retry_at):
        retry_after = str(math.ceil(max(error.retry_at - call.clock.now(), 0.0)))
    headers = call.headers_if_any()
    now = dt.datetime.now(dt.UTC)
    return {
        "service": call.service,
        "error_type": type(error).__name__,
        "timestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "retry_after": retry_after,
        "request_id": (headers.get(REQUEST_ID_HEADER, "") if headers else ""),
    }
