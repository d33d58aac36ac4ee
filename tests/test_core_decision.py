"""The decision engine, as a specification: one connection in, one explained Decision out."""

import pytest

from regionguard import Action, Engine, load_policy
from tests.conftest import CONFIG


@pytest.fixture(scope="module")
def eu():
    return Engine(load_policy(CONFIG / "examples" / "eu-only.yaml"))


@pytest.fixture(scope="module")
def office():
    return Engine(load_policy(CONFIG / "examples" / "china-office.yaml"))


def test_non_zoom_destination_passes_untouched(eu):
    d = eu.decide("10.0.0.1", "example.org", "192.0.2.1", 443)
    assert d.action == Action.PASS and d.rule == "not-zoom" and not d.zoom


def test_allowed_region_is_allowed_with_its_evidence(eu):
    d = eu.decide("10.0.0.1", "zoomam104zc.zoom.us", "159.124.47.249", 8801, "udp")
    assert d.action == Action.ALLOW and d.rule == "region-allowed"
    assert (d.region, d.service) == ("DE", "meeting")
    assert d.location.chosen.source == "zoom-dc"


def test_disallowed_region_is_blocked_naming_the_rule(eu):
    d = eu.decide("10.0.0.1", None, "206.247.11.121", 8801, "udp")
    assert d.action == Action.BLOCK and d.rule == "region-disallowed" and d.region == "US"
    assert "not in the allowed set" in d.reason


def test_unknown_region_fails_closed(eu):
    # (was zoom.us: web is no longer held to the region policy; tests/test_scope.py)
    d = eu.decide("10.0.0.1", "zoomfr12zc.zoom.us", "170.114.10.10", 443)
    assert d.action == Action.BLOCK and d.rule == "unknown-region"
    assert (d.service, d.scope) == ("zone-controller", "governed")


def test_country_without_zoom_region_is_disallowed(eu):
    d = eu.decide(None, None, "15.220.80.10", 8801, "udp")  # Zoom range in AWS Taipei
    assert d.action == Action.BLOCK and d.rule == "no-zoom-region" and d.country == "TW"


def test_domain_fronting_is_decided_by_address(eu):
    d = eu.decide(None, "zoomam104zc.zoom.us", "206.247.11.121", 443)
    assert d.action == Action.BLOCK and d.region == "US"


def test_outside_china_never_reaches_cn_but_china_office_does(office):
    hq = office.decide("192.168.1.5", None, "221.122.88.195", 8801, "udp")
    assert hq.action == Action.BLOCK and hq.rule == "outside-china-never-cn"
    shanghai = office.decide("10.20.1.5", None, "221.122.88.195", 8801, "udp")
    assert shanghai.action == Action.ALLOW and shanghai.group == "shanghai-office"


def test_china_tunnel_servers_are_always_blocked(office):
    d = office.decide("10.20.1.5", None, "221.122.88.195", 443, "tcp")
    assert d.service == "tunnel" and d.action == Action.BLOCK and d.rule == "cn-tunnel-removed"


@pytest.mark.parametrize("host,address,port,transport,service", [
    (None, "159.124.47.249", 8801, "udp", "meeting"),
    (None, "159.124.47.249", 3478, "udp", "relay"),
    (None, "159.124.47.249", 8802, "tcp", "meeting"),
    (None, "159.124.47.249", 1720, "tcp", "crc"),
    (None, "159.124.47.249", 5061, "tcp", "crc"),
    ("123456789.zoomcrc.com", "159.124.47.249", 443, "tcp", "crc"),
    ("zoomfrbb1mmr.fra.zoom.us", "159.124.47.249", 443, "tcp", "tunnel"),
    ("edge7.ams.zoom.us", "159.124.47.249", 443, "tcp", "tunnel"),
    (None, "159.124.47.249", 443, "tcp", "tunnel"),
    ("zoom.us", "159.124.47.249", 443, "tcp", "web"),
    ("zoomfr12zc.zoom.us", "159.124.47.249", 443, "tcp", "zone-controller"),
    (None, "159.124.47.249", 8001, "tcp", "unknown-service"),
    (None, "173.231.92.10", 443, "tcp", "phone"),
    (None, "52.84.151.10", 443, "tcp", "cdn"),
])
def test_services(eu, host, address, port, transport, service):
    assert eu.decide(None, host, address, port, transport).service == service


def test_cdn_is_allowed_out_of_scope_even_though_anycast_has_no_region(eu):
    d = eu.decide(None, None, "52.84.151.10", 443)
    assert d.action == Action.ALLOW and d.rule == "out-of-scope" and d.scope == "other"


