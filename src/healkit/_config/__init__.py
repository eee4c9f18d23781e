"""The configuration subsystem: models, validation, document formats and sources.

``models`` holds the document and the validated snapshot, ``validate`` the
checks every value goes through, ``formats`` and ``yaml_format`` the readers of
TOML, JSON and YAML, and ``sources`` the embedded and file sources a runtime
loads and watches (the etcd source lives in :mod:`healkit.etcd`).
"""
