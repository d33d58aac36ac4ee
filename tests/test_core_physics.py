"""Physics as evidence, as a specification (pure: no network; the real round trips are in
tests/test_rtt_lab.py).

- distances are great-circle distances; a minimum RTT of r ms allows (r − margin) × ~100 km;
- three outcomes: placed (every Zoom site that could be inside is one region's), several, none;
  a claim of a region with no site inside is contradicted;
- the site and city tables are sourced, row by row;
- the store keeps minima, tells only of tighter bounds, and persists beside the learned store;
- in the engine: physics places an address nothing else places, a contradiction is a conflict
  that blocks under strict, and it never guesses;
- the policy's client.site and evidence.rtt, and their errors."""

from __future__ import annotations

import math

import pytest

from regionguard import PolicyError, parse_policy
from regionguard.core.decision import Action, Engine
from regionguard.core.physics import (
    EARTH_RADIUS_KM,
    SPEED_KM_PER_MS,
    ClientSite,
    ZoomSite,
    cities,
    constrain,
    find_city,
    haversine_km,
    intersect,
    radius_km,
    zoom_sites,
)
from regionguard.core.regions import load_catalogue
from regionguard.core.rtt import RttSource, RttStore

FRANKFURT = ClientSite("Frankfurt", 50.11, 8.68)
AMSTERDAM = (52.374, 4.890)
MID_ATLANTIC = ClientSite("sea", 40.0, -40.0)


def site(region: str, lat: float, lon: float, km: float = 0.0, name: str = "") -> ZoomSite:
    return ZoomSite(region, name or region, "labelled", name or region, lat, lon, km, "test")


# --- geometry -------------------------------------------------------------------------------


def test_haversine_is_the_great_circle_distance():
    assert haversine_km(FRANKFURT[1:], FRANKFURT[1:]) == 0
    assert haversine_km(FRANKFURT[1:], AMSTERDAM) == pytest.approx(364, abs=3)   # known: ~364 km
    assert haversine_km((0, 0), (0, 180)) == pytest.approx(math.pi * EARTH_RADIUS_KM)
    assert haversine_km((90, 0), (-90, 0)) == pytest.approx(math.pi * EARTH_RADIUS_KM)
    assert haversine_km((1, 2), (3, 4)) == haversine_km((3, 4), (1, 2))
    # one degree of latitude is ~111 km everywhere
    assert haversine_km((10, 20), (11, 20)) == pytest.approx(111.2, abs=0.1)


def test_the_radius_is_half_the_round_trip_at_the_speed_of_light_in_fibre():
    assert SPEED_KM_PER_MS == pytest.approx(199.86, abs=0.01)      # c / 1.5
    assert radius_km(1.0) == pytest.approx(99.93, abs=0.01)        # ~100 km per ms of RTT
    assert radius_km(20.0) == pytest.approx(20 * radius_km(1.0))
    assert radius_km(0.0) == 0


def test_a_margin_is_subtracted_and_the_radius_is_never_negative_nor_beyond_the_antipode():
    assert radius_km(10.0, margin_ms=2.0) == pytest.approx(radius_km(8.0))
    assert radius_km(1.0, margin_ms=5.0) == 0
    assert radius_km(10_000.0) == pytest.approx(math.pi * EARTH_RADIUS_KM)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_a_round_trip_time_that_is_no_time_is_refused(bad):
    with pytest.raises(ValueError):
        radius_km(bad)


# --- the three outcomes ---------------------------------------------------------------------

SITES = (site("DE", 50.11, 8.68, name="Frankfurt"), site("NL", *AMSTERDAM, name="Amsterdam"),
         site("US", 39.04, -77.49, name="Ashburn"))


def test_placed_when_every_site_inside_is_one_regions():
    outcome = constrain(FRANKFURT, 1.0, SITES)
    assert (outcome.kind, outcome.placed) == ("placed", "DE")
    assert [d.site.name for d in outcome.inside] == ["Frankfurt"]
    assert outcome.contradicts("NL") and outcome.contradicts("US")
    assert not outcome.contradicts("DE")


def test_several_when_sites_of_more_than_one_region_could_be_inside():
    outcome = constrain(FRANKFURT, 8.0, SITES)                     # 800 km: Amsterdam too
    assert (outcome.kind, outcome.placed) == ("several", None)
    assert outcome.regions == {"DE", "NL"}
    assert [d.site.name for d in outcome.inside] == ["Frankfurt", "Amsterdam"]   # nearest first
    assert outcome.contradicts("US") and not outcome.contradicts("NL")


def test_none_when_no_zoom_site_is_within_reach():
    outcome = constrain(MID_ATLANTIC, 1.0, SITES)
    assert (outcome.kind, outcome.placed, outcome.regions) == ("none", None, frozenset())
    assert all(outcome.contradicts(r) for r in ("DE", "NL", "US"))


