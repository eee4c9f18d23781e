"""The names a plugin author codes against.

The top-level :mod:`healkit` namespace serves service authors (a client, a
decorator, the configuration, the errors); a plugin needs more: the hook
markers and the :class:`Plugin` protocol (the contract, specified in
:mod:`healkit.hookspecs`), the call and attempt contexts its hooks receive,
the decisions they return, the typed stash that holds its state, the
configuration section it contributes, the runtime it is registered in, and the
plugin manager helpers. Events to observe are in :mod:`healkit.events`.

Names that the top-level namespace had before this module existed stay there
too, for compatibility; new plugin-author names are added here only.
"""

from healkit._bounded import BoundedMap, StateSettings
from healkit._budget import BudgetParams, RequestBudget
from healkit._config.models import (
    ConfigChanges,
    ConfigSection,
    DeclaresEndpoints,
    HealkitConfig,
    ServicePolicy,
    Timeouts,
)
from healkit._config.secrets import SECRET, secret_fields
from healkit._context import AttemptContext, CallContext, Fallback, RetryDecision
from healkit._log import EventLogger, get_logger
from healkit._plugins import PluginInfo, PluginManager, create_plugin_manager, describe_plugins
from healkit._runtime import Runtime
from healkit._stash import Stash, StashKey
from healkit.hookspecs import PROJECT, CircuitState, Plugin, hookimpl, hookspec

__all__ = [
    "PROJECT",
    "SECRET",
    "AttemptContext",
    "BoundedMap",
    "BudgetParams",
    "CallContext",
    "CircuitState",
    "ConfigChanges",
    "ConfigSection",
    "DeclaresEndpoints",
    "EventLogger",
    "Fallback",
    "HealkitConfig",
    "Plugin",
    "PluginInfo",
    "PluginManager",
    "RequestBudget",
    "RetryDecision",
    "Runtime",
    "ServicePolicy",
    "Stash",
    "StashKey",
    "StateSettings",
    "Timeouts",
    "create_plugin_manager",
    "describe_plugins",
    "get_logger",
    "hookimpl",
    "hookspec",
    "secret_fields",
]
