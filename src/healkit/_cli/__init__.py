"""The ``healkit`` command line.

``entry`` parses and dispatches, ``args`` holds the shared conventions, ``etcd``
the commands that talk to etcd, and ``entry_logs`` routes healkit's own log
events while a command runs.
"""