@pytest.mark.parametrize("mode,action,would", [("monitor", Action.MONITOR, Action.BLOCK),
                                               ("reroute", Action.REROUTE, None)])
def test_monitor_and_reroute(write_policy, mode, action, would):
    engine = Engine(load_policy(write_policy(f"""
        version: 1
        account: {{type: paid, default_region: DE}}
        regions: {{opt_in: [Europe]}}
        actions: {{disallowed: {mode}, unknown: monitor}}
        reroute: [{{match: "*.zoom.us", to: eu01.zoom.us}}]
    """)))
    d = engine.decide(None, None, "206.247.11.121", 8801, "udp")
    assert (d.action, d.would) == (action, would)
    u = engine.decide(None, None, "170.114.10.10", 443)
    assert u.action == Action.MONITOR and u.would == Action.BLOCK
    assert engine.reroute_target("x.zoom.us") == "eu01.zoom.us"
    assert engine.reroute_target("example.org") is None


def test_choose_picks_the_first_allowed_address(eu):
    usable, decisions = eu.choose(None, "zoom.us", ["206.247.11.121", "159.124.47.249"], 8801, "udp")
    assert usable == "159.124.47.249" and [d.action for d in decisions] == ["block", "allow"]
    none, _ = eu.choose(None, "zoom.us", ["206.247.11.121"], 8801, "udp")
    assert none is None


def test_internal_error_fails_closed_for_zoom_and_passes_the_rest(eu):
    class Broken:
        def locate(self, *a):
            raise RuntimeError("database vanished")

    engine = Engine(eu.policy, locator=Broken(), zoom=eu.zoom)
    assert engine.decide_safely(None, "zoom.us", "159.124.47.249", 443).action == Action.BLOCK
    assert engine.decide_safely(None, "example.org", "192.0.2.1", 443).action == Action.PASS


def test_free_account_allows_only_its_default_region():
    engine = Engine(load_policy(CONFIG / "examples" / "free-account.yaml"))
    assert engine.decide(None, None, "206.247.11.121", 8801, "udp").action == Action.ALLOW
    assert engine.decide(None, None, "159.124.47.249", 8801, "udp").action == Action.BLOCK


def test_ipv6_zoom_range_is_zoom_and_held_like_ipv4(eu, write_policy):
    # No bundled source places Zoom's IPv6 ranges: Zoom's, held, and blocked as unknown.
    d = eu.decide(None, None, "2620:123:2000::1", 8801, "udp")
    assert d.zoom and (d.service, d.scope) == ("meeting", "governed")
    assert (d.action, d.rule, d.region) == (Action.BLOCK, "unknown-region", None)
    # An IPv4-mapped address is placed as the IPv4 address it carries, allowed or not.
    d = eu.decide(None, None, "::ffff:159.124.47.249", 8801, "udp")
    assert (d.action, d.rule, d.region, d.evidence_source) == (
        Action.ALLOW, "region-allowed", "DE", "zoom-dc")
    d = eu.decide(None, None, "::ffff:206.247.11.121", 8801, "udp")
    assert (d.action, d.rule, d.region) == (Action.BLOCK, "region-disallowed", "US")
    # So are the IPv4-compatible and NAT64 (DNS64) forms: each reaches the IPv4 host.
    for v6 in ("::159.124.47.249", "64:ff9b::159.124.47.249", "64:ff9b::9f7c:2ff9"):
        d = eu.decide(None, None, v6, 8801, "udp")
        assert (d.action, d.rule, d.region, d.address) == (Action.ALLOW, "region-allowed", "DE", v6)
    d = eu.decide(None, None, "64:ff9b::206.247.11.121", 8801, "udp")
    assert (d.action, d.rule, d.region) == (Action.BLOCK, "region-disallowed", "US")
    # ...but ::1 and :: are loopback and unspecified, not the IPv4 addresses 0.0.0.1 and 0.0.0.0.
    assert [eu.decide(None, None, a, 443, "tcp").action for a in ("::1", "::")] == [Action.PASS] * 2
    d = eu.decide(None, None, "64:ff9b::221.122.88.195", 8801, "udp")
    assert (d.action, d.rule, d.region) == (Action.BLOCK, "outside-china-never-cn", "CN")
    # Placed by an override, an IPv6 address gets its region's action, as an IPv4 one does.
    engine = Engine(load_policy(write_policy("""
        version: 1
        account: {type: paid, default_region: DE}
        regions: {opt_in: [Europe]}
        overrides:
          - {match: "2620:123:2000::/48", region: DE}
          - {match: "2620:123:2001::/48", region: US}
    """)))
    d = engine.decide(None, None, "2620:123:2000::1", 8801, "udp")
    assert (d.action, d.rule, d.region, d.evidence_source) == (
        Action.ALLOW, "region-allowed", "DE", "override")
    d = engine.decide(None, None, "2620:123:2001::1", 8801, "udp")
    assert (d.action, d.rule, d.region, d.evidence_source) == (
        Action.BLOCK, "region-disallowed", "US", "override")
    d = engine.decide(None, None, "2620:123:2002::1", 8801, "udp")
    assert d.zoom and (d.action, d.rule, d.region) == (Action.BLOCK, "unknown-region", None)


