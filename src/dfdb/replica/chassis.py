"""Dragonflow's selective topology: :class:`ChassisTopics` subscribes a SELECTIVE Replica to
the tenants that have ports on this controller's chassis."""

from __future__ import annotations

from collections.abc import Callable

from dfdb.events import Action
from dfdb.nbmodel import NbModel
from dfdb.replica.core import Replica
from dfdb.replica.events import ReplicaEvent
from dfdb.replica.modes import SyncMode

__all__ = ["ChassisTopics"]


class ChassisTopics:
    """Dragonflow's selective topology for one controller: a SELECTIVE Replica follows a
    tenant's topic while this chassis has a port bound in it.

    Tell it about local ports as the controller learns of them (``port_bound``; in
    Dragonflow, from the local switch); it also follows the Replica's own changes, so a
    port deleted or bound elsewhere stops counting. The first local port of a tenant
    subscribes its topic, a second one does not subscribe again, and the topic is removed
    when the last one goes.

    Args:
        replica: a SELECTIVE :class:`Replica`.
        chassis: this controller's chassis id.
        chassis_of: the chassis a port is bound to (default: ``port.binding.chassis``).
    """

    def __init__(
        self,
        replica: Replica,
        chassis: str,
        chassis_of: Callable[[NbModel], str | None] | None = None,
    ) -> None:
        if replica.mode is not SyncMode.SELECTIVE:
            raise ValueError("ChassisTopics needs a SELECTIVE Replica")
        self.replica = replica
        self.chassis = chassis
        self._chassis_of = chassis_of or _binding_chassis
        self._ports: dict[str, dict[str, type[NbModel]]] = {}  # topic -> port id -> its model
        self.subscriptions = 0
        """How many times a topic was subscribed."""

    def local_ports(self, topic: str) -> frozenset[str]:
        """The ids of this chassis's ports known in ``topic``."""
        return frozenset(self._ports.get(topic, ()))

    async def port_bound(self, port: NbModel) -> None:
        """``port`` is bound to this chassis: follow its topic (once per topic)."""
        if port.topic is None or self._chassis_of(port) != self.chassis:
            return
        ports = self._ports.setdefault(port.topic, {})
        first = not ports
        ports[port.id] = type(port)
        if first:
            self.subscriptions += 1
            await self.replica.add_topic(port.topic)

    async def port_unbound(self, topic: str, port_id: str) -> None:
        """The port is gone from this chassis: drop its topic when it was the last one."""
        ports = self._ports.get(topic)
        if ports is None or port_id not in ports:
            return
        del ports[port_id]
        if not ports:
            del self._ports[topic]
            await self.replica.remove_topic(topic)

    async def observe(self, event: ReplicaEvent) -> None:
        """Account for a change of the Replica (pass every ``replica.events()`` item)."""
        if event.action == Action.RESYNC:
            for topic in list(self._ports):
                for port_id, model in list(self._ports.get(topic, {}).items()):
                    held = self.replica.get(model, port_id)
                    if held is None or self._chassis_of(held) != self.chassis:
                        await self.port_unbound(topic, port_id)
            return
        obj = event.new if event.new is not None else event.old
        if obj is None or obj.topic is None:
            return
        if event.new is not None and self._chassis_of(event.new) == self.chassis:
            await self.port_bound(event.new)
        elif obj.id in self._ports.get(obj.topic, ()):
            await self.port_unbound(obj.topic, obj.id)


def _binding_chassis(port: NbModel) -> str | None:
    binding = getattr(port, "binding", None)
    chassis = getattr(binding, "chassis", None)
    return str(chassis) if chassis is not None else None
