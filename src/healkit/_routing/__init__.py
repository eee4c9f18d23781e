"""Routing: the built-in plugin that picks endpoints and heals around failures.

``plugin`` holds the router (fallback groups, ejection, redirects' origin
rules), ``probes`` the health probes that bring an endpoint back, and ``fleet``
the health records instances share through etcd leases.
"""
