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

Reading, decoding (within :class:`~healkit.DocumentLimits`) and validating a
document run in a worker thread, never on the event loop: a large or hostile
document delays its own application, not the calls in flight.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, final, runtime_checkable

import anyio

from healkit._config.formats import (
    DEFAULT_LIMITS,
    DocumentLimits,
    format_for_path,
    parse_compact,
    parse_document,
    read_file,
)
from healkit._errors import ConfigError
from healkit._offload import off_loop

__all__ = ["ConfigSink", "ConfigSource", "FileSource", "InMemorySource", "PartialConfigSource"]


class ConfigSink(Protocol):
    """What a source submits documents to (implemented by the runtime)."""

    async def submit(self, raw: object, *, origin: str) -> ConfigError | None:
        """Validate and apply ``raw``; return the error if it was rejected.

        ``raw`` may be compact: its ``defaults`` and service documents held
        as msgpack bytes, which ``build_config`` decodes one at a time;
        :func:`~healkit.plain_document` gives the plain document.

        The runtime validates in a worker thread; the source awaits the
        outcome before it submits its next document, so documents apply in
        order. A rejected document is logged (``healkit.config_rejected``) and
        the configuration in force stays; the source carries on watching.
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
    atomically replaced files of Kubernetes ConfigMaps. The file is read,
    decoded and validated in a worker thread, and never read past
    ``limits.max_bytes``.

    Args:
        path: the file; its suffix gives the format.
        poll_interval: seconds between two looks at the file.
        limits: what one document may cost to decode (see
            :class:`~healkit.DocumentLimits`); a larger, deeper or bigger one
            is rejected and the configuration in force stays.

    """

    __slots__ = ("_digest", "_limits", "_path", "_poll_interval", "_signature")

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        poll_interval: float = 1.0,
        limits: DocumentLimits = DEFAULT_LIMITS,
    ) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval!r}")
        self._path = Path(path)
        self._poll_interval = poll_interval
        self._limits = limits
        self._signature: tuple[int, int, int] | None = None
        self._digest: bytes | None = None

    @property
    def origin(self) -> str:
        """Return the file's path."""
        return str(self._path)

    def read(self) -> object:
        """Read and decode the file now, on the calling thread (a runtime does it once, at start).

        Raises:
            ConfigError: the file cannot be read, or its document is invalid.

        """
        self._signature = self._stat()
        self._digest, document = self._fetch(None)
        if isinstance(document, ConfigError):
            raise document
        return document

    async def load(self) -> object:
        """Read and decode the file in a worker thread.

        Raises:
            ConfigError: the file cannot be read, or its document is invalid.

        """
        return await off_loop(self.read)

    async def watch(self, sink: ConfigSink) -> None:
        """Poll the file and submit each changed document."""
        while True:
            await anyio.sleep(self._poll_interval)
            signature = self._stat()
            if signature == self._signature:
                continue
            self._signature = signature
            digest, document = await off_loop(
                functools.partial(self._fetch, self._digest, compact=True)
            )
            if digest == self._digest:
                continue
            self._digest = digest
            if isinstance(document, ConfigError):
                sink.reject(document)
            else:
                await sink.submit(document, origin=self.origin)

    def _fetch(self, known: bytes | None, *, compact: bool = False) -> tuple[bytes | None, object]:
        """Read the file; return its digest and its document (or why there is none).

        The document is ``None`` when the digest is ``known`` (nothing changed),
        a :class:`ConfigError` when the file cannot be read (digest ``None``)
        or decoded. ``compact``: the document is decoded compact
        (:func:`~healkit._config.formats.parse_compact`), so that no tree of the
        whole document outlives this thread, nor (JSON) exists at all. Runs in
        a worker thread: it touches no state of the source.
        """
        try:
            fmt = format_for_path(self._path)
            data = read_file(self._path, limits=self._limits)
        except ConfigError as error:
            return None, error
        digest = hashlib.sha256(data).digest()
        if digest == known:
            return digest, None
        parse = parse_compact if compact else parse_document
        try:
            return digest, parse(data, fmt=fmt, origin=self.origin, limits=self._limits)
        except ConfigError as error:
            return digest, error

    def _stat(self) -> tuple[int, int, int]:
        try:
            st = self._path.stat()
        except OSError:
            return (-1, -1, -1)
        return (st.st_mtime_ns, st.st_size, st.st_ino)
