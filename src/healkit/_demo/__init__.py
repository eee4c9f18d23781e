"""``healkit demo``: an application built on healkit, not part of the library.

Nothing in the library imports this package; the CLI imports it lazily.
"""
