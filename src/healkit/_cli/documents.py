"""Configuration documents as the etcd commands read them: from FILE|DIR, and from etcd.

A namespace's documents live under ``<prefix><namespace>/``: ``defaults``,
``services/<service>`` and ``channels/<channel>/services/<service>``, each
stored as canonical JSON (:func:`canonical_json`). This module reads them
(:func:`read_namespace`, :func:`load_source`), decodes and assembles them
into one document as instances do (:func:`decode_stored`, :func:`assemble`),
and checks them with the installed plugins' sections, pinning each problem
on the key whose document holds it (:func:`check_namespace`,
:func:`check_after`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

from healkit._config.formats import format_for_path, load_file, parse_document
from healkit._config.models import (
    ConfigSection,
    HealkitConfig,
    build_config,
    service_name_issues,
)
from healkit._config.validate import join_path
from healkit._errors import ConfigError, ConfigIssue
from healkit._plugins import create_plugin_manager
from healkit._runtime import config_sections
from healkit.etcd import EtcdClient, KeyValue
from healkit.etcd._source import creation_order, key_role, name_issues, stored_format

__all__ = [
    "DEFAULTS",
    "SERVICES",
    "NamespaceCheck",
    "NamespaceState",
    "assemble",
    "build_issues",
    "canonical_json",
    "check_after",
    "check_namespace",
    "decode_stored",
    "document_path",
    "load_source",
    "plugin_sections",
    "read_namespace",
    "service_names",
]

DEFAULTS: Final = "defaults"
"""The key of the defaults document, relative to the namespace."""
SERVICES: Final = "services/"
"""The prefix of the service documents' keys, relative to the namespace."""
_TOP_KEYS: Final = frozenset({"defaults", "services"})


@final
@dataclass(frozen=True)
class NamespaceState:
    """The configuration keys of a namespace as read at one revision."""

    root: str
    """The namespace's key prefix."""
    revision: int
    """The revision the keys were read at."""
    keys: dict[str, KeyValue]
    """Configuration keys relative to ``root`` (``defaults``, ``services/<name>``,
    ``channels/<channel>/services/<name>``), in key order."""

    def text(self, key: str) -> str | None:
        """Return the stored document of ``key`` (relative), or ``None`` if absent.

        For display: bytes that are not UTF-8 are replaced. Judge a document by
        :meth:`raw`, which keeps them (and so refuses them, as instances do).
        """
        kv = self.keys.get(key)
        return None if kv is None else kv.value.decode("utf-8", "replace")

    def raw(self, key: str) -> bytes | None:
        """Return the stored bytes of ``key`` (relative), or ``None`` if absent."""
        kv = self.keys.get(key)
        return None if kv is None else kv.value

    def judged(self) -> list[str]:
        """Return the keys in the order instances judge them (:func:`creation_order`)."""
        return sorted(self.keys, key=lambda key: creation_order(self.keys[key]))


async def read_namespace(client: EtcdClient, root: str) -> NamespaceState:
    """Read every configuration key under ``root`` at one revision."""
    result = await client.range_all(root, prefix=True)
    keys: dict[str, KeyValue] = {}
    for kv in result.kvs:
        relative = kv.key.decode("utf-8", "replace")[len(root) :]
        if key_role(relative)[0] != "other":
            keys[relative] = kv
    return NamespaceState(root=root, revision=result.revision, keys=keys)


def decode_stored(data: str | bytes, origin: str) -> object:
    """Decode a stored document as instances do (:func:`stored_format`)."""
    return parse_document(data, fmt=stored_format(data), origin=origin)


def document_path(key: str) -> str:
    """Return where the document of ``key`` lies in the whole document (``$.services.x``)."""
    kind, service, _ = key_role(key)
    return "$.defaults" if kind == "defaults" else join_path("$.services", service)


def _key_of_path(path: str, keys: Iterable[str]) -> str | None:
    """Return the key among ``keys`` whose document ``path`` lies in, or ``None``."""
    for key in keys:
        where = document_path(key)
        if path == where or path.startswith((f"{where}.", f"{where}[")):
            return key
    return None


