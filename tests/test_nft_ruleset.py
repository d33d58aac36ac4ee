"""The nftables compiler (regionguard/nft/ruleset.py), without root: the table it builds holds
exactly the engine's decisions for bare addresses, touches no other table, and a learned
placement changes elements only. The kernel itself is driven in tests/test_nft_netns.py."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from regionguard.core.decision import Engine
from regionguard.core.learned import LearnedStore
from regionguard.core.policy import load_policy
from regionguard.core.prefixes import address_key
from regionguard.exits import EXIT_NFT
from regionguard.nft.ruleset import (
    TABLE,
    Options,
    compile_ruleset,
    fail_closed_ruleset,
    port_classes,
)
from tests.nft_support import (
    DE4,
    DEFAULT_CLIENT4,
    DEFAULT_CLIENT6,
    LAB_CLIENT4,
    LAB_CLIENT6,
    POLICY,
    SG4,
    SG6,
    UNKNOWN4,
    US4,
    kernel_blocks,
    key_text,
    sample_destinations,
)

CLIENTS = (DEFAULT_CLIENT4, LAB_CLIENT4, DEFAULT_CLIENT6, LAB_CLIENT6, "10.9.2.77", "192.0.2.1")


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("nft") / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture(scope="module")
def engine(policy_file):
    return Engine(load_policy(policy_file))


@pytest.fixture(scope="module")
def compiled(engine):
    return compile_ruleset(engine)


def test_the_table_holds_the_engines_decision_for_random_addresses_ports_and_clients(engine,
                                                                                      compiled):
    rng = random.Random(9)
    destinations = sample_destinations(compiled, engine, rng, 3000)
    for address, port, transport in destinations:
        client = rng.choice(CLIENTS)
        if (":" in client) != (":" in address):
            continue   # a packet's addresses are of one family
        expected = engine.decide(client, None, address, port, transport).blocks
        assert kernel_blocks(compiled, client, address, port, transport) == expected, \
            (client, address, port, transport, engine.decide(client, None, address, port,
                                                              transport).reason)


def test_the_lab_servers_are_decided_per_group(compiled):
    for client in (DEFAULT_CLIENT4, LAB_CLIENT4):
        assert not kernel_blocks(compiled, client, US4, 8801, "udp")
        assert kernel_blocks(compiled, client, UNKNOWN4, 8801, "udp")
    assert kernel_blocks(compiled, DEFAULT_CLIENT4, SG4, 8801, "udp")      # SG: not for default
    assert kernel_blocks(compiled, DEFAULT_CLIENT4, SG4, 443, "tcp")
    assert not kernel_blocks(compiled, LAB_CLIENT4, SG4, 8801, "udp")      # the lab opts SG in
    assert kernel_blocks(compiled, LAB_CLIENT4, DE4, 8801, "udp")          # ... and not DE
    assert not kernel_blocks(compiled, DEFAULT_CLIENT4, DE4, 8801, "udp")
    assert kernel_blocks(compiled, DEFAULT_CLIENT6, SG6, 8805, "udp")
    assert not kernel_blocks(compiled, LAB_CLIENT6, SG6, 8805, "udp")
    # not Zoom's: never blocked
    assert not kernel_blocks(compiled, DEFAULT_CLIENT4, "192.0.2.99", 8801, "udp")


def test_nat64_addresses_are_decided_as_the_ipv4_address_they_embed(engine, compiled):
    nat64 = "64:ff9b::" + SG4
    assert engine.decide(DEFAULT_CLIENT6, None, nat64, 8801, "udp").blocks
    assert kernel_blocks(compiled, DEFAULT_CLIENT6, nat64, 8801, "udp")
    assert not kernel_blocks(compiled, DEFAULT_CLIENT6, "64:ff9b::" + US4, 8801, "udp")


def test_sets_are_named_by_group_and_deciding_rule_and_counted(compiled):
    names = {s.name for s in compiled.sets}
    assert {"default_region_disallowed_v4", "lab_region_disallowed_v4",
            "default_unknown_region_v4", "default_region_disallowed_v6"} <= names
    rules = [c["add"]["rule"] for c in compiled.commands() if "rule" in c.get("add", {})]
    blocking = [r for r in rules if any("drop" in e for e in r["expr"])]
    assert len(blocking) == len(compiled.sets)
    assert all(any("counter" in e for e in r["expr"]) for r in blocking)


def test_the_document_is_one_batch_that_replaces_only_table_inet_regionguard(compiled):
    commands = compiled.document()["nftables"]
    assert commands[0] == {"add": {"table": {"family": "inet", "name": TABLE}}}
    assert commands[1] == {"delete": {"table": {"family": "inet", "name": TABLE}}}
    for command in commands[2:]:
        (verb, body), = command.items()
        (kind, spec), = body.items()
        assert verb == "add"
        assert spec["family"] == "inet"
        assert spec.get("table", spec.get("name")) == TABLE


def test_reject_and_log_and_the_output_hook(engine):
    compiled = compile_ruleset(engine, Options(hook="output", verdict="reject", log_prefix="rg "))
    commands = compiled.commands()
    base = next(c["add"]["chain"] for c in commands if c["add"].get("chain", {}).get("hook"))
    assert base["hook"] == "output"
    rules = [c["add"]["rule"] for c in commands if "rule" in c["add"]]
    verdicts = [e for r in rules for e in r["expr"] if "reject" in e]
    assert {"reject": {"type": "tcp reset"}} in verdicts and {"reject": None} in verdicts
    assert all(any(e == {"log": {"prefix": "rg "}} for e in r["expr"])
               for r in rules if any("reject" in e for e in r["expr"]))


def test_every_port_belongs_to_exactly_one_class_per_transport(engine):
    classes = port_classes(engine.zoom)
    for transport in ("tcp", "udp"):
        listed = [c.ports for c in classes if c.transport == transport and c.ports is not None]
        every = [p for ports in listed for p in ports]
        assert len(every) == len(set(every))
        assert sum(c.ports is None for c in classes if c.transport == transport) == 1


def test_a_learned_placement_is_an_element_update_not_a_new_table(policy_file):
    store = LearnedStore.in_memory()
    engine = Engine(load_policy(policy_file), learned=store)
    before = compile_ruleset(engine)
    unknown = next(s for s in before.sets if s.name == "default_unknown_region_v4")
    target = key_text(unknown.elements[len(unknown.elements) // 2].start)
    assert engine.decide(DEFAULT_CLIENT4, None, target, 8801, "udp").rule == "unknown-region"
    assert store.observe("zoomxx1mmr.fra.zoom.us", [target], "test") == 1   # fra: DE, allowed
    after = compile_ruleset(engine)
    assert not engine.decide(DEFAULT_CLIENT4, None, target, 8801, "udp").blocks
    assert not kernel_blocks(after, DEFAULT_CLIENT4, target, 8801, "udp")
    assert after.structure() == before.structure()
    updates = after.element_updates(before)
    assert updates and all(next(iter(next(iter(c.values())))) == "element" for c in updates)
    assert any("delete" in c for c in updates)


def test_print_needs_no_root_and_apply_without_it_says_so(policy_file):
    # CAP_NET_ADMIN taken away from a real process (setpriv --bounding-set): root without it
    # is as powerless over nftables as any user
    base = ["setpriv", "--bounding-set", "-net_admin", sys.executable, "-m", "regionguard",
            "nft", "--policy", str(policy_file), "--state-dir", "off"]
    shown = subprocess.run([*base, "--print"], capture_output=True, text=True, timeout=120)
    if "setpriv" in shown.stderr and shown.returncode != 0:
        pytest.skip(f"setpriv cannot drop a capability here: {shown.stderr.strip()}")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["nftables"][0] == {"add": {"table": {"family": "inet", "name": TABLE}}}
    assert "set default_region_disallowed_v4:" in shown.stderr
    refused = subprocess.run([*base, "--apply"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == EXIT_NFT
    assert "needs root (CAP_NET_ADMIN)" in refused.stderr
    assert "--print" in refused.stderr


def test_a_missing_nft_names_the_debian_package(policy_file, tmp_path):
    # PATH holds only a directory without nft: the message says what to install
    env = {"PATH": str(tmp_path), "PYTHONPATH": ":".join(sys.path)}
    r = subprocess.run([sys.executable, "-m", "regionguard", "nft", "--check", "--policy",
                        str(policy_file), "--state-dir", "off"], capture_output=True, text=True,
                       timeout=120, env=env)
    if "needs root" in r.stderr:
        pytest.skip("not root: the check for nft comes after the one for root")
    assert r.returncode == EXIT_NFT, r.stderr
    assert "install the Debian package nftables" in r.stderr


def test_geoip_networks_inside_a_zoom_range_are_cut_where_the_database_changes(tmp_path, engine):
    """A GeoIP database (confidence 0.6, above min_confidence) places parts of a Zoom range the
    other sources leave unknown: the table follows the database's networks exactly."""
    from tests.test_core_locator import make_mmdb

    zoom_range = next(iv for iv in engine.zoom.ranges.intervals()
                      if iv[1] - iv[0] >= 1023 and key_text(iv[0]).count(".") == 3
                      and engine.decide(DEFAULT_CLIENT4, None, key_text(iv[0]), 8801,
                                        "udp").rule == "unknown-region")
    start = zoom_range[0]
    jp = f"{key_text(start)}/23"                     # the first 512 addresses: Japan
    de = f"{key_text(start + 768)}/28"               # 16 addresses further on: Germany
    make_mmdb(tmp_path / "geo.mmdb", {jp: "JP", de: "DE"})
    policy = tmp_path / "geo.yaml"
    policy.write_text(POLICY + "data: {geoip: [geo.mmdb]}\n")
    geo_engine = Engine(load_policy(policy))
    compiled = compile_ruleset(geo_engine)
    rng = random.Random(5)
    addresses = [start, start + 511, start + 512, start + 767, start + 768, start + 783,
                 start + 784] + [rng.randint(start, start + 1023) for _ in range(300)]
    verdicts = set()
    for key in addresses:
        address = key_text(key)
        for client in (DEFAULT_CLIENT4, LAB_CLIENT4):
            decision = geo_engine.decide(client, None, address, 8801, "udp")
            verdicts.add(decision.rule)
            assert kernel_blocks(compiled, client, address, 8801, "udp") == decision.blocks, \
                (client, address, decision.reason)
    # the database did change decisions: DE is allowed for the default group, JP for nobody
    assert {"region-allowed", "region-disallowed", "unknown-region"} <= verdicts


