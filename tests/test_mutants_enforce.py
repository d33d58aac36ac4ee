"""Mutants of regionguard/mitm/enforce.py that no in-process test noticed (tools/mutation.py), caught
here: the Enforcer's fail-closed paths, driven in-process with a policy whose names resolve from
its own `resolver.hosts` (and, for everything else, a loopback nameserver that does not answer).

Each test names the path it holds shut: an IPv4-mapped address is decided as the IPv4 address it
carries, no destination blocks, a Zoom name that does not resolve blocks, a remote client never
reaches the proxy host, a reroute that finds no allowed address blocks.
"""

from __future__ import annotations

import asyncio

import pytest

from regionguard.core.decision import Action, Engine
from regionguard.core.policy import load_policy
from regionguard.mitm.enforce import Enforcer, is_remote_client, plain_address, reaches_proxy_host
from tests.ports import free_port

US, DE = "203.0.113.5", "198.51.100.5"
LOCAL, REMOTE = "127.0.0.1", "192.0.2.77"


def policy_text(disallowed: str = "block", nameserver_port: int = 9) -> str:
    return f"""\
version: 1
name: enforce-mutants
account: {{type: paid, default_region: DE}}
regions: {{opt_in: [DE]}}
actions: {{disallowed: {disallowed}, unknown: block}}
overrides:
  - {{match: 198.51.100.0/24, region: DE, zoom: true}}
  - {{match: 203.0.113.0/24, region: US, zoom: true}}
resolver:
  nameservers: ["127.0.0.1:{nameserver_port}"]
  timeout: 0.5
  hosts:
    us.zoom.us: {US}
    mixed.zoom.us: [{US}, {DE}]
    de.zoom.us: {DE}
    onlyus.zoom.us: {US}
    plain.example.net: 192.0.2.10
reroute:
  - {{match: "us.zoom.us", to: de.zoom.us}}
  - {{match: "onlyus.zoom.us", to: nowhere.zoom.us}}
"""


@pytest.fixture(scope="module")
def make(tmp_path_factory):
    port = free_port()   # nothing listens there: a name outside `hosts` fails to resolve

    def enforcer(disallowed: str = "block") -> Enforcer:
        path = tmp_path_factory.mktemp("enforce") / f"{disallowed}.yaml"
        path.write_text(policy_text(disallowed, port))
        return Enforcer(Engine(load_policy(path)))

    return enforcer


def verdict(enforcer: Enforcer, client, host, address, port=443, transport="tcp"):
    return asyncio.run(enforcer.verdict(client, host, address, port, transport))


def test_an_ipv4_mapped_address_is_decided_as_its_ipv4_address(make):
    v = verdict(make(), "::ffff:127.0.0.1", None, f"::ffff:{US}")
    assert v.blocked and v.address is None
    assert (v.decision.action, v.decision.region, v.decision.address, v.decision.client) == \
        (Action.BLOCK, "US", US, LOCAL)
    allowed = verdict(make(), LOCAL, None, f"::ffff:{DE}")
    assert allowed.address == DE and allowed.decision.action is Action.ALLOW
    assert plain_address(f"::ffff:{US}") == US and plain_address("fe80::1%eth0") == "fe80::1"
    assert plain_address("2001:db8::1") == "2001:db8::1" and plain_address("not-an-ip:1") == "not-an-ip:1"


def test_no_destination_blocks(make):
    v = verdict(make(), LOCAL, None, None, 8801, "udp")
    assert v.blocked
    assert (v.decision.action, v.decision.rule, v.decision.port, v.decision.transport, v.decision.client) == \
        (Action.BLOCK, "no-destination", 8801, "udp", LOCAL)


def test_a_zoom_name_that_does_not_resolve_blocks_and_another_name_passes(make):
    v = verdict(make(), LOCAL, "gone.zoom.us", None, 443)
    assert v.blocked
    d = v.decision
    assert (d.action, d.rule, d.zoom, d.host, d.port, d.client) == \
        (Action.BLOCK, "resolve-failed", True, "gone.zoom.us", 443, LOCAL)
    assert d.reason.startswith("cannot resolve gone.zoom.us: ") and d.reason.endswith("a Zoom name fails closed")
    other = verdict(make(), LOCAL, "gone.example.net", None, 443)
    assert (other.decision.action, other.decision.rule, other.decision.zoom) == (Action.PASS, "not-zoom", False)
    assert "fails closed" not in other.decision.reason


def test_a_name_is_pinned_to_its_first_allowed_address_and_blocked_when_it_has_none(make):
    enforcer = make()
    mixed = verdict(enforcer, LOCAL, "mixed.zoom.us", None)
    assert mixed.address == DE and mixed.decision.address == DE and mixed.decision.action is Action.ALLOW
    us = verdict(enforcer, LOCAL, "us.zoom.us", None)
    assert us.blocked and us.decision.action is Action.BLOCK and us.decision.address == US
    literal = verdict(enforcer, LOCAL, US, None)      # an address given where a name goes
    assert literal.blocked and literal.decision.address == US and literal.decision.host is None


