"""Where configuration documents come from.

A :class:`ConfigSource` hands whole decoded documents to a :class:`ConfigSink`
(the runtime), which validates each one and swaps it in atomically, or rejects
it and keeps the last good configuration. Two sources ship with the core:

* :class:`InMemorySource`: a document given in Python (the embedded default);
* :class:`FileSource`: a TOML, YAML or JSON file, watched for changes.

A source for another store (etcd) implements the same protocol: ``load`` the
current document once at start, then ``watch`` and submit each new one. A
source whose document is made of parts judged one by one (etcd: one key per
service) is a :class:`PartialConfigSource`: the runtime starts it with
``load_into``, so that one invalid part never keeps it from starting.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, final, runtime_checkable

import anyio

from healkit._config_formats import load_file
from healkit._errors import ConfigError

__all__ = ["ConfigSink", "ConfigSource", "FileSource", "InMemorySource", "PartialConfigSource"]


class ConfigSink(Protocol):
    """What a source submits documents to (implemented by the runtime)."""

    def submit(self, raw: object, *, origin: str) -> ConfigError | None:
        """Validate and apply ``raw``; return the error if it was rejected.

        A rejected document is logged (``healkit.config_rejected``) and the
        configuration in force stays; the source carries on watching.
        """
        ...

    def reject(self, error: ConfigError) -> None:
        """Report a document the source could not even decode."""
        ...

    def emit(self, event: object) -> None:
        """Publish an event of the source (its connection state) to ``healkit_event``."""
        ...


@runtime_checkable
class ConfigSource(Protocol):
    """A provider of configuration documents."""

    @property
    def origin(self) -> str:
        """Where documents come from, for messages (a path, ``"python"``, an etcd URL)."""
        ...

    async def load(self) -> object:
        """Return the current document (decoded, not yet validated).

        Raises:
            ConfigError: the document cannot be read or decoded.

        """
        ...

    async def watch(self, sink: ConfigSink) -> None:
        """Submit every new document to ``sink`` until cancelled.

        Returns at once if the source never changes.
        """
        ...


@runtime_checkable
class PartialConfigSource(ConfigSource, Protocol):
    """A source whose document is made of parts that are accepted or rejected one by one."""

    async def load_into(self, sink: ConfigSink) -> None:
        """Submit the current document to ``sink``, leaving out each part it rejects.

        Raises:
            ConfigError: no usable document exists (every part was rejected).

        """
        ...


@final
class InMemorySource:
    """A document given in Python. It changes only through ``Runtime.apply``."""

    __slots__ = ("_document",)

    def __init__(self, document: Mapping[str, object] | None = None) -> None:
        self._document: Mapping[str, object] = document if document is not None else {}

    @property
    def origin(self) -> str:
        """Return ``"python"``."""
        return "python"

    def read(self) -> object:
        """Return the document."""
        return self._document

    async def load(self) -> object:
        """Return the document."""
        return self.read()

    async def watch(self, sink: ConfigSink) -> None:
        """Return at once: nothing to watch."""
        del sink


@final
class FileSource:
    """A configuration file (``.toml``, ``.yaml``/``.yml`` or ``.json``), polled for changes.

    The file is re-read when its size, modification time or inode change, and
    submitted only if its content differs from the last one read. Polling
    (default once a second) works on every filesystem, including the
    atomically replaced files of Kubernetes ConfigMaps.
    """

    __slots__ = ("_digest", "_path", "_poll_interval", "_signature")

    def __init__(self, path: str | os.PathLike[str], *, poll_interval: float = 1.0) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval!r}")
        self._path = Path(path)
        self._poll_interval = poll_interval
        self._signature: tuple[int, int, int] | None = None
        self._digest: bytes | None = None

    @property
    def origin(self) -> str:
        """Return the file's path."""
        return str(self._path)

    def read(self) -> object:
        """Read and decode the file now (the file is small; used at start)."""
        self._signature = self._stat()
        self._digest = _digest(self._path)
        return load_file(self._path)

    async def load(self) -> object:
        """Read and decode the file."""
        return self.read()

    async def watch(self, sink: ConfigSink) -> None:
        """Poll the file and submit each changed document."""
        while True:
            await anyio.sleep(self._poll_interval)
            signature = self._stat()
            if signature == self._signature:
                continue
            self._signature = signature
            digest = _digest(self._path)
            if digest == self._digest:
                continue
            self._digest = digest
            try:
                document = load_file(self._path)
            except ConfigError as error:
                sink.reject(error)
                continue
            sink.submit(document, origin=self.origin)

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = self._path.stat()
        except OSError:
            return (-1, -1, -1)
        return (st.st_mtime_ns, st.st_size, st.st_ino)


def _digest(path: Path) -> bytes | None:
    try:
        return hashlib.sha256(path.read_bytes()).digest()
    except OSError:
        return None