def test_a_large_rtt_never_places_and_contradicts_nothing():
    outcome = constrain(FRANKFURT, 150.0, SITES)
    assert outcome.kind == "several" and outcome.regions == {"DE", "NL", "US"}


def test_a_sites_uncertainty_counts_towards_inside():
    far = site("NL", *AMSTERDAM, km=300.0, name="somewhere in NL")
    assert constrain(FRANKFURT, 1.0, (SITES[0], far)).regions == {"DE", "NL"}
    assert constrain(FRANKFURT, 1.0, (SITES[0], far._replace(uncertainty_km=100))).placed == "DE"


def test_a_margin_shrinks_the_radius_and_so_can_turn_several_into_placed():
    assert constrain(FRANKFURT, 4.0, SITES).kind == "several"
    assert constrain(FRANKFURT, 4.0, SITES, margin_ms=2.0).placed == "DE"


def test_measurements_from_two_sites_keep_only_the_sites_both_allow():
    from_frankfurt = constrain(FRANKFURT, 8.0, SITES)               # DE, NL
    from_ashburn = constrain(ClientSite("Ashburn", 39.04, -77.49), 70.0, SITES)   # US, and more
    both = intersect([from_frankfurt, from_ashburn])
    assert both is not None and both.regions == {"DE", "NL"} & from_ashburn.regions
    assert both.radius_km == min(from_frankfurt.radius_km, from_ashburn.radius_km)
    assert intersect([]) is None


# --- the shipped tables -----------------------------------------------------------------------


def test_from_frankfurt_a_1_ms_server_is_de_and_a_20_or_150_ms_one_is_placed_nowhere():
    sites = zoom_sites()
    assert constrain(FRANKFURT, 1.0, sites).placed == "DE"
    assert constrain(FRANKFURT, 20.0, sites).regions >= {"DE", "NL", "IE"}
    assert constrain(FRANKFURT, 150.0, sites).regions == load_catalogue().codes


def test_every_zoom_region_has_sites_and_every_site_its_source_and_coordinates():
    sites = zoom_sites()
    assert {s.region for s in sites} == load_catalogue().codes
    for s in sites:
        assert s.kind in ("labelled", "cloud", "country")
        assert s.source and "GeoNames" in s.source
        assert -90 <= s.latitude <= 90 and -180 <= s.longitude <= 180
        assert s.uncertainty_km in (50, 100)
    labelled = {(s.region, s.city) for s in sites if s.kind == "labelled"}
    assert ("DE", "Frankfurt am Main") in labelled and ("NL", "Amsterdam") in labelled


def test_a_city_is_found_by_name_prefix_or_with_its_country():
    assert find_city("Frankfurt")[0].name == "Frankfurt am Main"
    assert find_city("frankfurt am main")[0].country == "DE"
    city, candidates = find_city("Hyderabad")                      # India's and Pakistan's
    assert city is None and {c.country for c in candidates} == {"IN", "PK"}
    assert find_city("Hyderabad, IN")[0].latitude == pytest.approx(17.38, abs=0.01)
    assert find_city("Gotham") == (None, [])
    assert len(cities()) > 500


# --- the store --------------------------------------------------------------------------------


def test_the_store_keeps_the_minimum_and_tells_only_of_a_tighter_bound(tmp_path):
    store = RttStore(tmp_path / "rtt.sqlite3", clock=lambda: 1_800_000_000.0)
    told: list[str] = []
    store.subscribe(told.append)
    assert store.observe(FRANKFURT, "192.0.2.1", 5.0, "passive") is True
    assert store.observe(FRANKFURT, "192.0.2.1", 7.0, "passive") is False   # slower: same bound
    assert store.observe(FRANKFURT, "192.0.2.1", 2.0, "probe") is True
    assert told == ["192.0.2.1", "192.0.2.1"]
    m = store.measured(FRANKFURT, "192.0.2.1")
    assert (m.min_ms, m.samples, m.how) == (2.0, 3, "probe")
    assert store.observe(FRANKFURT, "192.0.2.1", float("nan"), "probe") is False
    store.close()
    again = RttStore(tmp_path / "rtt.sqlite3")                      # persisted
    assert again.measured(FRANKFURT, "192.0.2.1")[2:4] == (2.0, 3)
    assert again.measurements("2001:db8::1") == ()
    again.close()


def test_stores_sharing_a_file_read_each_others_measurements_at_their_next_flush(tmp_path):
    proxy, probe = RttStore(tmp_path / "rtt.sqlite3"), RttStore(tmp_path / "rtt.sqlite3")
    probe.observe(FRANKFURT, "2001:DB8::0001", 3.0, "probe")      # stored canonical
    probe.flush()
    proxy.flush()
    assert proxy.measured(FRANKFURT, "2001:db8::1").min_ms == 3.0
    proxy.close()
    probe.close()