def test_without_a_policy_every_zoom_address_is_blocked_for_everyone(engine):
    closed = fail_closed_ruleset(engine.zoom)
    rng = random.Random(3)
    ranges = list(engine.zoom.ranges.intervals())
    for _ in range(500):
        start, end, _ = rng.choice(ranges)
        address = key_text(rng.randint(start, end))
        client = DEFAULT_CLIENT6 if ":" in address else rng.choice((DEFAULT_CLIENT4, LAB_CLIENT4))
        assert kernel_blocks(closed, client, address, rng.randint(0, 65535),
                             rng.choice(("tcp", "udp")))
    assert kernel_blocks(closed, DEFAULT_CLIENT6, "64:ff9b::" + key_text(ranges[0][0]), 1, "udp")
    assert not kernel_blocks(closed, DEFAULT_CLIENT4, "192.0.2.1", 8801, "udp")


def test_a_policy_using_every_kind_of_rule_is_compiled_exactly(tmp_path, engine):
    """Overrides inside Zoom's ranges (not Zoom's, CN, SG), nested client groups (the longest
    prefix wins), a China office, scope.other: block, unknown: monitor, reroute: the table still
    equals Engine.decide wherever it is sampled."""
    v4 = [key_text(s) for s, e, _ in engine.zoom.ranges.intervals()
          if e - s >= 255 and key_text(s).count(".") == 3][:3]
    policy = tmp_path / "every.yaml"
    policy.write_text(f"""\
version: 1
account: {{default_region: US}}
regions: {{opt_out: [SG]}}
actions: {{unknown: monitor}}
scope: {{other: block}}
overrides:
  - {{match: "{v4[0]}/28", zoom: false}}
  - {{match: "{v4[1]}/25", region: CN}}
  - {{match: "{v4[2]}/26", region: SG}}
groups:
  - {{name: china-office, clients: [10.20.0.0/16], client: {{location: china}},
      regions: {{opt_in: [CN, US]}}, actions: {{unknown: block}}}}
  - {{name: eu, clients: [10.30.0.0/16], regions: {{opt_in: [DE]}},
      actions: {{disallowed: reroute}}}}
  - {{name: eu-lab, clients: [10.30.5.0/24], regions: {{opt_in: [SG, DE]}}}}
""")
    every = Engine(load_policy(policy))
    compiled = compile_ruleset(every)
    assert [g for g, _ in compiled.groups] == ["china-office", "eu", "eu-lab", "default"]
    clients = ("10.20.1.1", "10.30.1.1", "10.30.5.9", "10.40.0.1")
    rng = random.Random(11)
    rules = set()
    for address, port, transport in sample_destinations(compiled, every, rng, 3000):
        if ":" in address:
            continue
        client = rng.choice(clients)
        decision = every.decide(client, None, address, port, transport)
        rules.add((decision.group, decision.rule, decision.action))
        assert kernel_blocks(compiled, client, address, port, transport) == decision.blocks, \
            (client, address, port, transport, decision.reason)
    actions = {action for _, _, action in rules}
    assert {"block", "reroute", "monitor", "allow"} <= {str(a) for a in actions}
    # the override that says `zoom: false`: not Zoom's, so never blocked
    for client in clients:
        assert every.decide(client, None, v4[0], 8801, "udp").rule == "not-zoom"
        assert not kernel_blocks(compiled, client, v4[0], 8801, "udp")


