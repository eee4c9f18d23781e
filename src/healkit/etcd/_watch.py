"""A watch on etcd: one stream of :class:`~healkit.etcd.WatchResponse`, each whole."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Self, final

from healkit._errors import EtcdCompactedError, EtcdError, EtcdProtocolError, EtcdRequestError
from healkit.etcd._gateway import Gateway, GatewayStream, status_error, stream_error
from healkit.etcd._messages import WATCH_MESSAGE, WatchReply, WatchResponse

__all__ = ["EtcdWatch"]


@final
class EtcdWatch:
    """One watch stream: ``async with client.watch(...) as watch: async for r in watch``.

    Entering creates the watch on the first endpoint that accepts it and waits
    for etcd's confirmation (:attr:`created_revision`). Iterating yields every
    further :class:`WatchResponse` whole: events, and progress notifications
    when asked for. Iteration ends only when the watch is closed; everything
    else is an error, after which the watch is closed:

    * :class:`~healkit.EtcdCompactedError` with ``compact_revision`` when the start
      revision is older than etcd's history;
    * :class:`~healkit.EtcdUnavailableError` when the stream breaks or ends (etcd
      stopped, connection lost, ``idle_timeout`` passed): resume with a new
      watch from the last revision applied, plus one;
    * :class:`~healkit.EtcdAuthError` when etcd refuses the watch;
    * :class:`~healkit.EtcdRequestError` when etcd cancels it for another reason.

    Entering raises the same errors when etcd refuses the watch at once (and
    EtcdUnavailableError when no endpoint accepts it).

    Closing (leaving the block, or :meth:`aclose`) drops the connection, which
    cancels the watch in etcd; an iteration waiting in another task then ends.
    An iteration that is cancelled closes the watch too, since part of a
    message may have been read.
    """

    __slots__ = ("_body", "_closed", "_created", "_endpoint", "_gateway", "_idle", "_stream")

    def __init__(
        self, gateway: Gateway, body: Mapping[str, object], *, idle_timeout: float | None
    ) -> None:
        self._gateway = gateway
        self._body = body
        self._idle = idle_timeout
        self._stream: GatewayStream | None = None
        self._endpoint = ""
        self._created: WatchResponse | None = None
        self._closed = False

    def __repr__(self) -> str:
        """Show the endpoint and the state of the watch."""
        state = "closed" if self._closed else "open" if self._stream else "not started"
        return f"<EtcdWatch {self._endpoint or '-'} {state}>"

    @property
    def endpoint(self) -> str:
        """The endpoint the watch runs on (empty before it was created)."""
        return self._endpoint

    @property
    def created_revision(self) -> int:
        """The store's revision when etcd confirmed the watch."""
        if self._created is None:
            raise RuntimeError("the watch was not created yet; use `async with`")
        return self._created.revision

    @property
    def cluster_id(self) -> int:
        """ID of the etcd cluster that confirmed the watch."""
        if self._created is None:
            raise RuntimeError("the watch was not created yet; use `async with`")
        return self._created.cluster_id

    @property
    def watch_id(self) -> int:
        """The ID etcd gave the watch."""
        if self._created is None:
            raise RuntimeError("the watch was not created yet; use `async with`")
        return self._created.watch_id

    async def __aenter__(self) -> Self:
        """Create the watch; return once etcd confirmed it."""
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the watch."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close the stream (etcd cancels the watch when the connection drops)."""
        self.close_soon()

    def close_soon(self) -> None:
        """Close the stream now, from synchronous code; an iteration waiting in a task ends."""
        self._closed = True
        stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()

    def __aiter__(self) -> Self:
        """Return the watch itself."""
        return self

    async def __anext__(self) -> WatchResponse:
        """Return the next response of the stream (see the class docs for errors)."""
        if self._closed:
            raise StopAsyncIteration
        if self._stream is None:
            await self._open()
        try:
            reply = await self._next_reply()
        except EtcdError:
            if self._closed:
                # aclose() from another task while this one waited: a normal end.
                raise StopAsyncIteration from None
            self.close_soon()
            raise
        except BaseException:
            self.close_soon()
            raise
        if reply.canceled:
            self.close_soon()
            raise self._canceled(reply)
        return reply.response()

    async def _open(self) -> None:
        if self._closed:
            raise RuntimeError("the watch is closed")
        if self._stream is not None:
            return
        try:
            _, self._created = await self._gateway.open_stream(
                "/v3/watch", self._body, self._confirmed, idle_timeout=self._idle
            )
        except BaseException:
            self.close_soon()
            raise

    async def _confirmed(self, stream: GatewayStream) -> WatchResponse:
        """Read etcd's confirmation of the watch from a new stream (the gateway's ``first``).

        The watch holds the stream from now on, so that closing it meanwhile
        (from another task) drops the connection and ends the wait.
        """
        self._stream, self._endpoint = stream, stream.endpoint
        reply = await self._reply(stream)
        if reply.canceled:
            raise self._canceled(reply)
        if not reply.created:
            raise EtcdProtocolError(
                f"etcd at {stream.endpoint} did not confirm the watch: {reply!r}",
                endpoint=stream.endpoint,
            )
        return reply.response()

    async def _next_reply(self) -> WatchReply:
        stream = self._stream
        if stream is None:
            raise RuntimeError("the watch is not open")
        return await self._reply(stream)

    @staticmethod
    async def _reply(stream: GatewayStream) -> WatchReply:
        message = await stream.message(WATCH_MESSAGE)
        if message.error is not None:
            raise stream_error(message.error, stream.endpoint, "/v3/watch")
        if message.result is None:
            raise EtcdProtocolError(
                f"invalid watch message from etcd at {stream.endpoint}: no result",
                endpoint=stream.endpoint,
            )
        return message.result

    def _canceled(self, reply: WatchReply) -> EtcdError:
        endpoint = self._endpoint
        if reply.compact_revision:
            return EtcdCompactedError(
                f"etcd at {endpoint} canceled the watch: history compacted at revision "
                f"{reply.compact_revision}",
                compact_revision=reply.compact_revision,
                reason=reply.cancel_reason,
                endpoint=endpoint,
            )
        reason = reply.cancel_reason or "no reason given"
        # etcd words the reason as a gRPC error: "rpc error: code = X desc = Y".
        error = status_error(reason, endpoint=endpoint, path="/v3/watch")
        if error is None:
            message = f"etcd at {endpoint} canceled the watch: {reason}"
            return EtcdRequestError(message, code=None, reason=reason, endpoint=endpoint)
        return error
