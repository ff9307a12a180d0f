"""gRPC channels to the members of an etcd cluster, and the waits that leave nothing of a
cancelled gRPC call running."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from typing import TYPE_CHECKING, Any

import anyio
import grpc
from aetcd import rpc

from dfdb.errors import AuthenticationError, BackendUnavailableError

if TYPE_CHECKING:
    from dfdb.drivers.etcd import EtcdDriver

__all__: list[str] = []

log = logging.getLogger("dfdb.drivers.etcd")


async def unary(call: Any) -> Any:
    """The reply of the unary gRPC ``call``; a cancellation of the caller cancels the call
    and is raised as the caller's own.

    Awaited directly, a gRPC call cancelled while it runs raises a ``CancelledError`` of its
    own, without the cancellation's message: an anyio deadline (``fail_after``) does not
    take that one for its own and lets it escape instead of raising ``TimeoutError``. So the
    call is awaited through a shield: the ``CancelledError`` the caller sees is the one it
    was sent. A ``CancelledError`` with no cancellation of the caller means the call's
    channel was closed under it (the caller's task is not ``cancelling()``)."""
    inner = asyncio.ensure_future(call)
    try:
        return await asyncio.shield(inner)
    except asyncio.CancelledError:
        call.cancel()  # the call's own outcome (cancelled, or its deadline) is read, not left unretrieved
        inner.add_done_callback(lambda done: done.cancelled() or done.exception())
        raise


async def exchange(call: Any, request: Any) -> Any:
    """Write ``request`` on the streaming gRPC ``call`` and return the reply it reads next
    (``grpc.aio.EOF`` when the stream ended); a cancellation of the caller cancels the call
    and waits for it to end (a moment), and is raised as the caller's own (see :func:`unary`:
    gRPC's own ``CancelledError`` would escape an anyio deadline as a bare cancellation)."""

    async def both() -> Any:
        await call.write(request)
        return await call.read()

    inner = asyncio.ensure_future(both())
    try:
        return await asyncio.shield(inner)
    except asyncio.CancelledError:
        call.cancel()
        inner.cancel()  # a write to a server that stopped answering waits on, cancelled call or not
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await asyncio.wait({inner})
        inner.add_done_callback(lambda done: done.cancelled() or done.exception())
        raise


class _Endpoints:
    """gRPC channels to a list of members: one in use, the next on failure."""

    def __init__(self, driver: EtcdDriver, start: int = 0) -> None:
        self._driver = driver
        self._index = start % len(driver.targets)
        self._channel: grpc.aio.Channel | None = None
        self._token: str | None = None
        self._closes = 0  # how many times the channel was dropped: a connect that spans one is stale
        self.kv: Any = None
        self.watch: Any = None
        self.lease: Any = None

    @property
    def target(self) -> str:
        return self._driver.targets[self._index]

    async def connect(self) -> grpc.aio.Channel:
        if self._channel is None:
            driver = self._driver
            closes = self._closes
            log.debug("connecting to etcd member %s of %s", self.target, driver.url)
            if driver.credentials is None:
                channel = grpc.aio.insecure_channel(self.target, options=driver.channel_options)
            else:
                channel = grpc.aio.secure_channel(self.target, driver.credentials, options=driver.channel_options)
            if driver.url.username is not None:
                try:
                    reply = await unary(
                        rpc.AuthStub(channel).Authenticate(
                            rpc.AuthenticateRequest(name=driver.url.username, password=driver.url.password or ""),
                            timeout=driver.timeout,
                        )
                    )
                except BaseException as exc:
                    await channel.close()  # a cancelled or failed set-up leaves no channel behind
                    if not isinstance(exc, grpc.aio.AioRpcError):
                        raise
                    if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
                        # wrong user or password, or auth not enabled: permanent, not retried
                        raise AuthenticationError(f"{driver.url}: authentication failed: {exc.details()}") from None
                    raise
                if self._closes != closes or self._channel is not None:
                    # closed meanwhile (the driver, or a failover), or another call connected first
                    await channel.close()
                    if self._channel is None:
                        raise BackendUnavailableError(f"{driver.url} ({self.target}): closed while authenticating")
                    return self._channel
                self._token = reply.token
            self._channel = channel
            self.kv = rpc.KVStub(channel)
            self.watch = rpc.WatchStub(channel)
            self.lease = rpc.LeaseStub(channel)
        return self._channel

    def metadata(self, *extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
        return ((("token", self._token),) if self._token else ()) + extra

    async def failover(self, failed: grpc.aio.Channel | None = None) -> None:
        """Drop the channel in use and move to the next member (unless ``failed`` is given
        and another caller already moved away from it)."""
        if failed is not None and failed is not self._channel:
            return
        previous = self.target
        self._index = (self._index + 1) % len(self._driver.targets)
        log.debug("leaving etcd member %s for %s", previous, self.target)
        await self.close()

    async def close(self) -> None:
        channel, self._channel, self._token = self._channel, None, None
        self._closes += 1
        self.kv = self.watch = self.lease = None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()


async def _finished(call: Any, within: float) -> None:
    """Wait, shielded and at most ``within`` seconds, for the tasks gRPC runs for the
    cancelled ``call``: its set-up, and the task that waits for the call's final status,
    which ends a moment after the cancellation (once gRPC's completion queue says so).
    Then nothing of a closed source is left running. gRPC gives no public way to await
    them: the set-up is the call's ``_initializer``, the status task is found among the
    running tasks by the call it refers to (none found: nothing to wait for)."""
    with anyio.CancelScope(shield=True), anyio.move_on_after(within):
        initializer = getattr(call, "_initializer", None)
        if isinstance(initializer, asyncio.Task) and not initializer.done():
            await asyncio.wait({initializer})
        tasks = _status_tasks(getattr(call, "_cython_call", None))
        if tasks:
            await asyncio.wait(tasks)


def _status_tasks(core: object) -> set[asyncio.Task[Any]]:
    """The running tasks of gRPC that wait for the final status of the call ``core``."""
    found: set[asyncio.Task[Any]] = set()
    if core is None:
        return found
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        if task.done() or "_AioCall." not in getattr(coro, "__qualname__", ""):
            continue
        for ref in gc.get_referents(coro):  # the coroutine's closure holds the call
            if ref is core or any(inner is core for inner in gc.get_referents(ref)):
                found.add(task)
                break
    return found
