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


def test_ipv6_zoom_range_is_zoom(eu):
    d = eu.decide(None, None, "2620:123:2000::1", 8801, "udp")
    assert d.zoom


def _engines():
    from regionguard import load_catalogue, parse_policy

    cat = load_catalogue()
    out = []
    for default in sorted(cat.codes - {"CN"}):
        for opt_in in (["Europe"], ["US", "Japan/Hong Kong"], ["CN"], None):
            china = opt_in == ["CN"]
            text = (f"version: 1\naccount: {{type: paid, default_region: {default}}}\n"
                    + (f"regions: {{opt_in: {opt_in}}}\n".replace("'", "") if opt_in else "")
                    + f"client: {{location: {'china' if china else 'outside-china'}}}\n")
            out.append(Engine(parse_policy(text)))
    return out


ENGINES = _engines()


def _zoom_addresses():
    rows = (CONFIG / "data" / "zoom-datacenters.csv").read_text().splitlines()[1:]
    return [r.split(",")[0].split("/")[0] for r in rows]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(ENGINES), st.sampled_from(_zoom_addresses()),
       st.sampled_from([(443, "tcp"), (8801, "udp"), (8802, "tcp"), (1720, "tcp"), (3478, "udp")]))
def test_engine_invariants(engine, address, port_transport):
    port, transport = port_transport
    d = engine.decide("10.0.0.1", None, address, port, transport)
    rules = engine.policy.rules_for("10.0.0.1")
    assert d.zoom  # every address of the Zoom table is in Zoom's ranges or the table itself
    if d.action == Action.ALLOW:
        assert d.region in rules.allowed or d.rule == "out-of-scope"
        if rules.location == "outside-china":
            assert d.region != "CN"
    if d.region == "CN" and d.service == "tunnel":
        assert d.action == Action.BLOCK
    if not d.location.known:   # held unless out of the governed scope (other: allow by default)
        assert d.action != Action.ALLOW or rules.unknown_action == "allow" or (
            d.scope == "other" and d.rule == "out-of-scope")
    assert d.scope == ("governed" if d.service in rules.governed else "other")


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