def canonical_json(document: object) -> str:
    """Return ``document`` as canonical JSON: sorted keys, two-space indent, final newline."""
    try:
        text = json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ConfigError([ConfigIssue("$", f"cannot be stored as JSON: {error}")]) from error
    return text + "\n"


# -- reading FILE|DIR -------------------------------------------------------------------------


def load_source(source: str) -> dict[str, object]:
    """Read a whole document (FILE) or one file per service (DIR).

    Returns:
        The documents by key relative to the namespace: ``defaults`` and
        ``services/<name>``.

    Raises:
        ConfigError: a file cannot be read or decoded, or the document has a
            key that etcd's layout has no place for.

    """
    path = Path(source)
    if path.is_dir():
        return _load_directory(path)
    document = load_file(path)
    if not isinstance(document, dict):  # pragma: no cover - load_file returns mappings
        raise ConfigError([ConfigIssue("$", "the document must be a mapping")], origin=source)
    issues = [
        ConfigIssue(f"$.{key}", "etcd's layout has no key for this part of the document")
        for key in document
        if key not in _TOP_KEYS
    ]
    services = document.get("services", {})
    if not isinstance(services, dict):
        issues.append(ConfigIssue("$.services", "must be a mapping of service documents"))
        services = {}
    # Each name becomes a key: refused if build_config would refuse it, never
    # written under another spelling (YAML's `on` is True) nor left out.
    issues += service_name_issues(services)
    if issues:
        raise ConfigError(issues, origin=source)
    documents: dict[str, object] = {}
    if "defaults" in document:
        documents[DEFAULTS] = document["defaults"]
    documents.update((f"{SERVICES}{name}", doc) for name, doc in services.items())
    return documents


def _load_directory(path: Path) -> dict[str, object]:
    documents: dict[str, object] = {}
    origins: dict[str, Path] = {}
    issues: list[ConfigIssue] = []
    for file in sorted(path.iterdir()):
        if file.name.startswith(".") or not file.is_file():
            continue
        try:
            format_for_path(file)
        except ConfigError:
            continue  # a README or a backup file: not a document
        if file.stem != DEFAULTS and (named := service_name_issues([file.stem])):
            issues += [ConfigIssue(i.path, f"{i.reason} (file {file.name})") for i in named]
            continue
        key = DEFAULTS if file.stem == DEFAULTS else f"{SERVICES}{file.stem}"
        if key in origins:
            issues.append(
                ConfigIssue(
                    document_path(key), f"both {origins[key].name} and {file.name} define it"
                )
            )
            continue
        origins[key] = file
        documents[key] = load_file(file)
    if issues:
        raise ConfigError(issues, origin=os.fspath(path))
    if not documents:
        raise ConfigError(
            [ConfigIssue("$", "no .toml, .yaml, .yml or .json file in the directory")],
            origin=os.fspath(path),
        )
    return documents


def assemble(documents: Mapping[str, object]) -> dict[str, object]:
    """Build the whole document of keys ``defaults`` and ``services/<name>`` (others left out)."""
    whole: dict[str, object] = {}
    services: dict[str, object] = {}
    for key, value in documents.items():
        kind, service, _ = key_role(key)
        if kind == "defaults":
            whole["defaults"] = value
        elif kind == "service":
            services[service] = value
    whole["services"] = services
    return whole


def plugin_sections(block: Sequence[str]) -> tuple[ConfigSection[Any], ...]:
    """Return the configuration sections of the installed plugins, but those in ``block``."""
    return config_sections(create_plugin_manager(block=list(block)))


def check_after(
    state: NamespaceState,
    changed: Mapping[str, str | None],
    sections: Sequence[ConfigSection[Any]],
) -> None:
    """Validate the namespace as it will be once ``changed`` is written."""
    documents: dict[str, object] = {}
    issues: list[ConfigIssue] = []
    # The keys the push creates come last, together, in key order, as instances judge them.
    for key in [*state.judged(), *sorted(changed.keys() - state.keys.keys())]:
        if key_role(key)[0] not in {"defaults", "service"}:
            continue
        data = changed[key] if key in changed else state.raw(key)
        if data is None:
            continue
        misnamed = name_issues(key)
        if misnamed:
            issues += misnamed
            continue
        try:
            documents[key] = decode_stored(data, state.root + key)
        except ConfigError as error:
            issues += [ConfigIssue(document_path(key), i.reason) for i in error.issues]
    try:
        build_config(assemble(documents), sections, origin=state.root)
    except ConfigError as error:
        issues += error.issues
    if issues:
        keys = [k for k in {*state.keys, *changed} if key_role(k)[0] in {"defaults", "service"}]
        unchanged = [i for i in issues if _key_of_path(i.path, keys) not in changed]
        marked = [
            ConfigIssue(i.path, f"{i.reason} (in etcd, not in the pushed document)")
            if i in unchanged
            else i
            for i in issues
        ]
        raise ConfigError(marked, origin=f"{state.root} after the push")