@pytest.mark.parametrize("unknown,action,would", [("allow", Action.ALLOW, None),
                                                  ("monitor", Action.MONITOR, Action.BLOCK),
                                                  ("block", Action.BLOCK, None)])
def test_actions_unknown_decides_an_unplaced_zoom_endpoint(write_policy, unknown, action, would):
    engine = Engine(load_policy(write_policy(f"""
        version: 1
        account: {{type: paid, default_region: DE}}
        regions: {{opt_in: [Europe]}}
        actions: {{unknown: {unknown}}}
    """)))
    d = engine.decide(None, "zoomfr12zc.zoom.us", "170.114.10.10", 443)
    assert (d.action, d.rule, d.would, d.scope) == (action, "unknown-region", would, "governed")
    assert "unknown" in d.reason
    # actions.unknown is about the unplaced only: placed endpoints keep their region's action
    assert engine.decide(None, None, "159.124.47.249", 8801, "udp").action == Action.ALLOW
    assert engine.decide(None, None, "206.247.11.121", 8801, "udp").action == Action.BLOCK
    # and a hard rule still wins over it: no CN for clients outside China
    assert engine.decide(None, None, "221.122.88.195", 8801, "udp").action == Action.BLOCK


# The property test below draws policies (default region, opt-in, where the clients are, what an
# unknown region gets) and Zoom addresses, and checks the invariants every decision keeps. It also
# counts the cases each invariant is about and asserts a floor for each at the end, so an invariant
# that sits behind an `if` cannot pass by never running (a `decide` that blocks everything fails).
from regionguard import load_catalogue, parse_policy  # noqa: E402
from regionguard.core.decision import CN_TUNNEL_SERVICES  # noqa: E402
from regionguard.core.locator import Locator  # noqa: E402
from regionguard.core.zoom import ZoomCatalogue  # noqa: E402

CATALOGUE = load_catalogue()
OPT_INS = (("Europe",), ("US", "Japan/Hong Kong"), ("CN",), None)
PORTS = ((443, "tcp"), (8801, "udp"), (8802, "tcp"), (1720, "tcp"), (3478, "udp"))


def _policy_text(default, opt_in, unknown):
    china = opt_in == ("CN",)
    return (f"version: 1\naccount: {{type: paid, default_region: {default}}}\n"
            + (f"regions: {{opt_in: [{', '.join(opt_in)}]}}\n" if opt_in else "")
            + f"client: {{location: {'china' if china else 'outside-china'}}}\n"
            + f"actions: {{unknown: {unknown}}}\n")


_SHARED = {}
_ENGINES = {}


def _engine(default, opt_in, unknown):
    """One engine per drawn policy. They differ only in regions, location and actions, which the
    locator does not read: one locator and catalogue serve them all (building each is slow)."""
    key = (default, opt_in, unknown)
    if key not in _ENGINES:
        policy = parse_policy(_policy_text(default, opt_in, unknown))
        if not _SHARED:
            _SHARED["zoom"] = ZoomCatalogue.load()
            _SHARED["locator"] = Locator.for_policy(policy, _SHARED["zoom"])
        _ENGINES[key] = Engine(policy, locator=_SHARED["locator"], zoom=_SHARED["zoom"])
    return _ENGINES[key]


def _first_addresses(name, keep=lambda row: True):
    import csv
    with open(CONFIG / "data" / name, newline="", encoding="utf-8") as f:
        return [r["prefix"].split("/")[0] for r in csv.DictReader(f) if keep(r)]


# Addresses of Zoom's data-center table (placed: allowed or not by the policy), its CN rows (the
# hard China rules are about them, and they are few), and those of Zoom's published ranges that no
# trusted source places (the unknown-region rule is about them).
DC_ADDRESSES = _first_addresses("zoom-datacenters.csv")
CN_ADDRESSES = _first_addresses("zoom-datacenters.csv", lambda r: r["region"] == "CN")
RANGE_ADDRESSES = _first_addresses("zoom-ranges.csv", lambda r: r["service"] == "zoom")
UNPLACED_ADDRESSES = [a for a in RANGE_ADDRESSES
                      if not _engine("DE", None, "block").locator.locate(a, None).known]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

