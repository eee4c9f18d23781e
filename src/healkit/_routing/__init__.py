"""Routing: the built-in plugin that picks endpoints and heals around failures.

Shaped like healkit's plugin distributions: ``settings`` holds the ``routing``
section (its ``probe`` and ``fleet`` tables too) and what is compiled from it
per snapshot (priority groups, redirects' origin rules), ``health`` what the
router knows of each endpoint and which failures count against it, ``probes``
the probe task and what a probe's result changes, ``fleet`` the health records
instances share through etcd leases and the view each instance keeps there,
``asking`` the hooks routing asks of the other plugins, and ``plugin`` the
router itself: its hooks, the choice of endpoint, ejection. Its events are
public, in :mod:`healkit.events`.
"""
