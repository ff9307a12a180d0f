"""The Dragonflow network models: a tenant network with typed references.

Run: python examples/network_topology.py [URL]   (default: memory://)
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys

import dfdb
from dfdb.models import Chassis, LogicalPort, LogicalSwitch, PortBinding, SecurityGroup, SecurityGroupRule, Subnet


async def main(url: str) -> None:
    async with dfdb.connect(url) as nb:
        await nb.create(Chassis(id="compute-1", ip=ipaddress.ip_address("192.0.2.10")))
        sg = await nb.create(
            SecurityGroup(
                id="web",
                topic="tenant-1",
                rules=(SecurityGroupRule(id="r1", protocol="tcp", port_range_min=443, port_range_max=443),),
            )
        )
        switch = await nb.create(LogicalSwitch(id="net-1", topic="tenant-1", name="private", mtu=1450))
        await nb.create(Subnet(id="sub-1", topic="tenant-1", cidr="10.0.0.0/24", gateway_ip="10.0.0.1", lswitch=switch))
        port = await nb.create(
            LogicalPort(
                id="vm-1-eth0",
                topic="tenant-1",
                lswitch=switch,
                ips=("10.0.0.5",),
                macs=("FA-16-3E-00-00-05",),
                binding=PortBinding(chassis="compute-1"),
                security_groups=(sg,),
            )
        )
        print("port MAC, normalised:", port.macs[0])
        assert port.binding is not None and port.binding.chassis is not None
        chassis = await nb.get(port.binding.chassis.target or Chassis, port.binding.chassis)
        print("port is bound to", chassis.id, "at", chassis.ip)
        print("models in dependency order:", [m.__table__ for m in dfdb.registered_models()])


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "memory://"))
