"""A real etcd cluster of several members for tests, all on loopback.

:class:`EtcdCluster` starts three (or five...) etcd members as child
processes, each on its own client and peer ports and with its own data
directory, and waits until they have elected a leader. A test can then stop,
kill and start single members (lose the leader, lose quorum, bring a member
back with an older revision) while clients talk to the cluster through the
list of every member's URL::

    async with EtcdCluster() as cluster, cluster.client() as client:
        await client.put("/k", b"v")
        leader = await cluster.leader()
        await leader.stop(kill=True)
        await cluster.leader(exclude=[leader])

It runs the same binary as :class:`~healkit.testing.EtcdServer`
(:func:`~healkit.testing.find_etcd_binary`), without TLS or auth. Every member
is stopped on leaving the ``async with`` block, also when starting failed, and
at interpreter exit if a test forgot it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self, final

import aiohttp

from healkit.etcd._client import EtcdClient
from healkit.testing._etcd import (
    _POLL,
    _START_ATTEMPTS,
    _etcd_version,
    _kill,
    _PortTakenError,
    find_etcd_binary,
    log_tail,
    stop_process,
)
from healkit.testing._ports import unused_tcp_port

__all__ = ["EtcdCluster", "EtcdMember"]

_HOST: Final = "127.0.0.1"


@final
class EtcdMember:
    """One member of an :class:`EtcdCluster` (made by the cluster, not by hand).

    Attributes:
        name: the member's name in the cluster (``m0``, ``m1``, ...).

    """

    __slots__ = (
        "__weakref__",
        "_cluster",
        "_finalizer",
        "_log",
        "_peer_port",
        "_port",
        "_process",
        "name",
    )

    def __init__(self, cluster: EtcdCluster, name: str) -> None:
        self._cluster = cluster
        self.name = name
        self._port = 0
        self._peer_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._finalizer: (
            weakref.finalize[[subprocess.Popen[bytes], IO[bytes] | None], EtcdMember] | None
        ) = None

    def __repr__(self) -> str:
        """Show the member's name, address and whether it runs."""
        state = "running" if self.running else "stopped"
        return f"<EtcdMember {self.name} {self.url} {state}>"

    @property
    def port(self) -> int:
        """The client port (it stays the same across restarts)."""
        return self._port

    @property
    def peer_port(self) -> int:
        """The peer (raft) port."""
        return self._peer_port

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT``, as etcdctl's ``--endpoints`` takes it."""
        return f"{_HOST}:{self._port}"

    @property
    def url(self) -> str:
        """The client URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self.endpoint}"

    @property
    def peer_url(self) -> str:
        """The peer URL the other members reach this one at."""
        return f"http://{_HOST}:{self._peer_port}"

    @property
    def data_dir(self) -> Path:
        """The member's data directory (kept across restarts)."""
        return self._cluster.directory / self.name / "data"

    @property
    def log_path(self) -> Path:
        """The file the member logs to (all starts appended)."""
        return self._cluster.directory / self.name / "etcd.log"

    @property
    def running(self) -> bool:
        """The member's process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The process ID of the member while it runs, else ``None``."""
        return self._process.pid if self._process is not None and self.running else None

    def client(self, **options: object) -> EtcdClient:
        """Return an :class:`~healkit.EtcdClient` that talks to this member only."""
        return EtcdClient(self.url, **options)  # type: ignore[arg-type] # checked by EtcdClient

    async def status(self) -> dict[str, object] | None:
        """Return the member's ``/v3/maintenance/status`` reply, or ``None`` if it gives none."""
        timeout = aiohttp.ClientTimeout(total=1.0)
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(f"{self.url}/v3/maintenance/status", data=b"{}") as response,
            ):
                reply = await response.json(content_type=None)
                if response.status == 200 and isinstance(reply, dict):
                    return reply
        return None

    async def start(self) -> None:
        """Start the member again after :meth:`stop`, and wait until it has a leader.

        A member alone cannot elect one: to bring back quorum, start the
        members together with :meth:`EtcdCluster.start`.
        """
        await self._cluster.start(self)

    def pause(self) -> None:
        """Freeze the member (SIGSTOP): it answers nothing and falls behind the others.

        Connections to it stay open (new ones wait in its listen queue). After
        :meth:`resume` it serves again from the state it had, while it catches
        up with the cluster: a member with an older revision.
        """
        if self._process is None or not self.running:
            raise RuntimeError(f"etcd member {self.name} is not running")
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a member frozen by :meth:`pause` run again (SIGCONT)."""
        if self._process is None or not self.running:
            raise RuntimeError(f"etcd member {self.name} is not running")
        self._process.send_signal(signal.SIGCONT)

    async def stop(self, *, kill: bool = False) -> None:
        """Stop the member: SIGTERM and wait (or SIGKILL at once with ``kill=True``).

        Its data directory stays; :meth:`start` resumes from it.
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

    # -- internals -----------------------------------------------------------------

    def _spawn(self, command: list[str]) -> int:
        """Start the process; return the size of the log before it (to read its start)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        try:
            process = subprocess.Popen(  # noqa: S603 - the etcd binary with our own flags
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            log.close()
            raise
        self._process, self._log = process, log
        self._finalizer = weakref.finalize(self, _kill, process, log)
        return offset

    async def _wait_ready(self, log_offset: int, deadline: float) -> None:
        """Poll the member's status until it reports a leader, or fail with its log."""
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                tail = self._log_tail(log_offset)
                if "address already in use" in tail:
                    raise _PortTakenError(tail)
                code = None if process is None else process.returncode
                raise RuntimeError(
                    f"etcd member {self.name} exited ({code}) while starting\n{tail}"
                )
            status = await self.status()
            if status is not None and status.get("leader"):
                return
            if time.monotonic() >= deadline:
                message = f"etcd member {self.name} had no leader in time"
                raise RuntimeError(f"{message}\n{self._log_tail(log_offset)}")
            await asyncio.sleep(_POLL)

    def _log_tail(self, offset: int) -> str:
        return log_tail(self.log_path, self._log, offset)


