"""Documents held as bytes between the turns of the event loop.

A full garbage collection stops the event loop for a time in proportion to
every container the process tracks, and runs when the containers that
survived young collections since the last one pass a quarter of those it
found then. A decoded document of N services is three containers per service
(its mapping, the list of its endpoints, a section): whoever keeps it (a
source's cache of its last good documents, the runtime's document in force)
makes every later collection longer, and whoever builds it (decoding, then
validating while it is alive) makes the next full collection come sooner.

So a document is kept, and handed from a source to the runtime, *compact*: the
``defaults`` and each service's document as an :class:`Encoded` (their
msgpack encoding, in an object the collector does not track), the rest as it
is. :func:`~healkit._config.models.build_config` compares a service's bytes
with those it validated before and decodes it only to validate it, one service
at a time, dropping the decoded tree at once.

Only a plain document has an encoding (:func:`~healkit._config.validate.fingerprint`):
any other part stays as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, final

import msgspec

from healkit._config.validate import fingerprint

__all__ = ["Encoded", "compacted", "encoded", "opened", "plain_document"]

_PARTS: Final = frozenset({"defaults", "services"})
"""The parts of a document kept :class:`Encoded`; any other is small, and copied."""


@final
class Encoded(msgspec.Struct, frozen=True, gc=False):
    """One part of a document (a service's, the defaults'), kept as its msgpack encoding.

    Made only by :func:`encoded`, from a plain document: decoding gives back an
    equal document, types included, and two parts are the same value exactly
    when their ``data`` are equal.
    """

    data: bytes

    def decode(self) -> object:
        """Return the part as a plain document (a new one on each call)."""
        return msgspec.msgpack.decode(self.data)


def encoded(part: object) -> object:
    """Return ``part`` as an :class:`Encoded` when it is a plain document, else as it is."""
    if isinstance(part, Encoded):
        return part
    data = fingerprint(part)
    return part if data is None else Encoded(data)


def opened(part: object) -> object:
    """Return the plain document of an :class:`Encoded` part; any other ``part`` as it is."""
    return part.decode() if isinstance(part, Encoded) else part


def compacted(document: object) -> object:
    """Return ``document`` with its ``defaults`` and each service's document :func:`encoded`.

    The result holds two containers (the document and its ``services``)
    however many services it has, and its other plain parts (``logging``,
    ``state``) copied: it does not follow a caller who edits ``document`` in
    place afterwards. A document that is not a mapping is returned as it is;
    validation reports it.
    """
    if not isinstance(document, Mapping):
        return document
    compact: dict[object, object] = dict(document)
    for key, value in compact.items():
        if key not in _PARTS:
            compact[key] = opened(encoded(value))
    if "defaults" in compact:
        compact["defaults"] = encoded(compact["defaults"])
    services = compact.get("services")
    if isinstance(services, Mapping):
        compact["services"] = {name: encoded(part) for name, part in services.items()}
    return compact


def plain_document(document: object) -> object:
    """Return ``document`` with every compact part decoded: a plain document again.

    The file and etcd sources submit their documents compact to a
    :class:`~healkit.ConfigSink`: the ``defaults`` and each service's document
    may be held as msgpack bytes. A sink of your own that reads a document it
    is given (to show or compare it) reads ``plain_document(raw)``;
    :func:`~healkit.build_config` takes either. Any other value is returned
    as it is.
    """
    if not isinstance(document, Mapping):
        return document
    plain: dict[object, object] = dict(document)
    if "defaults" in plain:
        plain["defaults"] = opened(plain["defaults"])
    services = plain.get("services")
    if isinstance(services, Mapping):
        plain["services"] = {name: opened(part) for name, part in services.items()}
    return plain
