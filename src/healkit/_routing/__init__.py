"""Routing: the built-in plugin that picks endpoints and heals around failures.

Shaped like healkit's plugin distributions: ``settings`` holds the ``routing``
section and what is compiled from it per snapshot (priority groups, redirects'
origin rules), ``health`` what the router knows of each endpoint and which
failures count against it, ``probes`` the health probes that bring an endpoint
back, ``fleet`` the health records instances share through etcd leases, and
``plugin`` the router itself. Its events are public, in :mod:`healkit.events`.
"""
