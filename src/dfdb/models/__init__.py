"""The Dragonflow network model set.

Tables, in dependency order: ``chassis``, ``qos_policy``, ``secgroup``, ``lswitch``,
``subnet``, ``lport``, ``lrouter``, ``floatingip``. Addresses use the standard
library's :mod:`ipaddress` types; MAC addresses are validated and normalised to
lower-case colon form.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from dfdb.nbmodel import NbModel, Ref

__all__ = [
    "Chassis",
    "Direction",
    "EtherType",
    "FloatingIp",
    "LogicalPort",
    "LogicalRouter",
    "LogicalSwitch",
    "MacAddress",
    "NetworkType",
    "PortBinding",
    "QosPolicy",
    "RouterPort",
    "SecurityGroup",
    "SecurityGroupRule",
    "Subnet",
]

_MAC = re.compile(r"^[0-9a-f]{2}([:-]?)[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")


_CANONICAL_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")


def _normalize_mac(value: str) -> str:
    if _CANONICAL_MAC.fullmatch(value):  # as stored: already normalised
        return value
    text = value.strip().lower()
    if not _MAC.match(text):
        raise ValueError(f"not a MAC address: {value!r}")
    digits = text.replace(":", "").replace("-", "")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


MacAddress = Annotated[str, AfterValidator(_normalize_mac)]
"""A MAC address, normalised to ``aa:bb:cc:dd:ee:ff``."""

# left to right: an IPv4 text is not also tried as IPv6 (a third of a stored port's validation)
IpAddress = Annotated[ipaddress.IPv4Address | ipaddress.IPv6Address, Field(union_mode="left_to_right")]
IpNetwork = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, Field(union_mode="left_to_right")]


class _Part(BaseModel):
    """A nested value inside a stored object."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class NetworkType(StrEnum):
    """How a logical switch is carried between hosts."""

    LOCAL = "local"
    FLAT = "flat"
    VLAN = "vlan"
    VXLAN = "vxlan"
    GENEVE = "geneve"
    GRE = "gre"


class Chassis(NbModel, table="chassis"):
    """A compute host running a local controller. Global: never has a topic."""

    ip: IpAddress
    tunnel_types: tuple[NetworkType, ...] = (NetworkType.GENEVE,)
    external_host_ip: IpAddress | None = None

    @model_validator(mode="after")
    def _no_topic(self) -> Chassis:
        if self.topic is not None:
            raise ValueError("a Chassis is global and has no topic")
        return self


class QosPolicy(NbModel, table="qos_policy"):
    """Bandwidth limits and DSCP marking applied to ports or switches."""

    name: str = ""
    max_kbps: int | None = Field(default=None, ge=0)
    max_burst_kbps: int | None = Field(default=None, ge=0)
    dscp_mark: int | None = Field(default=None, ge=0, le=63)


class EtherType(StrEnum):
    """The L3 protocol family a security-group rule applies to."""

    IPV4 = "IPv4"
    IPV6 = "IPv6"


class Direction(StrEnum):
    """Traffic direction of a security-group rule."""

    INGRESS = "ingress"
    EGRESS = "egress"


class SecurityGroupRule(_Part):
    """One rule of a security group; may name a remote group instead of a prefix."""

    id: str
    direction: Direction = Direction.INGRESS
    ethertype: EtherType = EtherType.IPV4
    protocol: str | None = None
    port_range_min: int | None = Field(default=None, ge=0, le=65535)
    port_range_max: int | None = Field(default=None, ge=0, le=65535)
    remote_ip_prefix: IpNetwork | None = None
    remote_group: Ref[SecurityGroup] | None = None


class SecurityGroup(NbModel, table="secgroup"):
    """A set of rules filtering a port's traffic."""

    name: str = ""
    rules: tuple[SecurityGroupRule, ...] = ()


class LogicalSwitch(NbModel, table="lswitch"):
    """A layer-2 network."""

    name: str = ""
    mtu: int = Field(default=1450, ge=68, le=65535)
    network_type: NetworkType = NetworkType.GENEVE
    segmentation_id: int | None = Field(default=None, ge=0)
    physical_network: str | None = None
    is_external: bool = False
    qos_policy: Ref[QosPolicy] | None = None


class Subnet(NbModel, table="subnet", indexes=("lswitch",)):
    """An IP range on a logical switch."""

    name: str = ""
    cidr: IpNetwork
    gateway_ip: IpAddress | None = None
    enable_dhcp: bool = True
    dns_nameservers: tuple[IpAddress, ...] = ()
    lswitch: Ref[LogicalSwitch]


class PortBinding(_Part):
    """Where a port lives: on a chassis (local or remote) or behind a VTEP."""

    type: Literal["chassis", "vtep"] = "chassis"
    chassis: Ref[Chassis] | None = None
    vtep_address: IpAddress | None = None


class LogicalPort(NbModel, table="lport", indexes=("lswitch", "binding.chassis", "ips", "macs", "security_groups")):
    """A port on a logical switch: a VM interface, a router interface, a DHCP port…"""

    name: str = ""
    lswitch: Ref[LogicalSwitch]
    ips: tuple[IpAddress, ...] = ()
    macs: tuple[MacAddress, ...] = ()
    enabled: bool = True
    binding: PortBinding | None = None
    security_groups: tuple[Ref[SecurityGroup], ...] = ()
    port_security_enabled: bool = True
    device_owner: str = ""
    device_id: str = ""
    qos_policy: Ref[QosPolicy] | None = None


class RouterPort(_Part):
    """A router's interface on one logical switch."""

    id: str
    lswitch: Ref[LogicalSwitch]
    mac: MacAddress
    network: ipaddress.IPv4Interface | ipaddress.IPv6Interface


class LogicalRouter(NbModel, table="lrouter"):
    """A distributed router joining logical switches."""

    name: str = ""
    ports: tuple[RouterPort, ...] = ()
    routes: tuple[tuple[IpNetwork, IpAddress], ...] = ()
    gateway: Ref[LogicalPort] | None = None


class FloatingIp(NbModel, table="floatingip", indexes=("lport", "floating_ip_address")):
    """A public address translated to a port's private one."""

    floating_ip_address: IpAddress
    floating_lport: Ref[LogicalPort] | None = None
    lport: Ref[LogicalPort] | None = None
    fixed_ip_address: IpAddress | None = None
    lrouter: Ref[LogicalRouter] | None = None
