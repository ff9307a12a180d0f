"""Chaos testing support: cancel a call at a chosen await point, record a history of
operations with their outcomes, check it, and inject faults.

The pieces, usable on their own or from a Hypothesis state machine:

:func:`run_stepped`
    runs a coroutine in a task of its own and cancels that task when the coroutine
    reaches its ``k``-th await point (the ``k``-th time it suspends). Run it once
    without cancelling to count the await points, then once for each ``k``.
:class:`History` and :class:`KeyModel`
    record every write (ok / failed / unknown) and keep, per key, the set of states the
    database may hold given the outcomes so far; a read outside that set is a lost or
    doubled write.
:class:`WatchLog`
    what one watcher saw, checked against the history: per key increasing revisions,
    no failed write delivered, every acknowledged write delivered (exact streams) unless
    a ``RESYNC`` covers it, and a final view equal to the database.
:func:`corrupt`, :class:`ServerFaults`
    a value that fails validation written straight into the backend; kill, restart,
    pause and connection drops of a local test server.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from dfdb.drivers.base import ANY
from dfdb.errors import CorruptObjectError, NotFoundError
from dfdb.events import Action, ChangeEvent, parse_cursor
from dfdb.nb import NbApi, revision_of
from dfdb.nbmodel import NbModel
from dfdb.testing.servers import LocalServer

__all__ = [
    "ABSENT_STATE",
    "ChaosItem",
    "History",
    "KeyModel",
    "Op",
    "Outcome",
    "ServerFaults",
    "State",
    "Stepped",
    "WatchLog",
    "corrupt",
    "count_steps",
    "run_stepped",
    "state_of",
]

T = TypeVar("T")


class ChaosItem(NbModel, table="chaos_item"):
    """The object the chaos tests write: ``tag`` names the write that stored it."""

    n: int = 0
    tag: str = ""


# ---------------------------------------------------------------- stepping
class _Counted(Generic[T]):
    """Awaits a coroutine, counting the times it suspends; at suspension number
    ``cancel_at`` it cancels the task it runs in, so that the cancellation lands on
    exactly that await point (the task cancels the future it waits on, or, for a bare
    ``yield`` such as ``asyncio.sleep(0)``, throws ``CancelledError`` on resumption)."""

    def __init__(self, coro: Coroutine[Any, Any, T], cancel_at: int | None) -> None:
        self.coro = coro
        self.cancel_at = cancel_at
        self.steps = 0
        self.requested = False

    def __await__(self) -> Generator[Any, Any, T]:
        coro = self.coro
        send: Any = None
        throw: BaseException | None = None
        while True:
            try:
                yielded = coro.send(send) if throw is None else coro.throw(throw)
            except StopIteration as stop:
                result: T = stop.value
                return result
            self.steps += 1
            if self.steps == self.cancel_at:
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
                self.requested = True
            try:
                send, throw = (yield yielded), None
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                send, throw = None, exc


@dataclass
class Stepped(Generic[T]):
    """The end of a call run by :func:`run_stepped`."""

    steps: int
    """Await points the call reached (suspensions of its own task)."""
    cycles: int
    """Event-loop iterations the call lasted."""
    requested: bool
    """The cancellation was requested (the call reached the chosen point)."""
    cancelled: bool
    """The call ended with ``CancelledError``."""
    result: T | None = None
    error: BaseException | None = None
    """The exception the call raised, other than ``CancelledError``."""

    @property
    def swallowed(self) -> bool:
        """The cancellation was requested and the call returned (or raised another error)."""
        return self.requested and not self.cancelled


async def run_stepped(
    coro: Coroutine[Any, Any, T], cancel_at: int | None = None, *, cancel_at_cycle: int | None = None
) -> Stepped[T]:
    """Run ``coro`` in a task of its own and cancel it at its ``cancel_at``-th await point,
    or after ``cancel_at_cycle`` iterations of the event loop.

    Await points: only the suspensions of that task count (work it hands to other tasks
    or threads does not), so the count is the same from run to run as long as the call
    takes the same path. Loop iterations also reach into the tasks the call starts (a
    batch's ``gather``), at the price of depending on timing. A call that ends before the
    chosen point simply completes.
    """
    counted = _Counted(coro, cancel_at)
    loop = asyncio.get_running_loop()

    async def drive() -> T:
        return await counted

    task = asyncio.ensure_future(drive())
    cycles = 0
    cycle_cancel = False

    def tick() -> None:
        nonlocal cycles, cycle_cancel
        if task.done():
            return
        cycles += 1
        if cycles == cancel_at_cycle:
            task.cancel()
            cycle_cancel = True
        loop.call_soon(tick)

    loop.call_soon(tick)
    try:
        await asyncio.wait({task})
    except BaseException:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise
    requested = counted.requested or cycle_cancel
    if task.cancelled():
        return Stepped(counted.steps, cycles, requested, True)
    error = task.exception()
    if error is not None:
        return Stepped(counted.steps, cycles, requested, False, error=error)
    return Stepped(counted.steps, cycles, requested, False, result=task.result())


async def count_steps(make: Callable[[], Coroutine[Any, Any, Any]]) -> int:
    """The await points one uncancelled run of ``make()`` reaches (its error, if any, is ignored)."""
    return (await run_stepped(make())).steps


# ---------------------------------------------------------------- history
Outcome = Literal["ok", "failed", "unknown"]
State = tuple[int, str] | None
"""What the database holds for a key: (version, tag), or ``None`` when absent."""
ABSENT_STATE: State = None


def state_of(obj: NbModel | None) -> State:
    """The :data:`State` of a stored :class:`ChaosItem` (``None``: absent)."""
    if obj is None:
        return None
    return (obj.version, str(getattr(obj, "tag", "")))


@dataclass
class Op:
    """One recorded operation."""

    index: int
    kind: str
    key: str
    tag: str
    outcome: Outcome
    topic: str | None = None
    revision: int | None = None
    """The revision of an acknowledged create or update."""
    detail: str = ""


@dataclass
class KeyModel:
    """The states one key may be in, given the outcomes recorded so far."""

    states: set[State] = field(default_factory=lambda: {None})

    @property
    def certain(self) -> bool:
        return len(self.states) == 1

    def present(self) -> bool | None:
        """Whether the key exists (``None``: unknown)."""
        kinds = {s is not None for s in self.states}
        return kinds.pop() if len(kinds) == 1 else None

    def version(self) -> int | None:
        """The version of the key when certain and present."""
        if self.certain:
            only = next(iter(self.states))
            return None if only is None else only[0]
        return None


class History:
    """Every write with its outcome, and per key the states the database may hold."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.keys: dict[str, KeyModel] = {}
        self.violations: list[str] = []

    def model(self, key: str) -> KeyModel:
        return self.keys.setdefault(key, KeyModel())

    def record(
        self,
        kind: str,
        key: str,
        tag: str,
        outcome: Outcome,
        *,
        topic: str | None = None,
        result: NbModel | None = None,
        unknown_states: Iterable[State] = (),
        detail: str = "",
    ) -> Op:
        """Record a write and update the key's possible states.

        ``result``: the stored object of an acknowledged create/update/patch (``None``
        for an acknowledged delete). ``unknown_states``: the states an ``unknown``
        outcome may have left (besides the ones before it).
        """
        revision = revision_of(result) if result is not None else None
        op = Op(len(self.ops), kind, key, tag, outcome, topic, revision, detail)
        self.ops.append(op)
        model = self.model(key)
        if outcome == "ok":
            model.states = {state_of(result)}
        elif outcome == "unknown":
            model.states = model.states | set(unknown_states)
        return op

    def observe(self, key: str, state: State, where: str) -> None:
        """A read saw ``state`` for ``key``: it must be one of the possible states; then it is the state."""
        model = self.model(key)
        if state not in model.states:
            self.violations.append(
                f"{where}: {key} reads {state}, but the recorded outcomes allow only {sorted(map(str, model.states))}"
                f" (history of the key: {self.describe(key)})"
            )
        model.states = {state}

    def describe(self, key: str) -> str:
        return "; ".join(
            f"#{o.index} {o.kind} {o.tag} {o.outcome}{f' rev {o.revision}' if o.revision else ''}"
            f"{f' ({o.detail})' if o.detail else ''}"
            for o in self.ops
            if o.key == key
        )

    def by_tag(self) -> dict[str, Op]:
        return {o.tag: o for o in self.ops if o.tag}

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.ops:
            counts[o.outcome] = counts.get(o.outcome, 0) + 1
        return counts


# ---------------------------------------------------------------- watchers
@dataclass
class WatchLog:
    """What one watcher saw: its events in order, and a view rebuilt from them.

    ``relist`` reloads the view on ``RESYNC`` (the reconcile of the design: list the
    scope, replace it). ``topics``: the watched topics (``None``: all).
    """

    name: str
    topics: frozenset[str | None] | None
    start: int
    exact: bool
    events: list[ChangeEvent] = field(default_factory=list)
    view: dict[str, tuple[int, State]] = field(default_factory=dict)
    position: int = 0
    resyncs: int = 0

    def in_scope(self, topic: str | None) -> bool:
        return self.topics is None or topic in self.topics

    def seed(self, items: Iterable[NbModel], revision: int) -> None:
        """The view starts from a listing at ``revision``."""
        for obj in items:
            if self.in_scope(obj.topic):
                self.view[obj.id] = (revision_of(obj) or 0, state_of(obj))
        self.position = max(self.position, revision)

    async def take(self, ev: ChangeEvent, relist: Callable[[], Awaitable[tuple[list[NbModel], int]]]) -> None:
        """Account for one event from the stream."""
        self.events.append(ev)
        if ev.action == Action.RESYNC:
            self.resyncs += 1
            items, revision = await relist()
            listed = {o.id for o in items if self.in_scope(o.topic)}
            for id in [i for i in self.view if i not in listed]:
                self.view[id] = (revision, None)
            for obj in items:
                if self.in_scope(obj.topic):
                    self.view[obj.id] = (revision_of(obj) or 0, state_of(obj))
        else:
            held = self.view.get(ev.id)
            if held is None or held[0] < ev.revision:
                self.view[ev.id] = (ev.revision, None if ev.action == Action.DELETE else state_of(ev.obj))
        self.position = max(self.position, parse_cursor(ev.cursor)[1])

    def state(self) -> dict[str, State]:
        """The view: id -> state, present objects only."""
        return {id: s for id, (_, s) in self.view.items() if s is not None}

    def check(self, history: History, database: dict[str, State], ignore: Iterable[str] = ()) -> list[str]:
        """The watcher's sequence against the history and the final database; the problems found."""
        problems: list[str] = []
        ignored = set(ignore)
        tags = history.by_tag()
        last: dict[str, int] = {}
        seen_tags: set[str] = set()
        resync_at: list[int] = []
        for ev in self.events:
            if ev.action == Action.RESYNC:
                last.clear()
                seen_tags.clear()
                resync_at.append(ev.revision)
                continue
            if ev.id in ignored:
                continue
            if not self.in_scope(ev.topic):
                problems.append(f"{self.name}: event of topic {ev.topic!r} outside the scope: {ev.id}@{ev.revision}")
            before = last.get(ev.id)
            if before is not None and ev.revision <= before:
                problems.append(f"{self.name}: {ev.id} revision {ev.revision} after {before} (not increasing)")
            last[ev.id] = ev.revision
            if ev.action == Action.DELETE or ev.obj is None:
                continue
            tag = str(getattr(ev.obj, "tag", ""))
            op = tags.get(tag)
            if op is None or op.key != ev.id:
                problems.append(f"{self.name}: {ev.id}@{ev.revision} carries {tag!r}, which no write of the key made")
                continue
            if op.outcome == "failed":
                problems.append(f"{self.name}: {ev.id}@{ev.revision} is write {tag} that failed ({op.detail})")
            if op.outcome == "ok" and op.revision is not None and op.revision != ev.revision:
                problems.append(f"{self.name}: {ev.id} {tag} at revision {ev.revision}, acknowledged at {op.revision}")
            if self.exact and tag in seen_tags:
                problems.append(f"{self.name}: write {tag} of {ev.id} delivered twice")
            seen_tags.add(tag)
        if self.exact:
            delivered = {ev.revision for ev in self.events if ev.action != Action.RESYNC}
            for op in history.ops:
                if op.outcome != "ok" or op.revision is None or op.key in ignored:
                    continue
                if not (self.start < op.revision <= self.position):
                    continue
                if not self.in_scope(op.topic):
                    continue
                if op.revision not in delivered and not any(r >= op.revision for r in resync_at):
                    problems.append(
                        f"{self.name}: acknowledged write {op.tag} of {op.key} at revision {op.revision} "
                        f"never delivered and no RESYNC covers it (watched {self.start}..{self.position})"
                    )
        want = {k: s for k, s in database.items() if k not in ignored}
        got = {k: s for k, s in self.state().items() if k not in ignored}
        if got != want:
            diff = sorted(
                f"{k}: watcher {got.get(k)} database {want.get(k)}"
                for k in set(got) | set(want)
                if got.get(k) != want.get(k)
            )
            problems.append(f"{self.name}: final view differs from the database: {'; '.join(diff)}")
        return problems


# ---------------------------------------------------------------- faults
async def corrupt(nb: NbApi, model: type[NbModel], id: str, topic: str | None, value: bytes = b'{"id": 7,') -> int:
    """Store ``value`` (by default not even JSON) at (``model``, ``id``) straight through the
    driver, as another program could; returns the revision."""
    return await nb.driver.put(model.__table__, id, topic, value, ANY)


async def read_state(nb: NbApi, model: type[NbModel], id: str) -> State | Literal["corrupt"]:
    """The key's state read through the NbApi (``"corrupt"``: it fails validation)."""
    try:
        return state_of(await nb.get(model, id))
    except NotFoundError:
        return None
    except CorruptObjectError:
        return "corrupt"


class ServerFaults:
    """Faults on a local test server: ``kill -9`` and restart with its data, ``SIGSTOP``
    for a while, and (Redis) dropping every client connection."""

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        self.kills = 0
        self.pauses = 0
        self.drops = 0
        self._paused = False

    @property
    def kind(self) -> str:
        return type(self.server).__name__.removesuffix("Server").lower()

    async def restart(self) -> None:
        """Kill the server and start it again on its port with its data (in a thread:
        the event loop keeps running meanwhile, so clients see the outage)."""
        self.kills += 1
        restart: Callable[[], None] = getattr(self.server, "restart")  # noqa: B009
        await asyncio.to_thread(restart)

    def pause(self) -> None:
        """``SIGSTOP`` every member: it keeps its connections and answers nothing."""
        self.pauses += 1
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """``SIGCONT`` every member; idempotent."""
        if self._paused:
            self._signal(signal.SIGCONT)
            self._paused = False

    def _signal(self, sig: signal.Signals) -> None:
        for proc in self.server.processes:
            if proc is not None and proc.poll() is None:
                proc.send_signal(sig)

    @property
    def can_drop(self) -> bool:
        return self.kind == "redis"

    async def drop_connections(self) -> None:
        """Redis: ``CLIENT KILL TYPE normal`` (and pub/sub): every client connection is closed."""
        self.drops += 1
        port = int(self.server.url.rsplit(":", 1)[1].split("/", 1)[0])

        def kill() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                for kind in (b"normal", b"pubsub"):
                    sock.sendall(b"CLIENT KILL TYPE " + kind + b"\r\n")
                    sock.recv(64)

        await asyncio.to_thread(kill)
