"""regionguard.mitm.enforce at its edges, in process: the real Engine and NameResolver on a policy
whose names come from its `resolver.hosts` (the nameserver is a dead loopback port, so any other
name fails to resolve). The end-to-end proxy behaviour is in test_proxy.py; this file reaches the
branches those tests cannot aim at one by one: IPv4-mapped addresses, a connection with no
destination, and each reroute fallback."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

from regionguard.core.decision import Action, Engine
from regionguard.core.policy import load_policy
from regionguard.mitm.enforce import Enforcer, plain_address, reaches_proxy_host
from tests.conftest import free_port

DE, IN = "127.0.1.1", "127.0.2.1"

POLICY = """
version: 1
account: {type: paid, default_region: US}
regions: {opt_in: [US, DE]}
actions: {disallowed: %(disallowed)s, unknown: block}
overrides:
  - {match: 127.0.1.0/24, region: DE, zoom: true}
  - {match: 127.0.2.0/24, region: IN, zoom: true}
resolver:
  nameservers: ["127.0.0.1:%(dead_port)d"]
  timeout: 1
  hosts:
    de.zoom.us: 127.0.1.1
    in.zoom.us: 127.0.2.1
    in2.zoom.us: 127.0.2.2
    mixed.zoom.us: [127.0.2.1, 127.0.1.1]