policies = st.tuples(st.sampled_from(sorted(CATALOGUE.codes - {"CN"})), st.sampled_from(OPT_INS),
                     st.sampled_from(("block", "block", "allow", "monitor")))
addresses = st.one_of(st.sampled_from(DC_ADDRESSES), st.sampled_from(CN_ADDRESSES),
                      st.sampled_from(UNPLACED_ADDRESSES))


def test_engine_invariants():
    seen = {}

    def saw(case):
        seen[case] = seen.get(case, 0) + 1

    @settings(max_examples=400, deadline=None, database=None)
    @given(policies, addresses, st.sampled_from(PORTS))
    def check(policy, address, port_transport):
        engine = _engine(*policy)
        port, transport = port_transport
        d = engine.decide("10.0.0.1", None, address, port, transport)
        rules = engine.policy.rules_for("10.0.0.1")
        loc = d.location
        assert d.zoom   # every address drawn is in Zoom's ranges or its data-center table
        assert d.scope == ("governed" if d.service in rules.governed else "other")
        if d.action == Action.ALLOW:
            saw("allowed")
            assert d.region in rules.allowed or d.rule == "out-of-scope" or (
                d.rule == "unknown-region" and rules.unknown_action == "allow")
            if rules.location == "outside-china":
                saw("allowed outside china")
                assert d.region != "CN"
        if d.region == "CN" and d.service in CN_TUNNEL_SERVICES:
            saw("cn tunnel")
            assert d.action == Action.BLOCK and d.rule == "cn-tunnel-removed"
        elif d.region == "CN" and rules.location == "outside-china":
            saw("cn from outside china")
            assert d.action == Action.BLOCK and d.rule == "outside-china-never-cn"
        elif d.scope == "governed" and not loc.known:   # held: the policy's actions.unknown
            saw(f"unknown region, unknown: {rules.unknown_action}")
            want = {"block": Action.BLOCK, "allow": Action.ALLOW,
                    "monitor": Action.MONITOR}[rules.unknown_action]
            assert (d.action, d.rule) == (want, "unknown-region")
            assert d.would == (Action.BLOCK if want == Action.MONITOR else None)
        elif d.scope == "governed" and loc.region in rules.allowed:
            saw("known allowed region")   # a decide that blocks everything fails here
            assert (d.action, d.rule) == (Action.ALLOW, "region-allowed")
        elif d.scope == "governed":
            saw("known disallowed region")   # ...and one that allows everything, here
            assert d.action == Action.BLOCK
            assert d.rule == ("region-disallowed" if loc.region else "no-zoom-region")
        else:
            saw("out of scope")
            assert (d.action, d.rule) == (Action.ALLOW, "out-of-scope")

    check()
    floors = ["allowed", "allowed outside china", "cn tunnel", "cn from outside china",
              "unknown region, unknown: block", "unknown region, unknown: allow",
              "unknown region, unknown: monitor", "known allowed region",
              "known disallowed region"]
    # 400 draws give each case 20 or more examples; 10 leaves room for chance, not for a case that
    # stopped occurring.
    missing = {case: seen.get(case, 0) for case in floors if seen.get(case, 0) < 10}
    assert not missing, f"cases the invariants are about occurred too rarely: {missing} of {seen}"


def test_a_hostname_never_places_an_address_no_address_source_places(eu):
    # 4.34.125.133 is in Zoom's ranges but only the low-confidence fallback places it.
    for host in ("a.fra.zoom.us", "x.fra.evilzoom.us", None):
        d = eu.decide(None, host, "4.34.125.133", 443)
        assert d.action == Action.BLOCK and d.rule == "unknown-region", host
    assert eu.locator.locate(None, "x.fra.evilzoom.us").chosen is None


def test_with_host_copies_every_field_but_the_host(eu):
    import dataclasses
    d = eu.decide("10.0.0.1", "zoomam104zc.zoom.us", "159.124.47.249", 8801, "udp")
    copy = d.with_host("other.zoom.us")
    assert copy == dataclasses.replace(d, host="other.zoom.us")
    assert all(getattr(copy, f.name) is getattr(d, f.name)
               for f in dataclasses.fields(d) if f.name != "host")


def test_a_host_override_matches_names_whatever_the_case_it_is_written_in(write_policy):
    engine = Engine(load_policy(write_policy("""
        version: 1
        account: {type: paid, default_region: US}
        regions: {opt_in: [US]}
        overrides:
          - {match: "*.Lab.Example.", region: DE, zoom: true}
    """)))
    assert engine.is_zoom(host="a.lab.example")          # the DNS filter's and the addon's test
    assert engine.locator.locate("192.0.2.1", "A.LAB.example").zoom   # the locator's