@final
class EtcdCluster:
    """A real etcd cluster of ``size`` members on ``127.0.0.1``, for tests.

    Args:
        size: the number of members (3 or 5 as in production; 1 works too).
        directory: where to keep each member's data and log (default: a
            temporary directory, removed when the cluster is closed).
        binary: the etcd binary (default: :func:`~healkit.testing.find_etcd_binary`).
        extra_args: more command-line flags for every member, e.g.
            ``["--snapshot-count=100"]``.
        startup_timeout: seconds to wait for the members to elect a leader.

    Elections are fast on loopback (heartbeat 20 ms, election timeout 200 ms)
    and the members write without ``fsync`` (etcd 3.5): the data is
    throwaway. Use it as an async context manager. Not thread-safe; the
    processes are not tied to an event loop, so one cluster can serve several
    tests.

    """

    __slots__ = (
        "_args",
        "_binary",
        "_directory",
        "_owns_directory",
        "_startup_timeout",
        "_token",
        "_version",
        "members",
    )

    def __init__(
        self,
        *,
        size: int = 3,
        directory: str | os.PathLike[str] | None = None,
        binary: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        if size < 1:
            raise ValueError("an etcd cluster has at least one member")
        self._owns_directory = directory is None
        self._directory = None if directory is None else Path(directory)
        self._binary = None if binary is None else Path(binary)
        self._args = tuple(extra_args)
        self._startup_timeout = startup_timeout
        self._version: tuple[int, int, int] | None = None
        self._token = ""
        self.members: tuple[EtcdMember, ...] = tuple(
            EtcdMember(self, f"m{index}") for index in range(size)
        )
        """The members, in the order of :attr:`urls`."""

    def __repr__(self) -> str:
        """Show the members."""
        return f"<EtcdCluster {', '.join(repr(member) for member in self.members)}>"

    @property
    def directory(self) -> Path:
        """The directory holding one folder per member (``data/``, ``etcd.log``)."""
        if self._directory is None:
            raise RuntimeError("the EtcdCluster was never started; use `async with`")
        return self._directory

    @property
    def urls(self) -> list[str]:
        """Every member's client URL: the endpoint list clients are given."""
        return [member.url for member in self.members]

    @property
    def version(self) -> tuple[int, int, int]:
        """The etcd version, e.g. ``(3, 5, 1)``."""
        if self._version is None:
            raise RuntimeError("the EtcdCluster was never started; use `async with`")
        return self._version

    def client(self, **options: object) -> EtcdClient:
        """Return an :class:`~healkit.EtcdClient` given every member's URL."""
        return EtcdClient(self.urls, **options)  # type: ignore[arg-type] # checked by EtcdClient

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start every member and wait until they have elected a leader."""
        if self._version is not None:
            raise RuntimeError("an EtcdCluster can be entered only once")
        try:
            binary = self._binary if self._binary is not None else find_etcd_binary()
            self._binary = binary
            self._version = await asyncio.to_thread(_etcd_version, binary)
            if self._directory is None:
                self._directory = Path(tempfile.mkdtemp(prefix="healkit-etcd-cluster-"))
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
        """Stop every member and remove the temporary directory."""
        await self._close()

    async def start(self, *members: EtcdMember) -> None:
        """Start stopped ``members`` together and wait until each has a leader.

        Starting two of three stopped members at once brings quorum back.
        """
        if self._version is None:
            raise RuntimeError("enter the EtcdCluster with `async with` first")
        if any(member.running for member in members):
            raise RuntimeError("a member to start is already running")
        deadline = time.monotonic() + self._startup_timeout
        offsets = [member._spawn(self._command(member)) for member in members]  # noqa: SLF001
        try:
            await asyncio.gather(
                *(
                    member._wait_ready(offset, deadline)  # noqa: SLF001 - the cluster owns its members
                    for member, offset in zip(members, offsets, strict=True)
                )
            )
        except BaseException:
            await asyncio.gather(*(member.stop(kill=True) for member in members))
            raise

    async def stop(self, *members: EtcdMember, kill: bool = False) -> None:
        """Stop ``members`` at once (see :meth:`EtcdMember.stop`)."""
        await asyncio.gather(*(member.stop(kill=kill) for member in members))

    async def leader(self, *, exclude: Sequence[EtcdMember] = ()) -> EtcdMember:
        """Return the member the running members agree leads now, not one of ``exclude``.

        Waits for an election when there is no such leader yet (after
        stopping the leader, pass it as ``exclude``).

        Raises:
            TimeoutError: no such leader within the cluster's ``startup_timeout``.

        """
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            found = await self._current_leader()
            if found is not None and found not in exclude:
                return found
            await asyncio.sleep(_POLL)
        raise TimeoutError(f"the etcd cluster had no leader within {self._startup_timeout}s")

    async def revision(self) -> int:
        """Return the store's current revision, as the leader has it."""
        leader = await self.leader()
        status = await leader.status()
        header = None if status is None else status.get("header")
        if not isinstance(header, dict):
            raise TypeError(f"unexpected status reply from etcd member {leader.name}: {status!r}")
        return int(header.get("revision", 0))

    # -- internals -----------------------------------------------------------------

    async def _current_leader(self) -> EtcdMember | None:
        running = [member for member in self.members if member.running]
        statuses = await asyncio.gather(*(member.status() for member in running))
        by_id: dict[str, EtcdMember] = {}
        leaders: set[str] = set()
        for member, status in zip(running, statuses, strict=True):
            header = None if status is None else status.get("header")
            if status is None or not isinstance(header, dict):
                continue
            by_id[str(header.get("member_id"))] = member
            leaders.add(str(status.get("leader", "0")))
        if len(leaders) != 1:
            return None
        return by_id.get(leaders.pop())

    async def _first_start(self) -> None:
        for attempt in range(1, _START_ATTEMPTS + 1):
            # Free ports found now may be taken before etcd binds them: retry
            # with others when etcd says so.
            ports: set[int] = set()
            while len(ports) < 2 * len(self.members):
                ports.add(unused_tcp_port())
            chosen = sorted(ports)
            for index, member in enumerate(self.members):
                member._port, member._peer_port = chosen[2 * index], chosen[2 * index + 1]  # noqa: SLF001
            self._token = f"healkit-cluster-{chosen[0]}"
            try:
                await self.start(*self.members)
            except _PortTakenError:
                if attempt == _START_ATTEMPTS:
                    raise
                for member in self.members:
                    shutil.rmtree(member.data_dir, ignore_errors=True)
                continue
            break

    def _command(self, member: EtcdMember) -> list[str]:
        binary = self._binary
        if binary is None:
            raise RuntimeError("no etcd binary")
        initial = ",".join(f"{other.name}={other.peer_url}" for other in self.members)
        args = [
            os.fspath(binary),
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.url}",
            f"--advertise-client-urls={member.url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={initial}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token={self._token}",
            # Fast elections on loopback, and a minimum lease TTL of 1 s.
            "--heartbeat-interval=20",
            "--election-timeout=200",
            "--logger=zap",
            "--log-level=warn",
        ]
        if self.version >= (3, 5, 0):
            args.append("--unsafe-no-fsync")  # throwaway data: no need to wait for the disk
        return [*args, *self._args]

    async def _close(self) -> None:
        try:
            await self.stop(*self.members, kill=True)  # throwaway data: no graceful shutdown
        finally:
            if self._owns_directory and self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
