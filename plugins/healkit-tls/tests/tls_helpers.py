"""Helpers of the TLS plugin's tests: a mutual-TLS server that records client certificates,
material on disk rotated atomically, and an observer collecting the plugin's events."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import anyio
import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes

import healkit

E = TypeVar("E")


def fingerprint(leaf: trustme.LeafCert) -> str:
    """SHA-256 of the leaf certificate, as the plugin and the server report it."""
    certificate = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    return certificate.fingerprint(hashes.SHA256()).hex()


def server_context(
    server_cert: trustme.LeafCert, *client_cas: trustme.CA, require: bool = True
) -> ssl.SSLContext:
    """A server context presenting ``server_cert`` and requiring a client certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    if require:
        context.verify_mode = ssl.CERT_REQUIRED
        for ca in client_cas:
            ca.configure_trust(context)
    return context


@dataclass(frozen=True)
class Seen:
    """One request the server handled: its path, the client certificate, the connection."""

    path: str
    fingerprint: str | None
    connection: int


class MtlsServer:
    """An aiohttp HTTPS server on loopback that records each request's client certificate.

    ``GET /hold`` waits until :meth:`release` is called, so that requests can be
    kept in flight; any other path answers 200 at once.
    """

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.seen: list[Seen] = []
        self.held = 0
        self._gate = asyncio.Event()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.context)
        await site.start()
        self._runner = runner
        self.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        transport = request.transport
        assert transport is not None
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        seen = None
        if der is not None:
            seen = x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256()).hex()
        self.seen.append(Seen(request.path, seen, id(transport)))
        if request.path == "/hold":
            self.held += 1
            self._changed.set()
            await self._gate.wait()
        return web.Response(text="ok")

    def release(self) -> None:
        self._gate.set()

    async def wait_held(self, count: int) -> None:
        with anyio.fail_after(20.0):
            while self.held < count:
                self._changed.clear()
                await self._changed.wait()

    def fingerprints(self, path: str | None = None) -> list[str | None]:
        return [s.fingerprint for s in self.seen if path is None or s.path == path]


class Events:
    """An observer plugin collecting the events emitted to ``healkit_event``."""

    healkit_name = "tls-events"
    healkit_observer = True

    def __init__(self) -> None:
        self.received: list[object] = []
        self._changed = asyncio.Event()

    @healkit.hookimpl
    def healkit_event(self, event: object) -> None:
        self.received.append(event)
        self._changed.set()

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.received if isinstance(event, kind)]

    async def wait_for(self, kind: type[E], count: int = 1) -> list[E]:
        """Wait (with a deadline, never a fixed sleep) until ``count`` events of ``kind`` came."""
        with anyio.fail_after(10.0):
            while len(self.of(kind)) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.of(kind)


class Material:
    """Client material on disk, Kubernetes-style: ``current`` is a symlink to a
    generation directory, swapped atomically, so that a certificate and its key
    always change together."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        self.current = root / "current"

    @property
    def cert(self) -> str:
        return str(self.current / "cert.pem")

    @property
    def key(self) -> str:
        return str(self.current / "key.pem")

    @property
    def ca(self) -> str:
        return str(self.current / "ca.pem")

    def write(
        self,
        *,
        cert: bytes | None = None,
        key: bytes | None = None,
        ca: bytes | None = None,
    ) -> None:
        """Publish a new generation; parts not given are carried over from the current one."""
        self.generation += 1
        directory = self.root / f"gen-{self.generation}"
        directory.mkdir()
        for name, given in (("cert.pem", cert), ("key.pem", key), ("ca.pem", ca)):
            data = given
            if data is None and (self.current / name).exists():
                data = (self.current / name).read_bytes()
            if data is not None:
                (directory / name).write_bytes(data)
        link = self.root / "current.new"
        link.symlink_to(directory.name)
        link.replace(self.current)  # rename(2): atomic

    def write_leaf(self, leaf: trustme.LeafCert, ca: trustme.CA | None = None) -> None:
        self.write(
            cert=b"".join(blob.bytes() for blob in leaf.cert_chain_pems),
            key=leaf.private_key_pem.bytes(),
            ca=ca.cert_pem.bytes() if ca is not None else None,
        )

    def section(self, **extra: Any) -> dict[str, Any]:
        return {"ca_file": self.ca, "cert_file": self.cert, "key_file": self.key, **extra}


def pem_chain(leaf: trustme.LeafCert) -> str:
    return "".join(blob.bytes().decode() for blob in leaf.cert_chain_pems)
