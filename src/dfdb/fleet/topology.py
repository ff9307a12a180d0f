"""The fleet's topology: tenants whose ports sit on a few chassis each, so that every
controller (one per chassis) holds a small share of the database."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property

from dfdb.demo import MODELS  # the models every controller holds (Chassis is the one global table)
from dfdb.models import (
    Chassis,
    FloatingIp,
    LogicalPort,
    LogicalRouter,
    LogicalSwitch,
    PortBinding,
    QosPolicy,
    SecurityGroup,
    Subnet,
)
from dfdb.nbmodel import NbModel

__all__ = ["MODELS", "Topology"]


@dataclass(frozen=True)
class Topology:
    """``tenants`` tenants of ``ports`` ports each (over two switches, with a subnet each,
    a QoS policy, a security group, a router and a floating IP), laid round ``chassis``
    chassis: tenant ``t``'s ports sit on the ``spread`` chassis from ``t * spread``."""

    chassis: int
    tenants: int
    ports: int
    spread: int

    def homes(self, tenant: int) -> list[int]:
        """The chassis (indexes) tenant ``tenant``'s ports sit on."""
        spread = min(self.spread, self.chassis)
        return sorted({(tenant * spread + k) % self.chassis for k in range(spread)})

    def tenants_of(self, chassis: int) -> list[int]:
        """The tenants with a port on chassis ``chassis``."""
        return self._tenants_by_chassis.get(chassis, [])

    @cached_property
    def _tenants_by_chassis(self) -> dict[int, list[int]]:
        """Each chassis's tenants, worked out once: asked of every tenant for each chassis,
        it would cost a fleet of N controllers N * N steps."""
        by: dict[int, list[int]] = {}
        for t in range(self.tenants):
            for c in self.homes(t):
                by.setdefault(c, []).append(t)
        return by

    def port_chassis(self, tenant: int, port: int) -> int:
        """The chassis port ``port`` of tenant ``tenant`` is bound to."""
        homes = self.homes(tenant)
        return homes[port % len(homes)]

    @property
    def objects(self) -> int:
        """How many objects the database holds."""
        return self.chassis + self.tenants * (8 + self.ports)

    def chassis_objects(self) -> list[Chassis]:
        """Every chassis."""
        return [Chassis(id=chassis_id(c), ip=ipaddress.ip_address(0x0A000000 + c + 1)) for c in range(self.chassis)]

    def port(self, tenant: int, port: int, name: str = "") -> LogicalPort:
        """Port ``port`` of tenant ``tenant`` as first created."""
        switch = port % 2
        return LogicalPort(
            id=f"lp-{tenant}-{port}",
            topic=topic(tenant),
            name=name,
            lswitch=f"ls-{tenant}-{switch}",
            ips=(ipaddress.ip_address(0x0B000000 + tenant * 1024 + port),),
            binding=PortBinding(chassis=chassis_id(self.port_chassis(tenant, port))),
            security_groups=(f"sg-{tenant}",),
        )

    def tenant_objects(self, tenant: int) -> list[NbModel]:
        """Every object of tenant ``tenant``, in dependency order."""
        t = topic(tenant)
        objs: list[NbModel] = [
            QosPolicy(id=f"qos-{tenant}", topic=t, max_kbps=10_000),
            SecurityGroup(id=f"sg-{tenant}", topic=t, name="default"),
        ]
        for s in range(2):
            net = ipaddress.ip_network(((0x0C000000 + (tenant * 2 + s) * 256) & 0xFFFFFFFF, 24))
            objs.append(LogicalSwitch(id=f"ls-{tenant}-{s}", topic=t, qos_policy=f"qos-{tenant}"))
            objs.append(Subnet(id=f"sn-{tenant}-{s}", topic=t, cidr=net, gateway_ip=net[1], lswitch=f"ls-{tenant}-{s}"))
        objs += [self.port(tenant, p) for p in range(self.ports)]
        objs.append(LogicalRouter(id=f"lr-{tenant}", topic=t))
        objs.append(
            FloatingIp(
                id=f"fip-{tenant}",
                topic=t,
                floating_ip_address=ipaddress.ip_address(0x0D000000 + tenant),
                lport=f"lp-{tenant}-0" if self.ports else None,
                lrouter=f"lr-{tenant}",
            )
        )
        return objs


def topic(tenant: int) -> str:
    """Tenant ``tenant``'s topic."""
    return f"tenant-{tenant}"


def chassis_id(index: int) -> str:
    """Chassis ``index``'s id."""
    return f"chassis-{index}"
