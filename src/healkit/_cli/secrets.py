"""Secrets in what the ``healkit config`` commands print, and in what ``config push`` writes.

The commands that print documents (``config get``, ``history``, ``diff``,
``push --dry-run``, ``rollback``) show each secret setting (a field its
plugin's settings type marks :data:`~healkit.plugin.SECRET`, such as
``tls.key_pem``) as ``[REDACTED]``, unless given ``--raw`` (as ``kubectl
config view --raw``): a terminal, a CI log or a ticket is not where a private
key belongs. A document that holds ``[REDACTED]`` in such a setting was printed
so: ``config push`` and ``config diff`` refuse it instead of writing the marker
over the secret.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Any, Final, final

from healkit._cli.args import CommandError
from healkit._cli.documents import canonical_json, decode_stored, document_path
from healkit._config.models import ConfigSection
from healkit._config.secrets import REDACTED, redact_document, redacted_paths, section_secrets
from healkit._errors import ConfigError

__all__ = ["NOT_SHOWN", "Redaction", "raw_option", "refuse_redacted"]

NOT_SHOWN: Final = (
    "(not shown: the document cannot be decoded and may hold secrets; --raw shows it)"
)
"""What is printed in place of a stored text that cannot be decoded, unless ``--raw``."""


def raw_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--raw``: print secret settings in clear."""
    parser.add_argument(
        "--raw",
        action="store_true",
        help=(
            f"print secret settings (tls.key_pem...) in clear instead of {REDACTED},"
            " for a backup that can be pushed back"
        ),
    )


@final
class Redaction:
    """How a command shows documents: secret settings redacted, or all in clear (``raw``)."""

    __slots__ = ("_secrets", "raw")

    def __init__(self, sections: Sequence[ConfigSection[Any]], *, raw: bool) -> None:
        self._secrets = section_secrets(sections)
        self.raw = raw or not self._secrets  # nothing to hide: shown as stored

    def document(self, document: object) -> object:
        """Return one key's document (a service's, an overlay, the defaults) as shown."""
        return document if self.raw else redact_document(document, self._secrets)

    def text(self, text: str | None) -> str | None:
        """Return a stored document's text as shown (``None`` stays ``None``).

        A document with no secret set is shown as stored; one with secrets,
        as canonical JSON with them redacted; one that cannot be decoded, as
        :data:`NOT_SHOWN` (nothing tells what it holds).
        """
        if text is None or self.raw:
            return text
        try:
            document = decode_stored(text, "")
        except ConfigError:
            return NOT_SHOWN
        shown = self.document(document)
        return text if shown == document else canonical_json(shown)


def refuse_redacted(
    documents: Mapping[str, object], sections: Sequence[ConfigSection[Any]], origin: str
) -> None:
    """Refuse documents (by key) that hold :data:`REDACTED` in a secret setting.

    Raises:
        CommandError: one names the first such setting (one line).

    """
    secrets = section_secrets(sections)
    for key, document in documents.items():
        marked = redacted_paths(document, secrets, document_path(key))
        if marked:
            raise CommandError(
                f"{origin}: {marked[0]} is {REDACTED!r}, the mark printed in place of a secret:"
                " pushing it would replace the secret with the mark (print the document with"
                " --raw to keep the secret, or write the secret itself)"
            )