%(extra)s
"""


def enforcer(tmp_path, disallowed: str = "block", extra: str = "") -> Enforcer:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY) % {"disallowed": disallowed, "extra": extra,
                                               "dead_port": free_port()})
    return Enforcer(Engine(load_policy(path)))


def verdict(e: Enforcer, host, address, client="127.0.0.1", port=443):
    return asyncio.run(e.verdict(client, host, address, port, "tcp"))


# --- IPv4-mapped addresses: dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d ------------


@pytest.mark.parametrize(("given", "plain"), [
    ("::ffff:127.0.2.1", "127.0.2.1"), ("::FFFF:7f00:0201", "127.0.2.1"),
    ("fe80::1%eth0", "fe80::1"), ("::1", "::1"), ("127.0.0.1", "127.0.0.1"),
    ("de.zoom.us", "de.zoom.us"), (None, None), ("", ""), ("not:an:address", "not:an:address")])
def test_plain_address_unwraps_ipv4_mapped_and_leaves_the_rest(given, plain):
    assert plain_address(given) == plain


def test_a_mapped_address_is_decided_and_pinned_as_its_ipv4_address(tmp_path):
    e = enforcer(tmp_path)
    allowed = verdict(e, None, "::ffff:127.0.1.1", client="::ffff:127.0.0.1")
    assert allowed.address == DE                     # pinned to the plain IPv4 address
    d = allowed.decision
    assert (d.action, d.region, d.address, d.client) == (Action.ALLOW, "DE", DE, "127.0.0.1")
    blocked = verdict(e, None, "::ffff:127.0.2.1")
    assert blocked.blocked
    assert (blocked.decision.action, blocked.decision.region, blocked.decision.address) == \
        (Action.BLOCK, "IN", IN)
    # A mapped address given as the host (an IPv6 CONNECT target) is an address, not a name.
    by_host = verdict(e, "::ffff:127.0.2.1", None)
    assert (by_host.decision.address, by_host.decision.host, by_host.address) == (IN, None, None)


def test_a_mapped_loopback_address_is_the_proxy_host_for_a_remote_client(tmp_path):
    assert reaches_proxy_host("::ffff:127.0.0.1") and reaches_proxy_host("::ffff:169.254.1.1")
    assert not reaches_proxy_host("::ffff:192.0.2.1")
    e = enforcer(tmp_path, extra="  # no gateway section: allow_proxy_host is off\n")
    # DE's override places 127.0.1.1 in an allowed region; a remote client still may not reach
    # the proxy host, however the address is written.
    for address in (DE, "::ffff:127.0.1.1"):
        v = verdict(e, None, address, client="192.0.2.7")
        assert v.blocked and v.decision.rule == "proxy-host", address
    assert verdict(e, None, "::ffff:127.0.1.1", client="::ffff:127.0.0.1").address == DE


# --- no destination ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", [None, ""])
def test_a_connection_with_neither_address_nor_name_is_blocked(tmp_path, host):
    v = verdict(enforcer(tmp_path), host, None)
    assert v.blocked and v.address is None
    d = v.decision
    assert (d.action, d.rule, d.reason) == (Action.BLOCK, "no-destination",
                                            "neither address nor name known")
    assert (d.port, d.client, d.zoom) == (443, "127.0.0.1", False)


# --- reroute: the disallowed address's own name, the policy's alternative, else block ----------


def test_reroute_by_address_with_a_name_takes_an_allowed_address_of_that_name(tmp_path):
    """An address in IN arrives with the SNI mixed.zoom.us, which also resolves to DE."""
    v = verdict(enforcer(tmp_path, "reroute"), "mixed.zoom.us", IN)
    assert (v.address, v.rerouted_to) == (DE, f"mixed.zoom.us {DE}")
    d = v.decision                       # the audited decision is the disallowed address's
    assert (d.action, d.address, d.region, d.rule) == (Action.REROUTE, IN, "IN", "region-disallowed")


def test_reroute_by_name_takes_the_names_next_allowed_address(tmp_path):
    v = verdict(enforcer(tmp_path, "reroute"), "mixed.zoom.us", None)
    assert (v.address, v.rerouted_to) == (DE, f"mixed.zoom.us {DE}")
    assert (v.decision.action, v.decision.address) == (Action.REROUTE, IN)


def test_reroute_falls_back_to_the_alternative_the_policy_names(tmp_path):
    e = enforcer(tmp_path, "reroute", 'reroute:\n  - {match: "in*.zoom.us", to: de.zoom.us}\n')
    by_name = verdict(e, "in.zoom.us", None)
    assert (by_name.address, by_name.rerouted_to) == (DE, f"de.zoom.us {DE}")
    assert (by_name.decision.action, by_name.decision.address) == (Action.REROUTE, IN)
    # By address with a name that has no allowed address of its own: the name's own answers
    # are tried first (only IN), then the policy's alternative.
    by_address = verdict(e, "in2.zoom.us", IN)
    assert (by_address.address, by_address.rerouted_to) == (DE, f"de.zoom.us {DE}")


def test_reroute_skips_a_name_that_cannot_be_resolved(tmp_path):
    """The client's name does not resolve (nothing answers): the alternative still decides."""
    e = enforcer(tmp_path, "reroute", 'reroute:\n  - {match: "gone.zoom.us", to: de.zoom.us}\n')
    v = verdict(e, "gone.zoom.us", IN)
    assert (v.address, v.rerouted_to) == (DE, f"de.zoom.us {DE}")


@pytest.mark.parametrize(("host", "address", "extra"), [
    ("in.zoom.us", None, ""),                                       # no alternative named
    ("in.zoom.us", IN, ""),                                         # its own name: IN only
    ("in.zoom.us", None, 'reroute:\n  - {match: "in.zoom.us", to: in2.zoom.us}\n'),  # IN too
    ("in.zoom.us", None, 'reroute:\n  - {match: "in.zoom.us", to: gone.zoom.us}\n'),  # unresolvable
    (None, IN, 'reroute:\n  - {match: "*.zoom.us", to: de.zoom.us}\n'),  # no name to reroute by
])
def test_reroute_with_no_allowed_address_blocks(tmp_path, host, address, extra):
    v = verdict(enforcer(tmp_path, "reroute", extra), host, address)
    assert v.blocked and v.rerouted_to is None
    d = v.decision
    assert (d.action, d.region, d.rule) == (Action.BLOCK, "IN", "region-disallowed")
    assert d.reason.endswith("; reroute found no address in an allowed region")