def test_a_learned_stores_own_poll_brings_in_what_another_process_measured(tmp_path):
    """A long-running front end (`regionguard dns`) never measures: its learned store's
    background tick reads the round trips a proxy or `regionguard probe` wrote meanwhile."""
    from regionguard.core.learned import LearnedStore

    dns = LearnedStore.open(tmp_path)
    told: list[str] = []
    dns.rtt.subscribe(told.append)
    probe = RttStore(tmp_path / "rtt.sqlite3")
    probe.observe(FRANKFURT, "192.0.2.7", 1.5, "probe")
    probe.close()
    dns.flush()   # one tick of its background thread
    assert dns.rtt.measured(FRANKFURT, "192.0.2.7").min_ms == 1.5 and told == ["192.0.2.7"]
    dns.close()


# --- in the engine ------------------------------------------------------------------------------

POLICY = """
version: 1
account: {type: paid, default_region: US}
client: {location: china, site: {city: Frankfurt}}
regions: {opt_in: [CN, DE]}
evidence: {rtt: passive, conflicts: CONFLICTS}
overrides:
  - {match: 198.51.100.7, region: CN, zoom: true}
  - {match: 198.51.100.0/24, zoom: true}
groups:
  - {name: elsewhere, clients: [10.9.0.0/16], client: {site: {lat: 40.0, lon: -40.0}}}
"""


def engine(conflicts: str = "strict", rtt: str = "passive") -> Engine:
    return Engine(parse_policy(POLICY.replace("CONFLICTS", conflicts)
                               .replace("rtt: passive", f"rtt: {rtt}")), rtt=RttStore.in_memory())


def test_physics_places_an_address_nothing_else_places():
    e = engine(rtt="probe")
    assert e.decide(None, None, "198.51.100.1", 8801).rule == "unknown-region"
    assert e.wants_probe(None, None, "198.51.100.1", 8801)
    e.observe_rtt(None, "198.51.100.1", 1.0, "probe")               # memos are dropped
    d = e.decide(None, None, "198.51.100.1", 8801)
    assert (d.action, d.region, d.evidence_source) == (Action.ALLOW, "DE", "rtt")
    assert "within 100 km" in d.reason
    assert not e.wants_probe(None, None, "198.51.100.1", 8801)                  # measured: never again


def test_a_claim_physics_rules_out_is_a_conflict_that_blocks_under_strict():
    strict, lenient = engine("strict"), engine("precedence")
    for e in (strict, lenient):
        assert e.decide(None, None, "198.51.100.7", 8801).region == "CN"   # the override alone
        assert not e.wants_probe(None, None, "198.51.100.7", 8801)             # placed: no probe
        e.observe_rtt(None, "198.51.100.7", 1.0, "passive")
    blocked = strict.decide(None, None, "198.51.100.7", 8801)
    assert (blocked.action, blocked.rule) == (Action.BLOCK, "conflict-strict")
    assert "rtt: only DE within reach" in blocked.reason and blocked.location.conflict
    shown = lenient.decide(None, None, "198.51.100.7", 8801)   # the override ranks first
    assert (shown.action, shown.region, shown.location.conflict) == (Action.ALLOW, "CN", True)


def test_sites_of_several_regions_or_none_never_place_and_none_contradicts_every_claim():
    e = engine()
    e.observe_rtt(None, "198.51.100.2", 20.0, "passive")
    assert e.decide(None, None, "198.51.100.2", 8801).rule == "unknown-region"
    # measured from a site in the mid-Atlantic: no Zoom site within 100 km of it
    e.observe_rtt("10.9.0.1", "198.51.100.7", 1.0, "passive")
    d = e.decide(None, None, "198.51.100.7", 8801)
    assert d.rule == "conflict-strict" and "no Zoom site within reach" in d.reason
    assert e.decide(None, None, "198.51.100.3", 8801).rule == "unknown-region"


def test_nothing_is_measured_when_the_policy_measures_nothing_or_the_site_is_unknown():
    off = Engine(parse_policy(POLICY.replace("rtt: passive", "rtt: off")
                              .replace("CONFLICTS", "strict")))
    assert off.rtt is None and not off.observe_rtt(None, "198.51.100.1", 1.0, "passive")
    assert not off.wants_probe(None, None, "198.51.100.1", 8801)
    passive = engine()
    assert not passive.wants_probe(None, None, "198.51.100.1", 8801)   # only probe mode probes
    probing = engine(rtt="probe")
    assert probing.wants_probe(None, None, "198.51.100.1", 8801)
    assert not probing.wants_probe(None, None, "192.0.2.1", 8801)      # not Zoom's: never
    no_site = Engine(parse_policy(POLICY.replace("CONFLICTS", "strict").replace(
        "client: {location: china, site: {city: Frankfurt}}", "client: {location: china}")),
        rtt=RttStore.in_memory())
    assert not no_site.observe_rtt(None, "198.51.100.1", 1.0, "passive")     # top level: none
    assert no_site.observe_rtt("10.9.0.1", "198.51.100.1", 1.0, "passive")  # the group's