def service_names(keys: Iterable[str]) -> list[str]:
    """Return the services of ``keys`` (relative to the namespace)."""
    return [key_role(key)[1] for key in keys if key_role(key)[0] == "service"]


@final
@dataclass(frozen=True)
class NamespaceCheck:
    """The documents of a namespace, decoded as instances decode them, and their problems."""

    documents: dict[str, object]
    """The decoded document of each key that decodes (relative keys)."""
    problems: dict[str, list[ConfigIssue]]
    """The issues of each key (``""``: issues no single key explains)."""
    config: HealkitConfig | None
    """The configuration of the defaults and service documents that decode, if valid."""

    def in_force(self, sections: Sequence[ConfigSection[Any]]) -> HealkitConfig | None:
        """Return the configuration instances apply: every document without issues.

        ``None`` when the defaults have issues: instances then keep a
        configuration that etcd no longer shows.
        """
        if self.config is not None:
            return self.config
        if self.problems.get(DEFAULTS):
            return None
        valid = {
            key: document
            for key, document in self.documents.items()
            if key_role(key)[0] in {"defaults", "service"} and not self.problems.get(key)
        }
        try:
            return build_config(assemble(valid), sections)
        except ConfigError:  # issues no single key explains: listed as the namespace's
            return None


def check_namespace(
    state: NamespaceState, sections: Sequence[ConfigSection[Any]]
) -> NamespaceCheck:
    """Decode and check every document of ``state``, each channel's overlays too."""
    problems: dict[str, list[ConfigIssue]] = {}
    decoded: dict[str, object] = {}
    for key in state.judged():
        misnamed = name_issues(key)
        if misnamed:
            problems[key] = misnamed
            continue
        try:
            decoded[key] = decode_stored(state.raw(key) or b"", state.root + key)
        except ConfigError as error:
            problems.setdefault(key, []).extend(error.issues)
    base = {k: v for k, v in decoded.items() if key_role(k)[0] in {"defaults", "service"}}
    config: HealkitConfig | None = None
    try:
        config = build_config(assemble(base), sections)
    except ConfigError as error:
        _attribute(error.issues, base, problems)
    channels = sorted({key_role(k)[2] for k in decoded if key_role(k)[0] == "overlay"})
    for channel in channels:
        overlays = {
            SERVICES + key_role(k)[1]: v
            for k, v in decoded.items()
            if key_role(k)[0] == "overlay" and key_role(k)[2] == channel
        }
        merged = dict(base)
        for key, overlay in overlays.items():
            below = merged.get(key, {})
            if isinstance(below, dict) and isinstance(overlay, dict):
                merged[key] = {**below, **overlay}
        found = build_issues(assemble(merged), sections)
        for issue in found:
            target = _key_of_path(issue.path, overlays)
            if target is not None:
                problems.setdefault(f"channels/{channel}/{target}", []).append(issue)
    return NamespaceCheck(documents=decoded, problems=problems, config=config)


def build_issues(document: object, sections: Sequence[ConfigSection[Any]]) -> list[ConfigIssue]:
    """Return the issues :func:`build_config` finds in ``document`` (empty if valid)."""
    try:
        build_config(document, sections)
    except ConfigError as error:
        return list(error.issues)
    return []


def _attribute(
    issues: Sequence[ConfigIssue],
    documents: Mapping[str, object],
    problems: dict[str, list[ConfigIssue]],
) -> None:
    for issue in issues:
        key = _key_of_path(issue.path, documents)
        problems.setdefault(key if key is not None else "", []).append(issue)
