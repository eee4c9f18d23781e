"""The ``healkit`` command line.

``entry`` parses and dispatches, ``args`` holds the shared conventions and
``entry_logs`` routes healkit's own log events while a command runs. The
commands that talk to etcd have a module each (``push``: push and diff,
``get``, ``watch``, ``history``: history and rollback, ``status``), on top of
``connection`` (how to reach etcd, how an etcd command runs), ``documents``
(reading and checking documents, from FILE|DIR and from etcd) and
``toml_writer``.
"""