def test_the_source_gives_its_measurement_radius_and_the_nearest_sites():
    store = RttStore.in_memory()
    store.observe(FRANKFURT, "198.51.100.9", 1.0, "probe")
    ev = RttSource(store).lookup("198.51.100.9")
    assert ev is not None and (ev.source, ev.region, ev.within) == ("rtt", "DE", frozenset({"DE"}))
    assert ev.matched == "min RTT 1.00 ms from Frankfurt → within 100 km"
    assert "nearest: Frankfurt am Main 1 km" in ev.note


# --- the policy -----------------------------------------------------------------------------------

HEAD = "version: 1\naccount: {type: paid, default_region: US}\n"


def test_a_site_is_coordinates_or_a_city_and_groups_inherit_the_top_levels():
    p = parse_policy(HEAD + "client: {site: {lat: 50.11, lon: 8.68}}\nevidence: {rtt: off}\n"
                     "groups:\n  - {name: a, clients: [10.1.0.0/16]}\n"
                     "  - {name: b, clients: [10.2.0.0/16], client: {site: {city: Tokyo}}}\n")
    assert p.evidence.rtt == "off"                  # an unquoted YAML off is off
    assert p.site_for("10.1.0.1") == ClientSite("50.11,8.68", 50.11, 8.68)
    assert p.site_for("10.2.0.1").name == "Tokyo (JP)"
    assert parse_policy(HEAD).site_for(None) is None


@pytest.mark.parametrize("body,field,message,fix", [
    ("client: {site: {city: Gotham}}\n", "client.site.city",
     "'Gotham' is not in config/data/cities.csv", "give the coordinates instead"),
    ("client: {site: {city: Hyderabad}}\n", "client.site.city",
     "'Hyderabad' is ambiguous (Hyderabad, IN; Hyderabad, PK)", 'city: "Hyderabad, IN"'),
    ("client: {site: {lat: 95, lon: 8}}\n", "client.site.lat",
     "95 is not a number from -90 to 90 (degrees)", "site: {lat: 50.11, lon: 8.68}"),
    ("client: {site: {lat: 50}}\n", "client.site.lon", "missing", "site: {lat: 50.11"),
    ("client: {site: {city: Berlin, lat: 1, lon: 2}}\n", "client.site",
     "gives both a city and coordinates", "keep one"),
    ("client: {site: Frankfurt}\n", "client.site", "expected a mapping", "{city: Frankfurt}"),
    ("evidence: {rtt: probe}\n", "evidence.rtt", "needs to know where clients are",
     "client: {site: {city: Frankfurt}}"),
    ("client: {site: {city: Berlin}}\nevidence: {rtt: passive, precedence: [override, geofeed]}\n",
     "evidence.rtt", "`rtt` is not in evidence.precedence", "add rtt to evidence.precedence"),
    ("client: {site: {city: Berlin}}\nevidence: {rtt: active}\n", "evidence.rtt",
     "'active' is not a valid value", "off, passive, probe"),
])
def test_a_site_or_rtt_error_names_the_field_and_the_fix(body, field, message, fix):
    with pytest.raises(PolicyError) as e:
        parse_policy(HEAD + body, "bad.yaml")
    [problem] = e.value.problems
    assert problem.field == field and problem.file == "bad.yaml" and problem.line
    assert message in problem.message and fix in problem.fix


def test_a_reloaded_engine_on_the_same_store_sees_new_measurements_and_the_old_is_let_go():
    import gc
    import weakref

    store = RttStore.in_memory()
    text = POLICY.replace("CONFLICTS", "strict")
    old = Engine(parse_policy(text), rtt=store)
    assert old.decide(None, None, "198.51.100.1", 8801).rule == "unknown-region"
    new = Engine(parse_policy(text), rtt=store)       # what a policy reload builds
    assert new.decide(None, None, "198.51.100.1", 8801).rule == "unknown-region"
    gone = weakref.ref(old)
    del old
    gc.collect()
    assert gone() is None                             # the store does not keep it alive
    store.observe(FRANKFURT, "198.51.100.1", 1.0, "passive")
    assert new.decide(None, None, "198.51.100.1", 8801).region == "DE"
