"""Structured logs: namespaced events, bound context, secrets redacted."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import yarl

import healkit
from healkit._redact import REDACTED, URL_CACHE_SIZE, URL_REDACTED, Redactor
from healkit.testing import Fault, FaultServer, capture_events
from tests.plugins import RetryUpTo

pytestmark = pytest.mark.anyio

SECRETS = ("s3cr3t-pass", "tok-123", "sig-456", "cookie-789", "apikey-000", "bearer-abc")


async def test_failed_call_logs_carry_context_and_no_secret(
    fault_server: FaultServer, logs: list[dict[str, Any]]
) -> None:
    fault_server.set_default(Fault.reset())
    url = fault_server.url.replace("http://", "http://user:s3cr3t-pass@")
    config = {"logging": {"redact_headers": ["X-Api-Key"], "redact_query": ["session"]}}
    async with healkit.Client(config=config, plugins=[RetryUpTo(2)], entry_points=False) as client:
        with pytest.raises(healkit.ConnectionLostError) as caught:
            await client.get(
                f"{url}/pay?token=tok-123&X-Amz-Signature=sig-456&session=tok-123&page=2",
                headers={
                    "Authorization": "Bearer bearer-abc",
                    "Cookie": "id=cookie-789",
                    "X-Api-Key": "apikey-000",
                    "X-Visible": "shown",
                },
            )
    events = [e["event"] for e in logs]
    # The second, identical attempt failure is counted, and summarised when the client closes.
    assert events == [
        "healkit.config_applied",
        "healkit.attempt_failed",
        "healkit.retry_scheduled",
        "healkit.call_failed",
        "healkit.attempt_failures_summary",
    ]
    assert logs[-1]["count"] == 1
    assert "s3cr3t-pass" not in logs[-1]["endpoint"]
    failed = logs[-2]
    assert failed["service"] == "127.0.0.1"
    assert failed["attempt"] == 2
    assert failed["path"] == "retry"
    assert failed["headers"]["Authorization"] == REDACTED
    assert failed["headers"]["X-Api-Key"] == REDACTED
    assert failed["headers"]["X-Visible"] == "shown"
    text = repr(logs) + str(caught.value)
    for secret in SECRETS:
        assert secret not in text


def test_redactor_urls() -> None:
    redactor = Redactor(query=["session"])
    url = "https://u:p@h.test:8443/a?sig=1&x=2&Session=3&X-Goog-Signature=4"
    hidden = URL_REDACTED
    assert (
        redactor.url(url)
        == f"https://h.test:8443/a?sig={hidden}&x=2&Session={hidden}&X-Goog-Signature={hidden}"
    )
    assert redactor.url("http://h.test/plain?a=1") == "http://h.test/plain?a=1"
    # Remembered, and the same answer the second time; a yarl.URL is redacted alike.
    assert redactor.url(url) == redactor.url(yarl.URL(url))


def test_redactor_remembers_a_bounded_number_of_urls() -> None:
    redactor = Redactor()
    for n in range(URL_CACHE_SIZE * 3):
        assert redactor.url(f"https://u:p@h{n}.test/?token=t") == (
            f"https://h{n}.test/?token={URL_REDACTED}"
        )
    assert len(redactor._urls) <= URL_CACHE_SIZE


def test_redactor_headers_are_case_insensitive() -> None:
    redactor = Redactor(headers=["x-secret"])
    redacted = redactor.headers(
        {"authorization": "a", "PROXY-AUTHORIZATION": "b", "X-Secret": "c", "Accept": "d"}
    )
    assert redacted == {
        "authorization": REDACTED,
        "PROXY-AUTHORIZATION": REDACTED,
        "X-Secret": REDACTED,
        "Accept": "d",
    }


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (logging.WARNING, ["healkit.attempt_failed", "healkit.call_failed"]),
        (logging.ERROR, ["healkit.call_failed"]),
        (logging.CRITICAL, []),
    ],
)
async def test_a_filtering_logger_gets_the_events_at_its_level_only(
    fault_server: FaultServer, level: int, expected: list[str]
) -> None:
    # Events below the level are skipped before their arguments are computed;
    # the ones at or above it are logged as they always were.
    fault_server.set_default(Fault.reset())
    with capture_events(level) as logs:
        async with healkit.Client(entry_points=False) as client:
            with pytest.raises(healkit.ConnectionLostError):
                await client.get(f"{fault_server.url}/x")
    assert [e["event"] for e in logs] == expected
    if expected:
        assert logs[-1]["error"] == "ConnectionLostError"
