"""Models: tables, references, dependency order, validation, the network model set."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

import dfdb
from dfdb.models import (
    Chassis,
    LogicalPort,
    LogicalRouter,
    LogicalSwitch,
    PortBinding,
    QosPolicy,
    RouterPort,
    SecurityGroup,
    Subnet,
)
from dfdb.nbmodel import model_for_table, reference_targets, references


class Widget(dfdb.NbModel, table="test_widget"):
    size: int = 1


class Gadget(dfdb.NbModel, table="test_gadget"):
    widget: dfdb.Ref[Widget]
    parent: dfdb.Ref[Gadget] | None = None


def test_table_keyword_registers_the_model() -> None:
    assert Widget.__table__ == "test_widget"
    assert model_for_table("test_widget") is Widget


def test_two_models_cannot_share_a_table() -> None:
    with pytest.raises(dfdb.ModelDefinitionError, match="test_widget"):

        class Other(dfdb.NbModel, table="test_widget"):
            pass


def test_models_are_frozen_and_versioned() -> None:
    w = Widget(id="w")
    assert (w.id, w.topic, w.version) == ("w", None, 0)
    with pytest.raises(ValidationError):
        w.size = 2  # type: ignore[misc]


def test_unknown_stored_fields_are_ignored() -> None:
    w = Widget.model_validate_json('{"id": "w", "size": 3, "added_in_v2": [1, 2]}')
    assert w == Widget(id="w", size=3)


@pytest.mark.parametrize("bad", ["", "a/b", ".", "..", "x" * 256, "a\x00", "a\x7f", "tab\t"])
def test_ids_and_topics_are_validated(bad: str) -> None:
    with pytest.raises(ValueError):
        Widget(id=bad)
    with pytest.raises(ValueError):
        Widget(id="ok", topic=bad)


def test_long_and_unicode_ids_are_fine() -> None:
    assert Widget(id="x" * 255).id == "x" * 255
    assert Widget(id="réseau-✓", topic="租户").topic == "租户"


def test_refs_hold_the_id_and_know_their_target() -> None:
    w = Widget(id="w1")
    g = Gadget(id="g1", widget=w, parent="g0")
    assert g.widget == "w1" and g.widget.target is Widget
    assert g.parent is not None and g.parent.target is Gadget
    assert g.model_dump()["widget"] == "w1"
    assert '"widget":"w1"' in g.model_dump_json()
    again = Gadget.model_validate_json(g.model_dump_json())
    assert again == g and again.widget.target is Widget
    with pytest.raises(ValueError):
        Gadget(id="g2", widget="bad/id")
    with pytest.raises(ValueError):
        Gadget(id="g2", widget=42)


def test_dependency_order_puts_targets_first_and_allows_self_refs() -> None:
    assert references(Gadget) == {Widget, Gadget}
    order = dfdb.dependency_order([Gadget, Widget])
    assert order == [Widget, Gadget]
    tables = [m.__table__ for m in dfdb.registered_models()]
    assert tables.index("lswitch") < tables.index("lport") < tables.index("floatingip")
    assert tables.index("chassis") < tables.index("lport")
    assert tables.index("lswitch") < tables.index("lrouter")  # through RouterPort


def test_a_cycle_between_tables_is_refused() -> None:
    class Hen(dfdb.NbModel, table="test_hen"):
        egg: dfdb.Ref[Egg] | None = None

    with pytest.raises(dfdb.ModelDefinitionError, match="cycle"):

        class Egg(dfdb.NbModel, table="test_egg"):
            hen: dfdb.Ref[Hen] | None = None

    assert model_for_table("test_egg") is None


def test_chassis_is_global() -> None:
    Chassis(id="c", ip="192.0.2.1")
    with pytest.raises(ValueError, match="global"):
        Chassis(id="c", topic="t", ip="192.0.2.1")


def test_network_models_use_real_types() -> None:
    port = LogicalPort(
        id="p",
        topic="t",
        lswitch="s",
        ips=["10.0.0.1", "fe80::1"],
        macs=["FA:16:3E:AA:BB:CC"],
        binding={"chassis": "c1"},
        security_groups=["sg1"],
    )
    assert port.ips == (ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("fe80::1"))
    assert port.macs == ("fa:16:3e:aa:bb:cc",)
    assert port.binding is not None and port.binding.chassis == "c1"
    assert port.security_groups[0].target is SecurityGroup
    with pytest.raises(ValueError):
        LogicalPort(id="p", lswitch="s", macs=["not-a-mac"])
    with pytest.raises(ValueError):
        LogicalPort(id="p", lswitch="s", ips=["10.0.0.300"])
    with pytest.raises(ValueError):
        Subnet(id="s", cidr="10.0.0.1/24", lswitch="x")  # host bits set
    with pytest.raises(ValueError):
        LogicalSwitch(id="s", mtu=10)
    router = LogicalRouter(
        id="r", ports=[{"id": "rp", "lswitch": "s", "mac": "fa:16:3e:00:00:01", "network": "10.0.0.1/24"}]
    )
    assert router.ports[0].lswitch.target is LogicalSwitch
    rule_group = SecurityGroup(id="sg", rules=[{"id": "r", "remote_group": "sg2"}]).rules[0].remote_group
    assert rule_group is not None and rule_group.target is SecurityGroup


def test_network_models_round_trip_through_json() -> None:
    sub = Subnet(id="s", topic="t", cidr="10.1.0.0/16", gateway_ip="10.1.0.1", lswitch="ls")
    assert Subnet.model_validate_json(sub.model_dump_json()) == sub


def test_references_are_found_in_nested_models_and_lists() -> None:
    assert references(LogicalPort) == {LogicalSwitch, Chassis, SecurityGroup, QosPolicy}  # binding.chassis
    assert references(LogicalRouter) == {LogicalSwitch, LogicalPort}  # ports[].lswitch
    port = LogicalPort(
        id="p", lswitch="s", binding=PortBinding(chassis="c1"), security_groups=["sg1", "sg2"], qos_policy="q"
    )
    assert reference_targets(port) == [
        (LogicalSwitch, "s"),
        (Chassis, "c1"),
        (SecurityGroup, "sg1"),
        (SecurityGroup, "sg2"),
        (QosPolicy, "q"),
    ]
    ports = [RouterPort(id=f"rp{i}", lswitch=f"s{i}", mac="fa:16:3e:00:00:01", network="10.0.0.1/24") for i in (1, 2)]
    router = LogicalRouter(id="r", ports=ports, gateway="p")
    assert reference_targets(router) == [(LogicalSwitch, "s1"), (LogicalSwitch, "s2"), (LogicalPort, "p")]
    assert reference_targets(LogicalPort(id="p", lswitch="s", binding=PortBinding(type="vtep"))) == [
        (LogicalSwitch, "s")
    ]
    rules = SecurityGroup(id="sg", rules=[{"id": "r1", "remote_group": "sg2"}, {"id": "r2"}])
    assert reference_targets(rules) == [(SecurityGroup, "sg2")]
