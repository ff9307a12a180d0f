"""The lease part of the driver contract (``Capability.LEASES``): leases, objects bound to
them, fenced locks and guarded writes. :class:`~dfdb.drivers.base.Driver` inherits these
methods; a driver without the capability keeps them, and each raises a ``DfdbError`` that
says so. See :mod:`dfdb.leases` for what they serve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio

from dfdb.errors import DfdbError, LeaseLostError

if TYPE_CHECKING:
    from dfdb.drivers.base import Entry, Expect
    from dfdb.url import DatabaseURL

__all__ = ["Guard", "LeaseMethods"]


@dataclass(frozen=True, slots=True)
class Guard:
    """The condition of a guarded write, checked by the backend in the write's atomic step:
    the lease ``lease`` is alive (granted, not revoked, its deadline not passed) and, when
    ``lock`` is given, the lock of that name is held by ``lease`` with fencing ``token``.

    ``held_until``, when given, tells the holder's own deadline on the event loop's clock
    (``anyio.current_time()``): a driver whose atomic step cannot compare the lease's
    deadline itself calls :meth:`check_held` right before it sends the write."""

    lease: str
    lock: str | None = None
    token: int = 0
    held_until: Callable[[], float] | None = field(default=None, compare=False, repr=False)

    def check_held(self) -> None:
        """Raises:
        LeaseLostError: the holder's own deadline passed (nothing may be sent any more)."""
        if self.held_until is not None and anyio.current_time() > self.held_until():
            raise LeaseLostError(f"lease {self.lease} ended: its holder's deadline passed before the write was sent")


class LeaseMethods:
    """The lease methods of a driver; see the module documentation."""

    if TYPE_CHECKING:
        url: DatabaseURL

    def _no_leases(self) -> DfdbError:
        return DfdbError(f"the {self.url.scheme}:// driver has no leases, locks or guarded writes")

    async def lease_grant(self, ttl: float) -> str:
        """Grant a lease that ends ``ttl`` seconds from now unless kept alive; returns its id.

        Raises:
            DfdbError: the driver has no ``LEASES`` capability.
        """
        raise self._no_leases()

    async def lease_keepalive(self, lease: str) -> None:
        """Move the lease's deadline to ``ttl`` seconds from now; ``LeaseLostError`` when the
        lease ended (expired, revoked, reaped): it never comes back."""
        raise self._no_leases()

    async def lease_revoke(self, lease: str) -> None:
        """End the lease now: its objects are deleted (``expired`` delete events) and its
        locks released. A lease that already ended is left alone."""
        raise self._no_leases()

    async def put_bound(
        self,
        table: str,
        id: str,
        topic: str | None,
        value: bytes,
        expect: Expect,
        lease: str | None,
        guard: Guard | None,
    ) -> int:
        """``put``, binding the object to ``lease`` when given (a later write without it
        unbinds it) and committing only while ``guard`` holds, both in the write's atomic step.

        Raises:
            LeaseLostError: ``lease`` or the guard's lease ended, or the guard's lock has
                another holder or token; nothing was written.
            …: what ``put`` raises.
        """
        raise self._no_leases()

    async def delete_guarded(self, table: str, id: str, guard: Guard) -> Entry:
        """``delete`` committing only while ``guard`` holds (checked in the same atomic step).

        Raises:
            LeaseLostError: the guard no longer holds; nothing was deleted.
            NotFoundError: the key is absent.
        """
        raise self._no_leases()

    async def lock_acquire(self, name: str, lease: str) -> int | None:
        """Take the lock ``name`` for ``lease`` when it is free (never taken, released, or its
        holder's lease ended); returns its fencing token, larger than every earlier holder's,
        or ``None`` while another live lease holds it. ``LeaseLostError``: ``lease`` ended."""
        raise self._no_leases()

    async def lock_release(self, name: str, lease: str, token: int) -> None:
        """Release the lock ``name`` if ``lease`` still holds it with ``token``."""
        raise self._no_leases()

    async def reap(self) -> int:
        """Delete the objects of leases whose deadline passed (ordinary logged deletes, marked
        ``expired``, in revision order) and release their locks; idempotent, safe from any
        number of clients at once. Returns how many leases this call ended."""
        raise self._no_leases()
