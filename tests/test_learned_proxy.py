"""Learned evidence live: `regionguard run` and `regionguard dns` (real processes, curl and
dnspython clients) learn from the answers of their own name server, a loopback ZoneServer that
maps site-coded Zoom names to addresses in Zoom's 170.114.0.0/16, which no bundled source places.

Without network namespaces, only connections that are blocked are made (an allowed one would
leave loopback): a Singapore site under a US+Europe policy, blocked by *region* once learned and
as `unknown-region` before. The allowed case runs in a namespace this test creates, with the
Amsterdam address on its loopback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import time
from itertools import count

import dns.exception
import pytest

from regionguard.core.learned import DB_NAME
from regionguard.mitm.run import stop
from tests import dns_support
from tests.dns_support import DnsProcess, ZoneServer, ask
from tests.netns import netns_missing
from tests.ports import free_port
from tests.proxy_support import Origin, Proxy, curl, run_in_netns, sh, status_of

SG_NAME, SG_ADDR = "zoomsin1mmr.sin.zoom.us", "170.114.11.5"   # site sin: SG, not allowed
NL_NAME, NL_ADDR = "zoomam104zc.zoom.us", "170.114.10.5"       # site am: NL, allowed
CLAIMED = "170.114.12.5"                                      # what clients claim is SG_NAME's
PORT = 8801                                                   # Zoom meeting traffic (TCP 8801)
_seq = count()


def policy_for(tmp_path, zone: ZoneServer):
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(f"""
        version: 1
        account: {{type: paid, default_region: US}}
        regions: {{opt_in: [US, Europe]}}
        resolver: {{nameservers: ["{zone.address}"]}}
    """))
    return path


@pytest.fixture
def zone(monkeypatch):
    monkeypatch.setitem(dns_support.ZONE, SG_NAME + ".", [("A", 60, SG_ADDR)])
    monkeypatch.setitem(dns_support.ZONE, NL_NAME + ".", [("A", 60, NL_ADDR)])
    server = ZoneServer()
    yield server
    server.close()


def rule_of(result: subprocess.CompletedProcess) -> str | None:
    m = re.search(r"^X-Regionguard-Rule: (\S+)", result.stdout, flags=re.M | re.I)
    return m.group(1) if m else None


def region_of(result: subprocess.CompletedProcess) -> str | None:
    m = re.search(r"^X-Regionguard-Region: (\S+)", result.stdout, flags=re.M | re.I)
    return m.group(1) if m else None


def by_ip(proxy: Proxy, address: str) -> subprocess.CompletedProcess:
    return curl("-p", "-x", proxy.url, f"http://{address}:{PORT}/")


def test_the_proxy_learns_from_its_own_resolution_and_remembers(tmp_path, zone):
    state = tmp_path / "state"
    proxy = Proxy(policy_for(tmp_path, zone), tmp_path, "--state-dir", str(state))
    try:
        before = by_ip(proxy, SG_ADDR)
        assert status_of(before) == 403 and rule_of(before) == "unknown-region", before.stdout

        named = curl("-p", "-x", proxy.url, f"http://{SG_NAME}:{PORT}/")
        assert status_of(named) == 403, named.stdout + proxy.output()
        assert rule_of(named) == "region-disallowed" and region_of(named) == "SG"

        later = by_ip(proxy, SG_ADDR)
        assert status_of(later) == 403, later.stdout
        assert rule_of(later) == "region-disallowed" and region_of(later) == "SG"
        lines = proxy.wait_for_audit(lambda r: r.get("address") == SG_ADDR and not r.get("host")
                                     and r.get("evidence_source") == "learned")
        placed = [r for r in lines if r.get("evidence_source") == "learned"][-1]
        assert placed["evidence_dataset"].startswith("learned from proxy resolver")
        assert SG_NAME in placed["evidence_matched"]
    finally:
        proxy.stop()
    assert (state / DB_NAME).is_file()

    again = Proxy(policy_for(tmp_path, zone), tmp_path, "--state-dir", str(state))
    try:
        restarted = by_ip(again, SG_ADDR)
        assert rule_of(restarted) == "region-disallowed" and region_of(restarted) == "SG"
    finally:
        again.stop()


def test_a_name_learned_by_the_dns_filter_places_the_proxys_connections(tmp_path, zone):
    state = tmp_path / "state"
    policy = policy_for(tmp_path, zone)
    proxy = Proxy(policy, tmp_path, "--state-dir", str(state))
    dns = None
    try:
        assert rule_of(by_ip(proxy, SG_ADDR)) == "unknown-region"
        dns = DnsProcess(policy, [zone.address], "--state-dir", str(state))
        answer = ask(dns.port, SG_NAME)
        assert SG_ADDR not in str(answer)       # the filter drops it: SG is not allowed
        deadline = time.monotonic() + 20       # the proxy notices the other process's write
        while True:
            result = by_ip(proxy, SG_ADDR)
            if rule_of(result) == "region-disallowed":
                break
            assert rule_of(result) == "unknown-region", result.stdout
            assert time.monotonic() < deadline, "the proxy never saw what the DNS filter learned"
            time.sleep(0.5)
        assert region_of(result) == "SG"
        assert proxy.wait_for_audit(lambda r: str(r.get("evidence_dataset", "")).startswith(
            "learned from dns-filter upstream"))
    finally:
        if dns is not None:
            dns.close()
        proxy.stop()


def test_names_clients_claim_never_place_an_address(tmp_path, zone):
    """SNI, Host header and CONNECT name all claim CLAIMED is SG_NAME's; regionguard's own
    resolution maps SG_NAME to SG_ADDR only. SG_ADDR is placed, CLAIMED never is."""
    state = tmp_path / "state"
    proxy = Proxy(policy_for(tmp_path, zone), tmp_path, "--state-dir", str(state))
    try:
        claims = {
            "sni": curl("-p", "-x", proxy.url, "-k", "--connect-to",
                        f"{SG_NAME}:{PORT}:{CLAIMED}:{PORT}", f"https://{SG_NAME}:{PORT}/"),
            "host": curl("-x", proxy.url, "-H", f"Host: {SG_NAME}", f"http://{CLAIMED}:{PORT}/"),
            "connect-name": curl("-p", "-x", proxy.url, "--proxy-header",
                                 f"Host: {SG_NAME}:{PORT}", f"http://{CLAIMED}:{PORT}/"),
        }
        for how, result in claims.items():
            assert status_of(result) == 403 and rule_of(result) == "unknown-region", \
                (how, result.stdout, result.stderr)
        named = curl("-p", "-x", proxy.url, f"http://{SG_NAME}:{PORT}/")   # the real resolution
        assert rule_of(named) == "region-disallowed"
        for how in claims:   # and once more by IP alone, after it
            assert rule_of(by_ip(proxy, CLAIMED)) == "unknown-region", how
        assert rule_of(by_ip(proxy, SG_ADDR)) == "region-disallowed"
    finally:
        proxy.stop()
    r = subprocess.run([str(dns_support.BIN / "regionguard"), "explain", CLAIMED, SG_ADDR,
                        "--state-dir", str(state), "--port", str(PORT)],
                       capture_output=True, text=True, timeout=120)
    claimed_part, placed_part = r.stdout.split(f"\n{SG_ADDR}", 1)
    assert "learned" not in claimed_part and "unknown-region" in claimed_part
    assert "* learned" in placed_part and SG_NAME in placed_part


def test_a_corrupt_store_is_reported_and_places_nothing(tmp_path, zone):
    state = tmp_path / "state"
    state.mkdir()
    (state / DB_NAME).write_bytes(b"not a database at all " * 500)
    proxy = Proxy(policy_for(tmp_path, zone), tmp_path, "--state-dir", str(state))
    try:
        proxy.wait_for_output("learned evidence store")
        assert "OFF" in proxy.output()
        named = curl("-p", "-x", proxy.url, f"http://{SG_NAME}:{PORT}/")
        assert status_of(named) == 403 and rule_of(named) == "unknown-region"
        later = by_ip(proxy, SG_ADDR)
        assert status_of(later) == 403 and rule_of(later) == "unknown-region"
    finally:
        proxy.stop()


# --- allowed by region: in a network namespace --------------------------------------------------


@pytest.mark.skipif(netns_missing("curl") is not None, reason=netns_missing("curl") or "")
def test_a_learned_address_in_an_allowed_region_is_reached_by_ip(tmp_path, monkeypatch):
    ns = f"rg-learn{os.getpid() % 10000}{next(_seq)}"
    sh("ip", "netns", "add", ns)
    stops = []
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "addr", "add", f"{NL_ADDR}/32", "dev", "lo")
        monkeypatch.setitem(dns_support.ZONE, NL_NAME + ".", [("A", 60, NL_ADDR)])
        zone = run_in_netns(ns, ZoneServer)
        stops.append(zone.close)
        origin = run_in_netns(ns, lambda: Origin(NL_ADDR, PORT))
        stops.append(origin.stop)
        proxy = Proxy(policy_for(tmp_path, zone), tmp_path, "--state-dir", str(tmp_path / "state"),
                      prefix=("ip", "netns", "exec", ns))
        stops.append(proxy.stop)

        def curl_in(url: str) -> subprocess.CompletedProcess:
            return subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "-S", "-i",
                                   "--max-time", "20", "-p", "-x", proxy.url, url],
                                  capture_output=True, text=True, timeout=60)

        before = curl_in(f"http://{NL_ADDR}:{PORT}/")
        assert status_of(before) == 403 and rule_of(before) == "unknown-region", before.stdout
        assert origin.connections == 0
        named = curl_in(f"http://{NL_NAME}:{PORT}/")
        assert status_of(named) == 200, named.stdout + named.stderr + proxy.output()
        later = curl_in(f"http://{NL_ADDR}:{PORT}/")
        assert status_of(later) == 200, later.stdout + proxy.output()
        assert origin.connections == 2
        def by_address(r: dict) -> bool:
            return r.get("address") == NL_ADDR and not r.get("host") and r.get("action") == "allow"

        decided = [r for r in proxy.wait_for_audit(by_address) if by_address(r)][-1]
        assert decided["rule"] == "region-allowed" and decided["region"] == "NL"
        assert decided["evidence_source"] == "learned"
    finally:
        for fn in reversed(stops):
            try:
                fn()
            except Exception:  # noqa: BLE001 - tear everything down regardless
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_the_dns_filter_places_a_site_coded_answer_by_what_it_says(tmp_path, zone):
    """The upstream's answer for a site-coded name is observed before it is filtered: its
    Amsterdam address is kept (Europe is allowed); a Singapore one is dropped by region."""
    audit = tmp_path / "dns.jsonl"
    dns = DnsProcess(policy_for(tmp_path, zone), [zone.address], "--state-dir",
                     str(tmp_path / "state"), audit=audit)
    try:
        kept = ask(dns.port, NL_NAME)
        assert NL_ADDR in dns_support.addresses(kept), kept
        dropped = ask(dns.port, SG_NAME)
        assert SG_ADDR not in dns_support.addresses(dropped)
    finally:
        dns.close()
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    placed = {r["address"]: r for r in lines if r.get("address")}
    assert placed[NL_ADDR]["evidence_source"] == "learned" and placed[NL_ADDR]["action"] == "allow"
    assert placed[SG_ADDR]["rule"] == "region-disallowed" and placed[SG_ADDR]["region"] == "SG"


def test_mitmproxys_dns_mode_learns_too(tmp_path, zone):
    """addons/regionguard_addon.py in mitmproxy's DNS mode: the upstream's answer places itself, and
    the proxy addon's state directory keeps it."""
    state = tmp_path / "state"
    port = free_port()
    cmd = [str(dns_support.BIN / "mitmdump"), "-q", "--set", "listen_host=127.0.0.1",
           "--mode", f"reverse:dns://{zone.address}@{port}",
           "-s", str(dns_support.ROOT / "addons" / "regionguard_addon.py"),
           "--set", f"regionguard_policy={policy_for(tmp_path, zone)}",
           "--set", f"regionguard_state_dir={state}", "--set", f"confdir={tmp_path / 'conf'}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while True:   # bounded: mitmdump needs a few seconds to start
            assert proc.poll() is None, proc.stdout.read()
            try:
                kept = ask(port, NL_NAME, timeout=1)
                break
            except (dns.exception.Timeout, OSError):
                assert time.monotonic() < deadline, "mitmdump did not answer DNS"
        assert NL_ADDR in dns_support.addresses(kept), kept
    finally:
        stop(proc)
    r = subprocess.run([str(dns_support.BIN / "regionguard"), "explain", NL_ADDR, "--json",
                        "--state-dir", str(state), "--port", str(PORT)],
                       capture_output=True, text=True, timeout=120)
    entry = json.loads(r.stdout)["addresses"][0]
    assert entry["chosen_source"] == "learned" and entry["region"] == "NL"
    assert "mitmproxy dns mode" in entry["decision"]["evidence_dataset"]
