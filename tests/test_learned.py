"""Learned evidence (regionguard/core/learned.py): the store, and what `regionguard explain` (a real
process reading the same state directory) makes of it: provenance, conflict, spreading, expiry,
the size bound, and a corrupt or unusable store.

Addresses are in Zoom's published 170.114.0.0/16, where no bundled source places anything, so
before learning they are unknown (blocked)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time

import pytest

from regionguard import Engine, load_policy
from regionguard.core.learned import DB_NAME, LearnedStore
from tests.conftest import BIN, CONFIG

NL_NAME = "zoomam104zc.zoom.us"           # site code am: Amsterdam (NL)
SG_NAME = "zoomsin1mmr.sin.zoom.us"       # site subdomain sin: Singapore (SG)
US_NAME = "zoomsjcbb24mmr.sjc.zoom.us"    # site subdomain sjc: San Jose (US)
A, B, C = "170.114.10.5", "170.114.10.6", "170.114.10.77"   # one /24
D = "170.114.11.5"
DAY = 86400.0


def explain(state_dir, *targets: str, policy=None, extra: tuple[str, ...] = ()) -> list[dict]:
    cmd = [str(BIN / "regionguard"), "explain", *targets, "--json", "--port", "8801",
           "--transport", "udp", "--state-dir", str(state_dir),
           "--policy", str(policy or CONFIG / "policy.yaml"), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode in (0, 1), r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def learned_of(doc: dict) -> list[dict]:
    return [e for e in doc["addresses"][0]["evidence"] if e["source"] == "learned"]


def test_bundled_data_leaves_the_test_addresses_unknown():
    engine = Engine(load_policy(CONFIG / "policy.yaml"))
    for a in (A, B, C, D):
        d = engine.decide(None, None, a, 8801, "udp")
        assert d.zoom and d.rule == "unknown-region", d


def test_a_site_coded_name_places_its_address_with_provenance(tmp_path):
    store = LearnedStore.open(tmp_path)
    assert store.observe(NL_NAME, [A], "proxy resolver (127.0.0.1:53)", when=time.time() - 3600) == 1
    assert store.observe("www.zoom.us", [D], "proxy resolver (127.0.0.1:53)") == 0   # no site code
    assert store.observe("zoomny1zc.zoom.us", [D], "x") == 0   # a code only inferred (0.4): never
    store.close()

    doc, other = explain(tmp_path, A, D)
    entry = doc["addresses"][0]
    assert entry["region"] == "NL" and entry["chosen_source"] == "learned"
    assert entry["decision"]["rule"] == "region-allowed"
    assert entry["decision"]["evidence_source"] == "learned"
    [ev] = learned_of(doc)
    assert ev["confidence"] == 0.75 and ev["accepted"]
    assert NL_NAME in ev["matched"] and A in ev["matched"]
    assert "proxy resolver (127.0.0.1:53)" in ev["dataset"]
    assert "first seen" in ev["note"] and "last seen" in ev["note"]
    assert other["addresses"][0]["decision"]["rule"] == "unknown-region"

    text = subprocess.run([str(BIN / "regionguard"), "explain", A, "--state-dir", str(tmp_path),
                           "--port", "8801", "--transport", "udp"],
                          capture_output=True, text=True, timeout=120).stdout
    assert "* learned" in text and NL_NAME in text and "first seen" in text


def test_a_dns_answer_teaches_along_zoom_chains_only():
    store = LearnedStore.in_memory()
    assert store.observe_records([(NL_NAME, "CNAME", "zoomam104zc.cloud.zoom.us."),
                                  ("zoomam104zc.cloud.zoom.us", "A", A)], "dns-filter upstream") == 2
    assert store.observe_records([(US_NAME, "CNAME", "edge.cdn-example.net."),
                                  ("edge.cdn-example.net", "A", D)], "dns-filter upstream") == 0
    assert {s.address for s in store.sightings()} == {A}   # both names of the chain, one address


def test_the_engine_without_a_store_is_unchanged(tmp_path):
    store = LearnedStore.in_memory()
    store.observe(NL_NAME, [A], "capture test.pcap")
    policy = load_policy(CONFIG / "policy.yaml")
    assert Engine(policy).decide(None, None, A, 8801, "udp").rule == "unknown-region"
    with_store = Engine(policy, learned=store)
    assert with_store.decide(None, None, A, 8801, "udp").region == "NL"
    # a later sighting changes a memoised decision
    store.observe(US_NAME, [D], "capture test.pcap")
    assert with_store.decide(None, None, D, 8801, "udp").region == "US"


def test_a_name_given_with_the_address_never_teaches(tmp_path):
    """Hostname evidence (SNI, Host, CONNECT name) never places an address, and deciding never
    writes to the store: only observe() does."""
    store = LearnedStore.in_memory()
    engine = Engine(load_policy(CONFIG / "policy.yaml"), learned=store)
    d = engine.decide(None, NL_NAME, D, 8801, "udp")
    assert d.rule == "unknown-region"
    assert store.sightings() == []


def test_two_sites_of_different_regions_make_a_conflict(tmp_path):
    store = LearnedStore.open(tmp_path)
    store.observe(NL_NAME, [A], "dns-filter upstream 127.0.0.1:53")
    store.observe(SG_NAME, [A], "dns-filter upstream 127.0.0.1:53")
    store.close()
    [doc] = explain(tmp_path, A)
    entry = doc["addresses"][0]
    assert entry["conflict"] is True
    assert {e["region"] for e in learned_of(doc)} == {"NL", "SG"}
    strict = tmp_path / "strict.yaml"
    strict.write_text("version: 1\naccount: {type: paid, default_region: US}\n"
                      "regions: {opt_in: [US, Europe]}\nevidence: {conflicts: strict}\n")
    [doc] = explain(tmp_path, A, policy=strict)
    assert doc["addresses"][0]["decision"]["rule"] == "conflict-strict"


def test_spreading_to_the_block_only_when_all_agree_and_nothing_disagrees(tmp_path):
    store = LearnedStore.open(tmp_path)
    store.observe(NL_NAME, [A, B], "proxy resolver")
    # 170.114.11.0/24: learned addresses disagree → no spread
    store.observe(NL_NAME, ["170.114.11.1"], "proxy resolver")
    store.observe(SG_NAME, ["170.114.11.2"], "proxy resolver")
    # 170.114.12.0/24: learned NL, but the policy's override puts part of the block in DE
    store.observe(NL_NAME, ["170.114.12.100"], "proxy resolver")
    store.close()
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\naccount: {type: paid, default_region: US}\n"
                      "regions: {opt_in: [US, Europe]}\n"
                      "overrides: [{match: 170.114.12.0/28, region: DE, zoom: true}]\n")
    spread, split, overridden = explain(tmp_path, C, "170.114.11.9", "170.114.12.200",
                                        policy=policy)
    entry = spread["addresses"][0]
    assert entry["region"] == "NL" and entry["decision"]["rule"] == "region-allowed"
    [ev] = learned_of(spread)
    assert ev["confidence"] == 0.55 and ev["matched"] == "170.114.10.0/24"
    assert "spread" in ev["note"]
    assert split["addresses"][0]["decision"]["rule"] == "unknown-region"
    assert overridden["addresses"][0]["decision"]["rule"] == "unknown-region"


def test_sightings_expire(tmp_path):
    store = LearnedStore.open(tmp_path)
    now = time.time()
    assert store.observe(NL_NAME, [A], "proxy resolver", when=now - 31 * DAY) == 0   # too old
    assert store.observe(US_NAME, [D], "proxy resolver", when=now - 20 * DAY) == 1
    assert store.exact and store.expire(now + 11 * DAY) == 1 and not store.exact
    store.close()

    store = LearnedStore.open(tmp_path)
    store.observe(US_NAME, [D], "proxy resolver", when=now - 20 * DAY)
    store.close()
    a, d = explain(tmp_path, A, D)
    assert a["addresses"][0]["decision"]["rule"] == "unknown-region"
    assert d["addresses"][0]["region"] == "US"
    short = tmp_path / "short.yaml"
    short.write_text("version: 1\naccount: {type: paid, default_region: US}\n"
                     "evidence: {learned_ttl_days: 10}\n")
    [d] = explain(tmp_path, D, policy=short)
    assert d["addresses"][0]["decision"]["rule"] == "unknown-region"


def test_an_in_memory_store_judges_age_by_its_own_newest_sighting():
    """Replay: a capture from last year still teaches; its own old sightings still expire."""
    store = LearnedStore.in_memory(ttl_days=30)
    year_ago = time.time() - 365 * DAY
    assert store.observe(NL_NAME, [A], "capture old.pcap", when=year_ago) == 1
    assert store.observe(US_NAME, [D], "capture old.pcap", when=year_ago - 40 * DAY) == 0
    engine = Engine(load_policy(CONFIG / "policy.yaml"), learned=store)
    assert engine.decide(None, None, A, 8801, "udp").region == "NL"


def test_learned_ttl_days_is_checked(tmp_path):
    policy = tmp_path / "ttl.yaml"
    policy.write_text("version: 1\naccount: {default_region: US}\nevidence: {learned_ttl_days: -3}\n")
    r = subprocess.run([str(BIN / "regionguard"), "validate", str(policy)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "evidence.learned_ttl_days" in r.stdout + r.stderr


def test_the_store_is_bounded_and_keeps_the_newest(tmp_path):
    store = LearnedStore.open(tmp_path, max_entries=3)
    now = time.time()
    addresses = [f"170.114.{20 + i}.1" for i in range(5)]
    for i, a in enumerate(addresses):
        store.observe(US_NAME, [a], "proxy resolver", when=now - 100 + i)
    assert [s.address for s in store.sightings()] == sorted(addresses[2:])
    store.close()
    rows = sqlite3.connect(tmp_path / DB_NAME).execute("SELECT address FROM learned").fetchall()
    assert sorted(r[0] for r in rows) == sorted(addresses[2:])
    first, last = explain(tmp_path, addresses[0], addresses[-1])
    assert first["addresses"][0]["decision"]["rule"] == "unknown-region"
    assert last["addresses"][0]["region"] == "US"


def test_a_second_process_sees_what_the_first_wrote(tmp_path):
    reader = LearnedStore.open(tmp_path)
    engine = Engine(load_policy(CONFIG / "policy.yaml"), learned=reader)
    assert engine.decide(None, None, D, 8801, "udp").rule == "unknown-region"
    code = (f"from regionguard.core.learned import LearnedStore; s = LearnedStore.open({str(tmp_path)!r});"
            f"s.observe({US_NAME!r}, [{D!r}], 'dns-filter upstream 127.0.0.1:53'); s.close()")
    subprocess.run([str(BIN / "python"), "-c", code], check=True, timeout=60)
    deadline = time.monotonic() + 10
    while engine.decide(None, None, D, 8801, "udp").region != "US":
        assert time.monotonic() < deadline, "the other process's sighting never arrived"
        time.sleep(0.1)
    reader.close()


@pytest.mark.parametrize("damage", ["garbage", "directory"])
def test_an_unusable_store_is_reported_and_places_nothing(tmp_path, damage):
    good = LearnedStore.open(tmp_path)
    good.observe(NL_NAME, [A], "proxy resolver")
    good.close()
    if damage == "garbage":
        (tmp_path / DB_NAME).write_bytes(b"this is not an sqlite database " * 200)
        for suffix in ("-wal", "-shm"):
            (tmp_path / (DB_NAME + suffix)).unlink(missing_ok=True)
        state = tmp_path
    else:
        state = tmp_path / "a-file"
        state.write_text("not a directory")
    store = LearnedStore.open(state)
    assert not store.enabled and store.problem
    assert store.observe(NL_NAME, [A], "proxy resolver") == 0
    r = subprocess.run([str(BIN / "regionguard"), "explain", A, "--json", "--port", "8801",
                        "--transport", "udp", "--state-dir", str(state)],
                       capture_output=True, text=True, timeout=120)
    assert "learned evidence store" in r.stderr and "OFF" in r.stderr
    assert json.loads(r.stdout)["addresses"][0]["decision"]["rule"] == "unknown-region"


def test_a_user_without_a_home_still_gets_a_state_directory(tmp_path):
    """A dynamic system user (systemd DynamicUser=, no $HOME, no passwd entry) must be able to
    start every command: systemd's own state directory first, else one of its own. (Path.home()
    is made to fail as it does for such a user: the test's Python cannot run as another uid.)"""
    code = ("import os, pathlib, pwd\n"
            "pathlib.Path.home = classmethod(lambda cls: (_ for _ in ()).throw(RuntimeError('no home')))\n"
            "from regionguard.core.paths import state_dir\n"
            "print(state_dir())\n"
            "os.environ['STATE_DIRECTORY'] = '/var/lib/regionguard:/var/lib/other'\n"
            "print(state_dir())\n"
            "from regionguard.cli import build_parser\n"
            "build_parser()\n"
            "print('parser-ok')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HOME", "XDG_STATE_HOME", "STATE_DIRECTORY")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [f"{tempfile.gettempdir()}/regionguard-{os.getuid()}",
                                "/var/lib/regionguard", "parser-ok"]
