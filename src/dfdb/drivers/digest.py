"""Digests of a scope: per bucket of ids, a count and a hash over (id, revision).

A Replica compares the digest the driver computes (on the server where the backend
allows) with the same digest of its own store, and relists only the buckets that
differ. Both sides use the functions below, so that every driver's digest agrees with
the Replica's:

- the bucket of an id is the first 32 bits of ``sha1(id)`` modulo the bucket count;
- an entry's hash is the first 32 bits of ``sha1(id + "\\n" + str(revision))``;
- a bucket's hash is the sum of its entries' hashes modulo 2**32.

Each is what a Lua script on Redis computes with ``redis.sha1hex`` too. Drivers without
a digest of their own inherit :meth:`Driver.digest` and :meth:`Driver.digest_keys`, which
list the scope (values included) and compute it here.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

__all__ = ["MOD", "Digest", "KeyListing", "bucket_of", "buckets_for", "digest_of", "entry_hash", "keys_of"]

MOD = 2**32
"""Bucket hashes are sums modulo this."""


@dataclass(frozen=True, slots=True)
class Digest:
    """The digest of a scope (:meth:`Driver.digest`).

    Attributes:
        buckets: for each non-empty bucket, ``(count, hash)``.
        revision: the digest reflects every change of the scope up to this revision.
        records_read: keys (or entries) the client received to make it (``0`` when the
            server computed it).
        values_read: values among them (``0`` for a native digest).
        bytes_read: the size of what the client received.
        round_trips: requests it took.
    """

    buckets: dict[int, tuple[int, int]]
    revision: int
    records_read: int = 0
    values_read: int = 0
    bytes_read: int = 0
    round_trips: int = 1
    identity: str | None = None
    """The backend identity (dataset) it was computed on, when the driver read it with the
    digest: one the Replica's stream does not follow yet is a dataset it has not noticed."""


@dataclass(frozen=True, slots=True)
class KeyListing:
    """The keys of some buckets of a scope and their revisions (:meth:`Driver.digest_keys`).

    Attributes:
        revisions: id -> revision of every entry of the scope in the buckets asked for.
        revision: the listing reflects every change of the scope up to this revision.
        values_read, bytes_read, round_trips: its cost, as for :class:`Digest`.
    """

    revisions: dict[str, int]
    revision: int
    values_read: int = 0
    bytes_read: int = 0
    round_trips: int = 1
    topics: dict[str, str | None] = field(default_factory=dict)
    """The topic of each id, where the driver read it."""
    identity: str | None = None
    """The backend identity it was read from, as for :class:`Digest`."""


@functools.lru_cache(maxsize=1 << 18)
def _id_hash(id: str) -> int:
    return int.from_bytes(hashlib.sha1(id.encode()).digest()[:4], "big")


def bucket_of(id: str, buckets: int) -> int:
    """The bucket of ``id`` among ``buckets``."""
    return _id_hash(id) % buckets


def entry_hash(id: str, revision: int) -> int:
    """The hash of one entry: 32 bits of ``sha1(id + "\\n" + revision)``."""
    return int.from_bytes(hashlib.sha1(f"{id}\n{revision}".encode()).digest()[:4], "big")


def digest_of(pairs: Iterable[tuple[str, int]], buckets: int) -> dict[int, tuple[int, int]]:
    """The buckets of ``(id, revision)`` pairs: for each non-empty bucket, ``(count, hash)``."""
    out: dict[int, tuple[int, int]] = {}
    for id, revision in pairs:
        b = bucket_of(id, buckets)
        count, total = out.get(b, (0, 0))
        out[b] = (count + 1, (total + entry_hash(id, revision)) % MOD)
    return out


def keys_of(pairs: Iterable[tuple[str, int]], buckets: int, wanted: Collection[int]) -> dict[str, int]:
    """The pairs whose id falls in one of the ``wanted`` buckets, as id -> revision."""
    chosen = set(wanted)
    return {id: revision for id, revision in pairs if bucket_of(id, buckets) in chosen}


def buckets_for(count: int) -> int:
    """How many buckets a scope of ``count`` entries is cut into: about 64 entries a bucket,
    a power of two, at most 1,024."""
    n = 1
    while n < 1024 and n * 64 < count:
        n *= 2
    return n
