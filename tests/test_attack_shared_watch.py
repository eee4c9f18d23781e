"""The shared etcd watch never lets a runtime read through another's credentials.

Two clients on the same endpoints and namespace share one watch only when
they are the same user with the same password (and the same TLS): a user
without read permission on the namespace, or with a wrong password, gets its
own watch, which etcd refuses, and never the keys another user's watch reads.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import pytest
import trustme

from healkit import EtcdAuthError
from healkit.etcd import EtcdClient
from healkit.etcd._feed import Connection, FeedItem, Reset, Subscription
from healkit.etcd._gateway import settings
from healkit.testing import EtcdServer
from healkit.testing._etcd import find_etcd_binary

pytestmark = pytest.mark.anyio

ROOT = "/healkit/shared-auth/"
OTHER = "/healkit/elsewhere/"
PASSWORD = "reader-secret"  # noqa: S105 - a test value


def etcdctl(server: EtcdServer, *argv: str) -> None:
    """Run etcd's own etcdctl as root (user and role management)."""
    binary = find_etcd_binary().with_name("etcdctl")
    subprocess.run(  # noqa: S603 - etcd's own tool, fixed arguments
        [
            str(binary),
            f"--endpoints={server.url}",
            f"--user=root:{server.password}",
            *argv,
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


async def first(subscription: Subscription) -> FeedItem:
    """The first item a subscriber gets that says something: keys, or a failure."""
    while True:
        item = await subscription.next()
        if isinstance(item, Reset) or (isinstance(item, Connection) and item.error is not None):
            return item


async def test_users_with_other_credentials_never_share_a_watch(tmp_path: Path) -> None:
    del tmp_path
    async with EtcdServer(auth=True) as server:
        # "reader" may read another namespace only.
        etcdctl(server, "user", "add", "reader", f"--new-user-password={PASSWORD}")
        etcdctl(server, "role", "add", "elsewhere")
        etcdctl(server, "role", "grant-permission", "elsewhere", "--prefix=true", "read", OTHER)
        etcdctl(server, "user", "grant-role", "reader", "elsewhere")
        async with server.client() as root:
            await root.put(ROOT + "services/pay", '{"endpoints": ["https://pay.internal"]}')
        rng = lambda: 0.5  # noqa: E731 - the reconnection jitter
        async with (
            server.client() as allowed,
            EtcdClient(server.url, username="reader", password=PASSWORD) as reader,
            server.client(password="not-the-root-password") as impostor,  # noqa: S106
        ):
            subscriptions = [
                client.follow(ROOT, liveness_timeout=10.0, random=rng)
                for client in (allowed, reader, impostor)
            ]
            try:
                with anyio.fail_after(30):
                    seen = [await first(subscription) for subscription in subscriptions]
            finally:
                for subscription in subscriptions:
                    await subscription.aclose()
    granted, refused, wrong_password = seen
    assert isinstance(granted, Reset)
    assert [kv.key for kv in granted.kvs] == [(ROOT + "services/pay").encode()]
    for item in (refused, wrong_password):
        assert isinstance(item, Connection)
        assert isinstance(item.error, EtcdAuthError), item.error


def test_the_same_tls_files_in_other_roles_are_other_settings(tmp_path: Path) -> None:
    # Before: only (path, digest) of the files given was kept, not which option
    # each was. With X = client certificate + CA and Y = client certificate +
    # key, "trust X, present Y" and "present X with the key in Y (trust the
    # system's CAs)" were equal settings, so one shared the other's watch and
    # read through a connection verified with a trust it did not configure.
    ca = trustme.CA()
    client = ca.issue_cert("client@example")
    x, y = tmp_path / "x.pem", tmp_path / "y.pem"
    x.write_bytes(client.cert_chain_pems[0].bytes() + ca.cert_pem.bytes())
    y.write_bytes(client.cert_chain_pems[0].bytes() + client.private_key_pem.bytes())

    def made(ca_file: Path | None, cert_file: Path, key_file: Path | None) -> object:
        return settings(
            "https://127.0.0.1:2379",
            username=None,
            password=None,
            ca_file=ca_file,
            cert_file=cert_file,
            key_file=key_file,
            ssl_context=None,
            timeout=10.0,
            connect_timeout=3.0,
            max_message_bytes=1 << 20,
        )

    assert made(x, y, None) == made(x, y, None)
    assert made(x, y, None) != made(None, x, y)
