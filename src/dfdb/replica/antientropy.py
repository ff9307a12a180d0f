"""Anti-entropy: a Replica checks its scope against the database now and then and repairs
what differs, so that a silently wrong change stream cannot leave it stale for ever.

One check, per model of the Replica:

1. The driver's digest of the scope (:meth:`Driver.digest`: per bucket of ids, a count
   and a hash over (id, revision); computed on the server where the backend allows) at
   revision ``R``; the Replica waits (at most ``settle`` seconds) until it has applied
   every change up to ``R``, then computes the same digest of its store.
2. Only where buckets differ: the ids and revisions of those buckets
   (:meth:`Driver.digest_keys`, no values), at revision ``R2``, the Replica again waiting
   until it has applied ``R2``. A key whose revision differs from the one held, and is
   not explained by a change the Replica applied after the listing, is a suspect.
3. Each suspect is read (``get``: the only values a check reads) and applied unless the
   Replica already holds that revision or a later one, emitting the Replica's usual
   events (a missing key is deleted). Each table scope found different is logged at
   WARNING and counted in ``stats().divergences``; each object repaired in
   ``stats().repaired``.

A digest made on another dataset than the one the Replica's stream follows (a server back
without its data, before the stream noticed) skips the check: the stream's ``RESYNC``
relists the scope.

A REACTIVE Replica holds only what it fetched: its check lists the keys of its held
objects' topics (no digest: the topics hold objects it does not) and compares the held
ones.

A change still on its way is not repaired: the waits make the Replica's position pass
the digest's revision first, and a repair never overwrites a newer revision. A check
that a relist overtook (a ``RESYNC``'s, which replaces the scope and forgets the deletes it
remembered) repairs nothing: what it read is older than the relist. Objects
whose stored value is corrupt are remembered with their revision, so that they do not
count as a difference at every check.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from dfdb.drivers.base import Entry
from dfdb.drivers.digest import bucket_of, buckets_for, digest_of
from dfdb.errors import CorruptObjectError, DfdbError, StreamClosedError
from dfdb.events import parse_cursor
from dfdb.nbmodel import NbModel
from dfdb.replica.modes import SyncMode

if TYPE_CHECKING:
    from dfdb.replica.core import Replica

__all__ = ["AntiEntropy", "CheckReport"]

log = logging.getLogger("dfdb.replica")

Scope = frozenset[str | None] | None


@dataclass(frozen=True, slots=True)
class CheckReport:
    """What one consistency check did (``await replica.check()``)."""

    complete: bool
    """Whether the check ran (a Replica relisting or changing its topics is not checked)."""
    buckets: int = 0
    """Buckets compared (each model's digest is cut into buckets_for(objects held); a
    REACTIVE Replica lists the keys of its held objects' topics: one bucket a model)."""
    differing: int = 0
    """Buckets whose digest differed from the Replica's."""
    repaired: int = 0
    """Objects repaired."""
    keys_read: int = 0
    """Keys (ids and revisions, no values) the check received."""
    values_read: int = 0
    """Values the check received (the suspects it read, and a driver's fallback digest)."""
    bytes_read: int = 0
    """The size of what the check received (digests, keys and values)."""
    round_trips: int = 0
    """Requests the check sent."""


class AntiEntropy:
    """The consistency checks of one Replica: run every ``interval`` seconds (jittered by
    ±50 %, so that a fleet started together does not check together) and on demand."""

    def __init__(self, replica: Replica, interval: float | None, settle: float = 2.0) -> None:
        if interval is not None and interval <= 0:
            raise ValueError("check_interval must be positive (or None: no periodic checks)")
        self.replica = replica
        self.interval = interval
        self.settle = settle
        self.checks = 0
        """Checks completed."""
        self.divergences = 0
        """Table scopes a check found different from the database."""
        self.repaired = 0
        """Objects repaired."""
        self._lock = anyio.Lock()
        self._corrupt: dict[tuple[type[NbModel], str], tuple[int, str | None]] = {}

    async def run(self) -> None:
        """Check every ``interval`` seconds (jittered) until cancelled."""
        assert self.interval is not None
        while True:
            await anyio.sleep(self.interval * random.uniform(0.5, 1.5))
            try:
                await self.check()
            except StreamClosedError:
                return
            except DfdbError as exc:  # the next check tries again
                log.warning("replica consistency check failed: %s", str(exc))
            except Exception as exc:  # a driver's bug or hostile data: reported, and the checks go on
                log.error("replica consistency check failed unexpectedly: %s: %s", type(exc).__name__, exc)

    # ------------------------------------------------------------ one check
    def _scope(self) -> Scope:
        r = self.replica
        if r.mode is SyncMode.REACTIVE:
            return frozenset(r._held_topics)
        return None if r.mode is SyncMode.FULL else frozenset({None, *r.topics})

    def _local(self, model: type[NbModel], scope: Scope) -> dict[str, int]:
        """The ids and revisions the Replica holds in ``scope`` (known corrupt keys too)."""
        held = {
            id: rev for id, (obj, rev) in self.replica._store.rows[model].items() if scope is None or obj.topic in scope
        }
        for (m, id), (rev, topic) in self._corrupt.items():
            if m is model and id not in held and (scope is None or topic in scope):
                held[id] = rev
        return held

    async def _settle(self, revision: int, settle: float) -> None:
        """Wait until the Replica has applied every change up to ``revision``, at most ``settle``
        seconds (a change that never comes, written around the change log, must not stall a
        check)."""
        with anyio.move_on_after(settle):
            await self.replica.wait_for(revision)

    def _same_dataset(self, identities: Iterable[str | None]) -> bool:
        """Whether the digests were made on the dataset the Replica's stream follows. A server
        back without its data (a volatile Redis) has a new one before the stream notices: its
        ``RESYNC`` relists the scope, and a check must not "repair" object by object against
        the new dataset meanwhile (nor count it as a divergence): it is skipped."""
        stream = self.replica._stream
        if stream is None:
            return False
        try:
            following = parse_cursor(stream.cursor)[0]
        except (StreamClosedError, ValueError):
            return False
        if following in self.replica.nb.driver.unnamed_identities:
            return True  # the stream began before any dataset was made: every dataset continues it
        other = {i for i in identities if i is not None and i != following}
        if other:
            log.info(
                "replica consistency check skipped: the database's dataset is %s, the stream follows %s "
                "(its RESYNC relists the scope)",
                ", ".join(sorted(other)),
                following,
            )
        return not other

    async def check(self, settle: float | None = None) -> CheckReport:
        """Compare the Replica's scope with the database's and repair what differs.

        Args:
            settle: seconds to wait for the Replica to catch up with a digest's revision
                (default: the Replica's ``check_settle``).

        Raises:
            BackendUnavailableError: the server could not be reached (nothing was changed).
            StreamClosedError: the Replica is closed.
        """
        r = self.replica
        if not r._following:  # closed, stopped by a failure, or not entered yet
            if not r._entered:
                raise StreamClosedError("enter the Replica with 'async with' before checking it")
            raise StreamClosedError(f"this Replica stopped: {r._failure}" if r._failure else "this Replica is closed")
        async with self._lock:
            if not r.synced or r._lock.locked():
                return CheckReport(False)
            wait = self.settle if settle is None else settle
            scope = self._scope()
            nb, driver = r.nb, r.nb.driver
            if r.mode is SyncMode.REACTIVE:  # the held objects only: their topics' keys, compared one by one
                report = _Tally()
                for model in r.models:
                    if scope and self._local(model, scope):
                        report.buckets += 1
                        await self._repair(model, scope, 1, {0}, wait, report)
                self.checks += 1
                return report.result()
            sizes = {model: buckets_for(len(self._local(model, scope))) for model in r.models}
            read = functools.partial(driver.digest_many, {m.__table__: n for m, n in sizes.items()}, scope)
            every = await nb._retry(read, "digest", r.models[0].__table__)
            digests = [(model, n, every[model.__table__]) for model, n in sizes.items()]
            if not self._same_dataset(d.identity for _, _, d in digests):
                return CheckReport(False)
            await self._settle(max(d.revision for _, _, d in digests), wait)
            report = _Tally(
                buckets=sum(n for _, n, _ in digests),
                keys=sum(d.records_read for _, _, d in digests),
                values=sum(d.values_read for _, _, d in digests),
                bytes=sum(d.bytes_read for _, _, d in digests),
                trips=sum(d.round_trips for _, _, d in digests),
            )
            for model, n, digest in digests:
                mine = digest_of(self._local(model, scope).items(), n)
                differ = {b for b in set(mine) | set(digest.buckets) if mine.get(b) != digest.buckets.get(b)}
                if differ:
                    report.differing += len(differ)
                    await self._repair(model, scope, n, differ, wait, report)
            self.checks += 1
            return report.result()

    async def _repair(
        self, model: type[NbModel], scope: Scope, n: int, differ: Collection[int], wait: float, report: _Tally
    ) -> None:
        """Find and repair the keys of the ``differ`` buckets that the Replica holds wrong."""
        r = self.replica
        nb, driver, table = r.nb, r.nb.driver, model.__table__
        relists = r.resyncs  # a relist after this reads the scope again, later: what this reads is older
        keys = await nb._retry(functools.partial(driver.digest_keys, table, scope, n, differ), "digest", table)
        report.keys += len(keys.revisions)
        report.values += keys.values_read
        report.bytes += keys.bytes_read
        report.trips += keys.round_trips
        if not self._same_dataset([keys.identity]):
            return
        await self._settle(keys.revision, wait)
        store = r._store
        mine = {id: rev for id, rev in self._local(model, scope).items() if bucket_of(id, n) in differ}
        suspects = []
        held_only = r.mode is SyncMode.REACTIVE
        for id in sorted(set(mine) | (set() if held_only else set(keys.revisions))):
            theirs, held = keys.revisions.get(id), mine.get(id)
            if theirs == held:
                continue
            if theirs is not None and (store.is_stale(model, id, theirs) or (held is not None and held > theirs)):
                continue  # the Replica applied a later change
            if theirs is None and held is not None and held > keys.revision:
                continue  # created after the listing
            suspects.append(id)
        if not suspects:
            return
        found: list[tuple[str, Entry | None]] = []
        for id in suspects:
            report.trips += 1
            try:
                entry = await nb._retry(functools.partial(driver.get, table, id), "get", table)
            except CorruptObjectError as exc:  # unreadable as stored: remembered, not a difference
                self._note_corrupt(model, id, keys.revisions.get(id), keys.topics.get(id), exc)
                continue
            if entry is not None:
                report.values += 1
                report.bytes += len(entry.value) + len(entry.id) + len(entry.topic or "") + 16
            found.append((id, entry))
        async with r._lock:
            if self._scope() != scope or r.resyncs != relists:
                return  # topics changed, or a relist replaced the scope (its deletes too): the next check looks again
            repaired = sum([self._repair_one(model, scope, id, entry, keys.revision) for id, entry in found])
        if repaired:
            self.divergences += 1
            self.repaired += repaired
            report.repaired += repaired
            log.warning(
                "replica diverged from the database in %s (%s): %d objects differed in %d of %d buckets; repaired",
                table,
                _describe(scope),
                repaired,
                len(differ),
                n,
            )

    def _repair_one(self, model: type[NbModel], scope: Scope, id: str, entry: Entry | None, listed: int) -> bool:
        """Apply the database's ``entry`` of ``id`` (``None``: absent since the listing at
        revision ``listed``) where the Replica holds less; whether it repaired something."""
        r = self.replica
        store = r._store
        held = store.row(model, id)
        if entry is None:
            self._corrupt.pop((model, id), None)
            if held is None or held[1] > listed:
                return False
            r._apply(model, id, None, max(listed, held[1] + 1))
            return True
        if store.is_stale(model, id, entry.revision) or (scope is not None and entry.topic not in scope):
            return False
        known = self._corrupt.get((model, id))
        if known is not None and known[0] == entry.revision:
            return False
        try:
            obj = r.nb._decode_entry(model, entry)
        except CorruptObjectError as exc:
            self._note_corrupt(model, id, entry.revision, entry.topic, exc)
            if held is not None:
                r._evict_corrupt(model, id, entry.revision)
            return False
        self._corrupt.pop((model, id), None)
        r._apply(model, id, obj, entry.revision)
        return True

    def known_corrupt(self, model: type[NbModel], id: str, revision: int, topic: str | None) -> None:
        """A stored value the Replica found corrupt and reported (at its load, or building an
        entry held unbuilt): no difference to a check, which neither reads nor reports it
        again until its revision changes."""
        self._corrupt[(model, id)] = (revision, topic)

    def _note_corrupt(
        self, model: type[NbModel], id: str, revision: int | None, topic: str | None, exc: CorruptObjectError
    ) -> None:
        """Remember a stored value that cannot be read, so that it is no difference next time."""
        if (model, id) not in self._corrupt:
            log.warning("replica consistency check: %s", str(exc))
        if revision is not None:
            self._corrupt[(model, id)] = (revision, topic)


@dataclass(slots=True)
class _Tally:
    buckets: int = 0
    differing: int = 0
    repaired: int = 0
    keys: int = 0
    values: int = 0
    bytes: int = 0
    trips: int = 0

    def result(self) -> CheckReport:
        return CheckReport(
            True, self.buckets, self.differing, self.repaired, self.keys, self.values, self.bytes, self.trips
        )


def _describe(scope: Scope) -> str:
    """A scope for a log line: every topic, or the first topics and how many more."""
    if scope is None:
        return "every topic"
    names = sorted(t or "<none>" for t in scope)
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return "topics " + ", ".join(names[:5]) + more
