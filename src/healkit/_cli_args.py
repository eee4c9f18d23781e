"""argparse value types and the parser class shared by the ``healkit`` commands."""

from __future__ import annotations

import argparse
import math
from typing import NoReturn

__all__ = ["UsageParser", "positive_float", "positive_int"]

EXIT_USAGE = 2


class UsageParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, exit status 2.

    ``healkit: MESSAGE (see 'healkit config get --help')``: in an incident the
    reason must not drown in a usage block. Subcommand parsers are of this
    class too (argparse makes them of their parent's class).
    """

    def error(self, message: str) -> NoReturn:
        """Write ``message`` as one line and exit with status 2."""
        self.exit(EXIT_USAGE, f"healkit: {' '.join(message.split())} (see '{self.prog} --help')\n")


def positive_float(text: str) -> float:
    """Parse a finite number > 0, or fail with a usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    """Parse a whole number >= 1, or fail with a usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value