def test_round_trip_measurements_are_compiled_address_by_address(tmp_path):
    """With `evidence.rtt` on, a measured address is placed (or contradicted) by physics, one
    address at a time: the table cuts Zoom's ranges at each measured address, so the kernel
    follows the engine there and around it, and a new measurement is an element update."""
    from regionguard.core.rtt import RttStore

    policy = tmp_path / "rtt.yaml"
    policy.write_text(POLICY.replace("version: 1\n", "version: 1\nclient: {site: {city: Frankfurt}}\n"
                                     "evidence: {rtt: probe}\n", 1))
    store = RttStore.in_memory()
    engine = Engine(load_policy(policy), rtt=store)
    before = compile_ruleset(engine)
    unknown = next(s for s in before.sets if s.name == "default_unknown_region_v4")
    element = unknown.elements[len(unknown.elements) // 2]
    target = key_text((element.start + element.end) // 2)
    assert engine.decide(DEFAULT_CLIENT4, None, target, 8801, "udp").rule == "unknown-region"
    site = engine.policy.site_for(DEFAULT_CLIENT4)
    assert store.observe(site, target, 0.8, "probe")   # 0.8 ms from Frankfurt: DE, allowed here
    after = compile_ruleset(engine)
    assert after.structure() == before.structure() and after.element_updates(before)
    for key in (address_key(target) - 1, address_key(target), address_key(target) + 1):
        address = key_text(key)
        for client in (DEFAULT_CLIENT4, LAB_CLIENT4):   # DE: allowed for one group, not the other
            decision = engine.decide(client, None, address, 8801, "udp")
            assert kernel_blocks(after, client, address, 8801, "udp") == decision.blocks, \
                (client, address, decision.reason)
    assert engine.decide(DEFAULT_CLIENT4, None, target, 8801, "udp").region == "DE"
    assert engine.decide(LAB_CLIENT4, None, target, 8801, "udp").blocks
