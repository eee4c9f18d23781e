"""Every name public before the layout change (commit 22e5854) still imports; renamed ones warn.

The lists are the ``__all__`` of ``healkit``, ``healkit.etcd`` and
``healkit.testing`` at the commit before the layout change.
"""

from __future__ import annotations

import gc
import importlib
import warnings
from pathlib import Path

import pytest

import healkit

FORMER = {
    "healkit": [
        "AiohttpOptions",
        "AttemptContext",
        "AttemptRecord",
        "AttemptTimeout",
        "BodyTooLargeError",
        "BoundedMap",
        "BudgetExhaustedError",
        "CallContext",
        "CallError",
        "CircuitOpenError",
        "Client",
        "ClientClosedError",
        "Clock",
        "ConfigChanges",
        "ConfigError",
        "ConfigIssue",
        "ConfigSection",
        "ConfigSink",
        "ConfigSource",
        "ConnectError",
        "ConnectTimeout",
        "ConnectionLostError",
        "DNSError",
        "DeadlineExceeded",
        "DeclaresEndpoints",
        "DegradedModeError",
        "DegradedSettings",
        "DegradedTemplate",
        "DocumentLimits",
        "EtcdAuthError",
        "EtcdCompacted",
        "EtcdError",
        "EtcdProtocolError",
        "EtcdRequestError",
        "EtcdUnavailable",
        "EventLogger",
        "EvictionReason",
        "Fallback",
        "FileSource",
        "HTTPStatusError",
        "HealkitConfig",
        "HealkitError",
        "InMemorySource",
        "LimitError",
        "LoggingSettings",
        "MonotonicClock",
        "OUTCOME_HEADER",
        "Outcome",
        "OutcomeUnavailableError",
        "PathTaken",
        "PluginError",
        "PluginInfo",
        "ProtocolError",
        "ReadTimeout",
        "RedirectRecord",
        "RedirectRefusedError",
        "RequestError",
        "RequestOptions",
        "ResilienceMiddleware",
        "Response",
        "RetryDecision",
        "Runtime",
        "ServicePolicy",
        "Stash",
        "StashKey",
        "StateEvicted",
        "StateSettings",
        "TLSError",
        "TimeoutExceeded",
        "Timeouts",
        "TooManyRedirects",
        "TransportError",
        "__version__",
        "build_config",
        "create_plugin_manager",
        "current_runtime",
        "default_runtime",
        "describe_plugins",
        "get_logger",
        "hookimpl",
        "resilient",
    ],
    "healkit.etcd": [
        "Compare",
        "DEFAULT_PREFIX",
        "DeleteOp",
        "DeleteResult",
        "EtcdClient",
        "EtcdSource",
        "EtcdSourceStatus",
        "EtcdStatus",
        "EtcdWatch",
        "KeyValue",
        "Lease",
        "LeaseKeeper",
        "PutOp",
        "PutResult",
        "RangeOp",
        "RangeResult",
        "TxnResult",
        "WatchEvent",
        "WatchResponse",
        "etcd_prefix",
        "prefix_range_end",
    ],
    "healkit.testing": [
        "EtcdServer",
        "Fault",
        "FaultKind",
        "FaultServer",
        "LoopbackResolver",
        "ManualClock",
        "RecordedRequest",
        "TcpProxy",
        "capture_events",
        "find_etcd_binary",
        "is_testing",
        "refused_url",
        "set_testing",
        "unused_tcp_port",
    ],
}
RENAMED = {
    "RequestError": healkit.InvalidRequestError,
    "EtcdCompacted": healkit.EtcdCompactedError,
    "EtcdUnavailable": healkit.EtcdUnavailableError,
}
FORMER_NAMES = [(module, name) for module, names in FORMER.items() for name in names]


@pytest.mark.parametrize(("module", "name"), FORMER_NAMES)
def test_a_formerly_public_name_still_imports(module: str, name: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        namespace: dict[str, object] = {}
        exec(f"from {module} import {name}", namespace)  # noqa: S102 - the statement users wrote
    value = namespace[name]
    if module == "healkit" and name in RENAMED:
        assert value is RENAMED[name]
        assert caught
        assert all(issubclass(w.category, DeprecationWarning) for w in caught)
        assert all(w.filename == "<string>" for w in caught)  # points at the user's line
    else:
        assert value is getattr(importlib.import_module(module), name)
        assert not caught


def test_the_former_names_are_exception_classes_to_a_type_checker(tmp_path: Path) -> None:
    # Before: only the module's __getattr__ (typed ``-> object``) knew them, and
    # ``except healkit.RequestError`` failed mypy --strict in code that passed it.
    api = pytest.importorskip("mypy.api")
    user = tmp_path / "user.py"
    user.write_text(
        "import healkit\n"
        "from healkit import EtcdCompacted, RequestError\n\n\n"
        "def call() -> None:\n"
        "    try:\n"
        "        pass\n"
        "    except RequestError as error:\n"
        "        print(error.args)\n"
        "    except (EtcdCompacted, healkit.EtcdUnavailable):\n"
        "        pass\n"
    )
    threshold = gc.get_threshold()
    try:
        out, err, status = api.run(
            ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(user)]
        )
    finally:  # mypy sets the interpreter's collector thresholds for its run, and leaves them
        gc.set_threshold(*threshold)
    assert status == 0, out + err
