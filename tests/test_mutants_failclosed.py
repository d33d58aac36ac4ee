"""Mutants of the fail-closed core that no other test noticed (tools/mutation.py), each caught here.

Engine.choose picks the address a front end connects to. It must decide every candidate for the
client that asked (its group may allow fewer regions than the default), on the port and transport
really used: deciding for another client, or on another transport, can hand a client an address
its own policy blocks.
"""

from __future__ import annotations

import pytest

from regionguard.core.decision import Action, Engine
from regionguard.core.policy import load_policy
from tests.conftest import CONFIG

US, DE = "203.0.113.5", "198.51.100.5"
EU_OFFICE, ELSEWHERE = "127.0.0.7", "127.0.0.1"


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    path = tmp_path_factory.mktemp("mutants") / "policy.yaml"
    path.write_text("""\
version: 1
name: choose-test
account: {type: paid, default_region: DE}
regions: {opt_in: [DE, US]}
actions: {disallowed: block, unknown: block}
overrides:
  - {match: 198.51.100.0/24, region: DE, zoom: true}
  - {match: 203.0.113.0/24, region: US, zoom: true}
groups:
  - {name: eu-office, clients: [127.0.0.7/32], regions: {opt_in: [DE]}}
""")
    return Engine(load_policy(path))


def test_choose_decides_for_the_client_that_asked(engine):
    # the default group may use the US address; the EU office may not, and gets none of it
    assert engine.choose(ELSEWHERE, "m.zoom.us", [US], 443)[0] == US
    chosen, decisions = engine.choose(EU_OFFICE, "m.zoom.us", [US], 443)
    assert chosen is None
    assert [(d.action, d.group, d.client) for d in decisions] == [(Action.BLOCK, "eu-office", EU_OFFICE)]
    chosen, decisions = engine.choose(EU_OFFICE, "m.zoom.us", [US, DE], 443)
    assert chosen == DE
    assert [(d.address, d.action) for d in decisions] == [(US, Action.BLOCK), (DE, Action.ALLOW)]


def test_choose_decides_on_the_port_and_transport_used(engine):
    _, by_default = engine.choose(EU_OFFICE, "m.zoom.us", [US, DE], 443)
    assert {(d.port, d.transport) for d in by_default} == {(443, "tcp")}
    chosen, meeting = engine.choose(EU_OFFICE, "m.zoom.us", [US], 8801, "udp")
    assert chosen is None
    assert [(d.port, d.transport, d.service, d.action) for d in meeting] == \
        [(8801, "udp", "meeting", Action.BLOCK)]


class _BrokenLocator:
    def locate(self, *args):
        raise RuntimeError("database vanished")


@pytest.mark.parametrize("host, address", [
    ("zoom.us", "192.0.2.1"),          # a Zoom name at an address outside Zoom's ranges
    (None, "159.124.47.249"),          # a Zoom address with no name
    ("zoom.us", None),                 # a Zoom name not yet resolved
])
def test_an_internal_error_blocks_when_either_the_name_or_the_address_is_zooms(host, address):
    eu = Engine(load_policy(CONFIG / "examples" / "eu-only.yaml"))
    engine = Engine(eu.policy, locator=_BrokenLocator(), zoom=eu.zoom)
    d = engine.decide_safely("10.0.0.5", host, address, 8801, "udp")
    assert (d.action, d.rule, d.zoom, d.host, d.address, d.port, d.transport, d.client) == (
        Action.BLOCK, "internal-error", True, host, address, 8801, "udp", "10.0.0.5")
    assert d.reason == "decision failed (RuntimeError('database vanished')): fail closed"
    other = engine.decide_safely("10.0.0.5", "example.org", "192.0.2.1", 443)
    assert (other.action, other.rule, other.zoom, other.transport) == (Action.PASS, "not-zoom", False, "tcp")