def test_a_remote_client_never_reaches_the_proxy_host(make):
    enforcer = make()
    for target in ("127.0.0.1", "::ffff:127.0.0.1", "169.254.1.1", "0.0.0.0", "::1"):
        v = verdict(enforcer, REMOTE, None, target, 22)
        assert v.blocked and v.decision.rule == "proxy-host" and v.decision.action is Action.BLOCK, target
        assert verdict(enforcer, LOCAL, None, target, 22).address == plain_address(target), target
    assert reaches_proxy_host("::ffff:127.0.0.1") and not reaches_proxy_host(US) and not reaches_proxy_host(None)
    assert not reaches_proxy_host("not-an-address")
    assert is_remote_client(None) and is_remote_client("garbage") and is_remote_client(REMOTE)
    assert not is_remote_client("::ffff:127.0.0.1") and not is_remote_client(LOCAL)


def test_reroute_takes_an_allowed_address_else_blocks(make):
    enforcer = make("reroute")
    # the name's own allowed address first ...
    same = verdict(enforcer, LOCAL, "mixed.zoom.us", US)
    assert same.address == DE and same.rerouted_to == f"mixed.zoom.us {DE}"
    assert same.decision.action is Action.REROUTE and same.decision.address == US
    # ... else the policy's alternative
    alt = verdict(enforcer, LOCAL, "us.zoom.us", None)
    assert alt.address == DE and alt.rerouted_to == f"de.zoom.us {DE}" and alt.decision.action is Action.REROUTE
    # an address alone has no name to reroute by: blocked
    bare = verdict(enforcer, LOCAL, None, US)
    assert bare.blocked and bare.decision.action is Action.BLOCK
    assert bare.decision.reason.endswith("reroute found no address in an allowed region")


def test_reroute_to_a_name_that_does_not_resolve_blocks(make):
    # onlyus.zoom.us has only a US address, and its alternative does not resolve
    v = verdict(make("reroute"), LOCAL, "onlyus.zoom.us", None)
    assert v.blocked and v.rerouted_to is None
    assert (v.decision.action, v.decision.address, v.decision.region) == (Action.BLOCK, US, "US")
    assert v.decision.reason.endswith("reroute found no address in an allowed region")


# --- a name the client sends (SNI, Host) is only a claim ---------------------------------------------

UNPLACED = "170.114.52.2"        # in Zoom's ranges; no trusted source places it (zoom.us lives here)
US_MEETING = "206.247.11.121"    # labelled US by Zoom


@pytest.fixture(scope="module")
def claims(tmp_path_factory) -> Enforcer:
    """Default clients may use the US; the office at 10.0.0.9 only Europe. zoom.us resolves
    elsewhere; cannot-resolve.zoom.us does not resolve at all (a nameserver that never answers)."""
    path = tmp_path_factory.mktemp("claims") / "policy.yaml"
    path.write_text(f"""\
version: 1
account: {{type: paid, default_region: DE}}
regions: {{opt_in: [Europe, US]}}
actions: {{disallowed: block, unknown: block}}
groups:
  - {{name: eu-office, clients: [10.0.0.9/32], regions: {{opt_in: [Europe]}}}}
resolver:
  nameservers: ["127.0.0.1:{free_port()}"]
  timeout: 0.5
  hosts: {{"zoom.us": "{UNPLACED}"}}
""")
    return Enforcer(Engine(load_policy(path)))


@pytest.mark.parametrize("claimed", ["zoom.us", "log.zoom.us"])
def test_a_claimed_web_name_that_does_not_reach_the_address_is_decided_for_the_client(claims, claimed):
    # log.zoom.us does not resolve at all: an unconfirmed claim, like zoom.us's other address
    assert claims.engine.decide("10.0.0.9", claimed, US_MEETING, 443, "tcp").scope == "other"
    v = verdict(claims, "10.0.0.9", claimed, US_MEETING, 443, "tcp")
    d = v.decision
    assert v.blocked, d
    assert (d.action, d.rule, d.scope, d.region, d.group, d.host, d.port, d.transport) == (
        Action.BLOCK, "region-disallowed", "governed", "US", "eu-office", claimed, 443, "tcp")
    assert d.reason.endswith(f"the name {claimed} is the client's claim, and regionguard's own "
                             f"resolution of it does not reach {US_MEETING}, so it does not decide the service")
    # a default client may use the US: the same claim is allowed for it, still as governed
    ok = verdict(claims, "10.0.0.5", claimed, US_MEETING, 443, "tcp")
    assert ok.address == US_MEETING and (ok.decision.action, ok.decision.scope) == (Action.ALLOW, "governed")
