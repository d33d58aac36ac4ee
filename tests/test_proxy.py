"""The mitmproxy addon and `regionguard run`, end to end: real proxy subprocesses, real origin
servers on loopback addresses that policy overrides place in different regions, real curl."""

from __future__ import annotations

import datetime
import http.client
import json
import re
import shutil
import socket
import subprocess
import textwrap
import time

import httpx
import pytest

from regionguard.core.policy import load_policy
from tests.conftest import BIN, free_port
from tests.proxy_support import Proxy, body_json, curl, make_cert, origins_on_one_port, status_of

DE, IN, OTHER = "127.0.1.1", "127.0.2.1", "127.0.3.1"

POLICY = """
version: 1
name: proxy-test
account: {type: paid, default_region: US}
regions: {opt_in: [US, DE]}
actions: {disallowed: %(disallowed)s, unknown: block}
overrides:
  - {match: 127.0.1.0/24, region: DE, zoom: true}
  - {match: 127.0.2.0/24, region: IN, zoom: true}
  - {match: "::1/128", region: DE, zoom: true}
resolver:
  nameservers: ["127.0.0.1:%(dead_port)d"]   # nothing answers: names come from `hosts` only
  timeout: 1
  hosts:
    de.zoom.us: 127.0.1.1
    in.zoom.us: 127.0.2.1
    mixed.zoom.us: [127.0.2.1, 127.0.1.1]
    v6.zoom.us: "::1"
    plain.example: 127.0.3.1
%(extra)s
"""


def policy_text(disallowed: str = "block", extra: str = "") -> str:
    return textwrap.dedent(POLICY) % {"disallowed": disallowed, "extra": extra,
                                      "dead_port": free_port()}


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("cert")
    return make_cert(d, ["de.zoom.us", "in.zoom.us", "mixed.zoom.us", "v6.zoom.us"],
                     [DE, IN, "::1"])


@pytest.fixture(scope="module")
def web():
    """Plain HTTP origins on DE, IN and a non-Zoom address, one port."""
    servers = origins_on_one_port([DE, IN, OTHER])
    yield servers
    for s in servers.values():
        s.stop()


@pytest.fixture(scope="module")
def tls(cert):
    """HTTPS origins on DE, IN and ::1, one port, with the test's own certificate."""
    servers = origins_on_one_port([DE, IN, "::1"], tls=cert)
    yield servers
    for s in servers.values():
        s.stop()


@pytest.fixture
def start_proxy(tmp_path):
    started = []

    def start(text: str | None = None, *extra: str, **kw) -> Proxy:
        policy = tmp_path / f"policy{len(started)}.yaml"
        policy.write_text(text or policy_text())
        proxy = Proxy(policy, tmp_path, *extra, **kw)
        proxy.policy = policy
        started.append(proxy)
        return proxy

    yield start
    for p in started:
        p.stop()


def _via(proxy: Proxy, url: str, *args: str):
    return curl("-x", proxy.url, *args, url)


# --- explicit proxy: CONNECT ----------------------------------------------------------------


def test_blocked_connect_gets_403_with_reason_and_origin_never_contacted(start_proxy, tls, cert):
    proxy = start_proxy()
    before = tls[IN].connections
    r = _via(proxy, f"https://in.zoom.us:{tls[IN].port}/", "--cacert", str(cert[0]))
    assert r.returncode != 0                      # curl: the CONNECT was refused
    assert status_of(r) == 403
    assert "X-Regionguard-Region: IN" in r.stdout
    assert "X-Regionguard-Rule: region-disallowed" in r.stdout
    assert "X-Regionguard-Host: in.zoom.us" in r.stdout
    assert f"X-Regionguard-Address: {IN}" in r.stdout
    assert tls[IN].connections == before          # the origin never saw a connection
    [line] = proxy.decisions(1)
    assert (line["action"], line["region"], line["hook"]) == ("block", "IN", "http_connect")


def test_allowed_tls_passes_through_with_the_origins_own_certificate(start_proxy, tls, cert):
    proxy = start_proxy()
    # --cacert trusts only the origin's certificate: an intercepting proxy would fail this.
    r = _via(proxy, f"https://de.zoom.us:{tls[DE].port}/", "--cacert", str(cert[0]))
    assert r.returncode == 0, r.stderr
    assert status_of(r) == 200
    assert body_json(r)["origin"] == DE
    [line] = proxy.decisions(1)
    assert (line["action"], line["host"], line["address"], line["connect_to"]) == \
        ("allow", "de.zoom.us", DE, DE)


def test_direct_address_connect_is_decided_by_address(start_proxy, tls, cert):
    proxy = start_proxy()
    before = tls[IN].connections
    blocked = _via(proxy, f"https://{IN}:{tls[IN].port}/", "--cacert", str(cert[0]))
    assert status_of(blocked) == 403 and "X-Regionguard-Region: IN" in blocked.stdout
    allowed = _via(proxy, f"https://{DE}:{tls[DE].port}/", "--cacert", str(cert[0]))
    assert status_of(allowed) == 200 and body_json(allowed)["origin"] == DE
    assert tls[IN].connections == before


def test_domain_fronting_sni_of_allowed_host_to_disallowed_address_is_blocked(start_proxy, tls, cert):
    """CONNECT to IN's address while the TLS SNI and Host name the allowed de.zoom.us."""
    proxy = start_proxy()
    port = tls[IN].port
    before = tls[IN].connections
    r = _via(proxy, f"https://de.zoom.us:{port}/", "--cacert", str(cert[0]),
             "--connect-to", f"de.zoom.us:{port}:{IN}:{port}")
    assert status_of(r) == 403
    assert "X-Regionguard-Region: IN" in r.stdout
    assert tls[IN].connections == before


# --- explicit proxy: plain HTTP -------------------------------------------------------------


def test_plain_http_block_allow_and_pinning(start_proxy, web):
    proxy = start_proxy()
    port = web[DE].port
    before = web[IN].connections
    blocked = _via(proxy, f"http://in.zoom.us:{port}/x")
    assert status_of(blocked) == 403
    assert "X-Regionguard-Rule: region-disallowed" in blocked.stdout
    assert "Blocked by regionguard" in blocked.stdout
    assert web[IN].connections == before
    allowed = _via(proxy, f"http://de.zoom.us:{port}/y")
    assert status_of(allowed) == 200
    body = body_json(allowed)
    assert body["origin"] == DE and body["host"] == f"de.zoom.us:{port}"   # Host unchanged
    direct = _via(proxy, f"http://{IN}:{port}/z")
    assert status_of(direct) == 403
    assert [(d["action"], d["address"]) for d in proxy.decisions(3)] == \
        [("block", IN), ("allow", DE), ("block", IN)]


def _absolute_form_get(proxy: Proxy, url: str) -> http.client.HTTPResponse:
    """`GET https://…` sent to the proxy as is (absolute form, no CONNECT), as some clients
    do; http.client puts the URL on the request line and its host in the Host header."""
    conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=30)
    conn.request("GET", url)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def test_absolute_form_https_request_is_blocked_with_the_403_page(start_proxy, tls, cert):
    # The proxy speaks TLS to the origin itself here: it must trust the test's certificate.
    proxy = start_proxy(None, "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}")
    before = tls[IN].connections
    blocked = _absolute_form_get(proxy, f"https://in.zoom.us:{tls[IN].port}/x")
    assert blocked.status == 403
    assert blocked.headers["X-Regionguard-Action"] == "block"
    assert blocked.headers["X-Regionguard-Host"] == "in.zoom.us"
    assert blocked.headers["X-Regionguard-Address"] == IN
    assert blocked.headers["X-Regionguard-Region"] == "IN"
    assert blocked.headers["X-Regionguard-Rule"] == "region-disallowed"
    assert tls[IN].connections == before          # the origin never saw a connection
    by_address = _absolute_form_get(proxy, f"https://{IN}:{tls[IN].port}/y")
    assert by_address.status == 403 and by_address.headers["X-Regionguard-Region"] == "IN"
    # Allowed: pinned to the checked address, with the name as TLS server name (the origin's
    # certificate is checked against it) and in the Host header.
    allowed = _absolute_form_get(proxy, f"https://de.zoom.us:{tls[DE].port}/z")
    assert allowed.status == 200
    assert tls[IN].connections == before
    assert [(d["action"], d["host"], d["address"], d["hook"]) for d in proxy.decisions(3)] == [
        ("block", "in.zoom.us", IN, "requestheaders"), ("block", None, IN, "requestheaders"),
        ("allow", "de.zoom.us", DE, "requestheaders")]


def test_non_zoom_traffic_passes_untouched_and_is_not_audited(start_proxy, web):
    proxy = start_proxy()
    r = _via(proxy, f"http://plain.example:{web[OTHER].port}/")
    assert status_of(r) == 200 and body_json(r)["origin"] == OTHER
    # Lines are written in order: once the Zoom request's line is there, a line for the
    # request before it would be too.
    assert status_of(_via(proxy, f"http://in.zoom.us:{web[IN].port}/")) == 403
    assert [d["host"] for d in proxy.decisions(1)] == ["in.zoom.us"]


def test_unresolvable_zoom_name_fails_closed(start_proxy, web):
    proxy = start_proxy()
    r = _via(proxy, f"http://nowhere.zoom.us:{web[DE].port}/")
    assert status_of(r) == 403
    assert "X-Regionguard-Rule: resolve-failed" in r.stdout


# --- reroute and monitor --------------------------------------------------------------------


def test_reroute_lands_on_the_allowed_address_of_the_same_name(start_proxy, tls, web, cert):
    proxy = start_proxy(policy_text("reroute"))
    r = _via(proxy, f"https://mixed.zoom.us:{tls[DE].port}/", "--cacert", str(cert[0]))
    assert status_of(r) == 200 and body_json(r)["origin"] == DE     # SNI/cert unchanged
    h = _via(proxy, f"http://mixed.zoom.us:{web[DE].port}/")
    assert status_of(h) == 200 and body_json(h)["host"] == f"mixed.zoom.us:{web[DE].port}"
    lines = proxy.decisions(2)
    assert [(d["action"], d["address"], d["connect_to"], d["rerouted_to"]) for d in lines] == \
        [("reroute", IN, DE, f"mixed.zoom.us {DE}")] * 2


def test_reroute_to_the_alternative_the_policy_names_else_block(start_proxy, web, tls, cert):
    extra = 'reroute:\n  - {match: "in.zoom.us", to: de.zoom.us}\n'
    proxy = start_proxy(policy_text("reroute", extra))
    before = web[IN].connections
    r = _via(proxy, f"http://in.zoom.us:{web[DE].port}/")
    assert status_of(r) == 200
    assert body_json(r) == {"origin": DE, "host": f"in.zoom.us:{web[DE].port}", "path": "/"}
    # A bare address has no name to reroute by: blocked.
    b = _via(proxy, f"https://{IN}:{tls[IN].port}/", "--cacert", str(cert[0]))
    assert status_of(b) == 403
    assert web[IN].connections == before
    actions = [(d["action"], d.get("rerouted_to")) for d in proxy.decisions(2)]
    assert actions == [("reroute", f"de.zoom.us {DE}"), ("block", None)]


def test_monitor_allows_and_records_would_block(start_proxy, web):
    proxy = start_proxy(policy_text("monitor"))
    r = _via(proxy, f"http://in.zoom.us:{web[IN].port}/")
    assert status_of(r) == 200 and body_json(r)["origin"] == IN
    [line] = proxy.decisions(1)
    assert (line["action"], line["would"], line["region"]) == ("monitor", "block", "IN")


# --- IPv6, SOCKS5, bare mitmdump ------------------------------------------------------------


def test_ipv6_loopback_proxy_and_origin(start_proxy, tls, cert):
    proxy = start_proxy(None, listen_host="::1")
    by_name = _via(proxy, f"https://v6.zoom.us:{tls['::1'].port}/", "--cacert", str(cert[0]))
    assert status_of(by_name) == 200 and body_json(by_name)["origin"] == "::1"
    by_address = _via(proxy, f"https://[::1]:{tls['::1'].port}/", "--cacert", str(cert[0]))
    assert status_of(by_address) == 200
    lines = proxy.decisions(2)
    assert [(d["address"], d["region"], d["client"]) for d in lines] == [("::1", "DE", "::1")] * 2


def test_socks5_mode_decides_by_address_even_when_sni_names_an_allowed_host(start_proxy, tls, cert):
    proxy = start_proxy(None, "--mode", "socks5")
    port = tls[IN].port
    before = tls[IN].connections
    socks = f"socks5://127.0.0.1:{proxy.port}"
    fronted = curl("--proxy", socks, "--resolve", f"de.zoom.us:{port}:{IN}", "--cacert",
                   str(cert[0]), f"https://de.zoom.us:{port}/")
    assert fronted.returncode != 0
    assert tls[IN].connections == before
    ok = curl("--proxy", f"socks5h://127.0.0.1:{proxy.port}", "--cacert", str(cert[0]),
              f"https://de.zoom.us:{port}/")
    assert status_of(ok) == 200 and body_json(ok)["origin"] == DE
    lines = proxy.decisions(2)
    assert [(d["action"], d["address"], d["hook"], d["mode"]) for d in lines] == \
        [("block", IN, "server_connect", "socks5"), ("allow", DE, "server_connect", "socks5")]


def test_bare_mitmdump_with_the_addon_script(start_proxy, web):
    proxy = start_proxy(None, command="mitmdump")
    assert status_of(_via(proxy, f"http://in.zoom.us:{web[IN].port}/")) == 403
    assert status_of(_via(proxy, f"http://de.zoom.us:{web[DE].port}/")) == 200
    assert [d["action"] for d in proxy.decisions(2)] == ["block", "allow"]


# --- audit, reload, options -----------------------------------------------------------------


def test_audit_log_has_one_line_per_decision_with_its_fields(start_proxy, web, tls, cert):
    proxy = start_proxy()
    version = load_policy(proxy.policy).version_id
    started = datetime.datetime.now(datetime.UTC)
    hp, tp = web[DE].port, tls[DE].port
    # (url, expected: host, address, port, action, rule, region, connect_to, hook, zoom_why)
    cases = [
        (f"http://de.zoom.us:{hp}/", "de.zoom.us", DE, hp, "allow", "region-allowed", "DE", DE,
         "requestheaders", "domain zoom.us"),
        (f"http://in.zoom.us:{hp}/", "in.zoom.us", IN, hp, "block", "region-disallowed", "IN",
         None, "requestheaders", "domain zoom.us"),
        (f"https://de.zoom.us:{tp}/", "de.zoom.us", DE, tp, "allow", "region-allowed", "DE", DE,
         "http_connect", "domain zoom.us"),
        (f"https://in.zoom.us:{tp}/", "in.zoom.us", IN, tp, "block", "region-disallowed", "IN",
         None, "http_connect", "domain zoom.us"),
        (f"http://{IN}:{hp}/", None, IN, hp, "block", "region-disallowed", "IN", None,
         "requestheaders", "override: zoom: true"),
    ]
    for case in cases:
        _via(proxy, case[0], "--cacert", str(cert[0]))
    lines = proxy.decisions(len(cases))
    assert len(lines) == len(cases)
    for line, (_, host, address, port, action, rule, region, connect_to, hook, zoom_why) \
            in zip(lines, cases, strict=True):
        when = datetime.datetime.fromisoformat(line.pop("time"))
        assert started - datetime.timedelta(seconds=1) <= when <= datetime.datetime.now(datetime.UTC)
        net = "127.0.1.0/24" if region == "DE" else "127.0.2.0/24"
        reason = ("DE is allowed; DE (DE)" if region == "DE"
                  else "IN is not in the allowed set (DE, US); IN (IN)")
        assert line == {
            "front_end": "mitmproxy", "mode": "regular", "action": action, "rule": rule,
            "reason": f"{reason} [override: overrides in {proxy.policy.name} {net}]",
            "would": None, "zoom": True, "zoom_why": zoom_why, "service": "unknown-service",
            "scope": "governed", "region": region, "country": region, "group": "default",
            "host": host, "address": address, "port": port, "transport": "tcp",
            "client": "127.0.0.1", "policy_version": version, "evidence_source": "override",
            "evidence_dataset": f"overrides in {proxy.policy.name}", "evidence_date": None,
            "evidence_matched": net, "conflict": False, "hook": hook, "connect_to": connect_to,
        }, line


def test_queued_audit_lines_are_written_when_the_proxy_stops(start_proxy, web):
    """Lines are written from a thread every regionguard_audit_flush_ms; stopping (SIGTERM, as
    a service manager does) writes what is queued."""
    proxy = start_proxy(None, "--set", "regionguard_audit_flush_ms=60000")
    assert status_of(_via(proxy, f"http://in.zoom.us:{web[IN].port}/")) == 403
    assert status_of(_via(proxy, f"http://de.zoom.us:{web[DE].port}/")) == 200
    assert proxy.audit_lines(0) == []               # still queued: the interval is a minute
    proxy.stop()
    assert [(d["action"], d["host"]) for d in proxy.decisions(0)] == \
        [("block", "in.zoom.us"), ("allow", "de.zoom.us")]


def test_policy_reloads_on_change_and_an_invalid_file_keeps_the_old_one(start_proxy, web):
    proxy = start_proxy()
    url = f"http://in.zoom.us:{web[IN].port}/"
    assert status_of(_via(proxy, url)) == 403
    old_version = proxy.decisions(1)[0]["policy_version"]
    proxy.policy.write_text(policy_text().replace("opt_in: [US, DE]", "opt_in: [US, DE, IN]"))
    proxy.wait_for_audit(lambda r: r.get("event") == "policy-reload" and r["ok"])
    assert status_of(_via(proxy, url)) == 200
    proxy.policy.write_text(policy_text().replace("opt_in: [US, DE]", "opt_in: [US, Atlantis]"))
    lines = proxy.wait_for_audit(lambda r: r.get("event") == "policy-reload" and not r["ok"])
    error = next(r for r in lines if r.get("event") == "policy-reload" and not r["ok"])["error"]
    assert str(proxy.policy) in error and "regions.opt_in" in error and "Atlantis" in error
    assert "not reloaded" in proxy.output() or "Atlantis" in proxy.output()
    assert status_of(_via(proxy, url)) == 200          # the last valid policy stays in force
    versions = [d["policy_version"] for d in proxy.decisions(3)]
    assert versions[0] == old_version and versions[1] == versions[2] != old_version


def test_invalid_policy_is_a_clear_error_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\naccount: {type: paid, default_region: Mars}\n")
    r = subprocess.run([str(BIN / "regionguard"), "run", "--policy", str(bad)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert f"{bad}:2: account.default_region: unknown region 'Mars'" in r.stderr
    assert "fix:" in r.stderr and "Traceback" not in r.stderr


# --- PAC ------------------------------------------------------------------------------------


def test_proxy_serves_a_pac_file_for_zoom_domains_only(start_proxy, web):
    proxy = start_proxy()
    r = curl(f"{proxy.url}/proxy.pac")
    assert status_of(r) == 200
    assert "application/x-ns-proxy-autoconfig" in r.stdout
    assert f'"PROXY 127.0.0.1:{proxy.port}"' in r.stdout
    assert '"zoom.us"' in r.stdout and 'return "DIRECT"' in r.stdout
    # Serving the PAC file is no decision: the first line is the Zoom request's after it.
    assert status_of(_via(proxy, f"http://in.zoom.us:{web[IN].port}/")) == 403
    assert [d["host"] for d in proxy.decisions(1)] == ["in.zoom.us"]


def test_pac_command_writes_the_file(tmp_path):
    out = tmp_path / "zoom.pac"
    r = subprocess.run([str(BIN / "regionguard"), "pac", "--proxy", "10.1.2.3:3128", "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert '"PROXY 10.1.2.3:3128"' in text and "FindProxyForURL" in text
    assert '"170.114.0.0", "255.255.0.0"' in text       # a Zoom range, for bare-address hosts
    bad = subprocess.run([str(BIN / "regionguard"), "pac", "--proxy", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "is not HOST:PORT" in bad.stderr


# --- the DNS front end beside the proxy -----------------------------------------------------


def test_run_with_dns_starts_a_filtering_dns_server_and_stops_it(start_proxy):
    """`--dns` runs `regionguard dns` beside the proxy with the policy's own name servers as its
    upstream (here a zone server on loopback): it answers, filtered by the policy, into its own
    audit log and, with --dns-metrics, its own metrics endpoint; when the proxy stops, so does
    it, and its port is free again."""
    import dns.exception
    import dns.rcode

    from tests.dns_support import POLICY as DNS_POLICY
    from tests.dns_support import ZoneServer, addresses, ask

    zone = ZoneServer()
    try:
        dns_port, metrics_port = free_port(), free_port()
        text = DNS_POLICY + f'resolver: {{nameservers: ["127.0.0.1:{zone.port}"], timeout: 2}}\n'
        proxy = start_proxy(text, "--dns", f"127.0.0.1:{dns_port}",
                            "--dns-metrics", f"127.0.0.1:{metrics_port}")
        allowed = ask(dns_port, "de.zoom.us")                  # DE: in the allowed set
        assert allowed.rcode() == dns.rcode.NOERROR and addresses(allowed) == {"198.51.100.10"}
        blocked = ask(dns_port, "in.zoom.us")                  # IN: filtered out
        assert blocked.rcode() == dns.rcode.NXDOMAIN and not blocked.answer
        assert zone.count("in.zoom.us") >= 1                   # the upstream was asked: filtered
        dns_audit = proxy.audit.with_name(proxy.audit.stem + ".dns.jsonl")
        deadline, found = time.monotonic() + 30, []
        while not found and time.monotonic() < deadline:   # written by a thread: bounded wait
            text = dns_audit.read_text() if dns_audit.exists() else ""
            whole = text[:text.rfind("\n") + 1].splitlines()      # whole lines only
            found = [json.loads(x) for x in whole if '"in.zoom.us"' in x]
            time.sleep(0.1)
        [line] = [x for x in found if x.get("dns_qname") == "in.zoom.us"]
        assert (line["front_end"], line["action"], line["region"], line["dns_dropped"]) == \
            ("dns", "block", "IN", ["100.70.0.10"])
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        [queries] = [line for line in scraped.splitlines()
                     if line.startswith("regionguard_dns_queries_total")]
        assert float(queries.split()[-1]) >= 2                  # the DNS child's own counters
        proxy.stop()
        # Stopped with the proxy: nothing answers, and the port can be bound again.
        with pytest.raises(dns.exception.Timeout):
            ask(dns_port, "de.zoom.us", timeout=2)
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", dns_port))              # OSError if the child still holds it
    finally:
        zone.close()


def test_keep_alive_connection_decides_each_destination_once(start_proxy, web):
    proxy = start_proxy()
    port = web[DE].port
    # One curl invocation: the proxy connection is reused for all three requests.
    r = curl("-x", proxy.url, f"http://de.zoom.us:{port}/1", f"http://de.zoom.us:{port}/2",
             f"http://in.zoom.us:{port}/3")
    assert [int(c) for c in re.findall(r"HTTP/1.1 (\d{3}) ", r.stdout)] == [200, 200, 403]
    assert [(d["action"], d["host"]) for d in proxy.decisions(2)] == \
        [("allow", "de.zoom.us"), ("block", "in.zoom.us")]


@pytest.mark.parametrize("flush_ms", ["250", "0"])   # queued for the writer thread; written at once
def test_an_unwritable_audit_log_never_opens_the_gate(start_proxy, web, tmp_path, flush_ms):
    # unwritable once running (unwritable at start-up, it stops the proxy: tests/test_audit.py)
    blocker = tmp_path / "not-a-directory"
    proxy = start_proxy(None, "--set", f"regionguard_audit={blocker / 'audit.jsonl'}",
                        "--set", f"regionguard_audit_flush_ms={flush_ms}", audit=False)
    shutil.rmtree(blocker)
    blocker.write_text("")
    assert status_of(_via(proxy, f"http://in.zoom.us:{web[IN].port}/")) == 403
    assert status_of(_via(proxy, f"http://de.zoom.us:{web[DE].port}/")) == 200
    proxy.wait_for_output("cannot write audit log")
    assert status_of(_via(proxy, f"http://in.zoom.us:{web[IN].port}/")) == 403


def test_upstream_mode_pins_the_connect_it_forwards(start_proxy, web, tls, cert):
    upstream = start_proxy(None, command="bare")
    proxy = start_proxy(None, "--mode", f"upstream:http://127.0.0.1:{upstream.port}")
    before = tls[IN].connections
    blocked = _via(proxy, f"https://in.zoom.us:{tls[IN].port}/", "--cacert", str(cert[0]))
    assert status_of(blocked) == 403 and tls[IN].connections == before
    ok = _via(proxy, f"https://de.zoom.us:{tls[DE].port}/", "--cacert", str(cert[0]))
    assert status_of(ok) == 200 and body_json(ok)["origin"] == DE
    plain = _via(proxy, f"http://de.zoom.us:{web[DE].port}/")
    assert status_of(plain) == 200 and body_json(plain)["host"] == f"de.zoom.us:{web[DE].port}"
    # The upstream proxy was asked for the checked address (a name would fail: it cannot
    # resolve the lab's names), and connected there.
    assert f"server connect {DE}:{tls[DE].port}" in upstream.output()
    assert f"server connect {DE}:{web[DE].port}" in upstream.output()
    assert [(d["action"], d["mode"]) for d in proxy.decisions(3)] == \
        [("block", "upstream"), ("allow", "upstream"), ("allow", "upstream")]


def test_upstream_mode_sends_absolute_form_https_as_a_connect_to_the_checked_address(
        start_proxy, tls, cert):
    """`GET https://de.zoom.us/…` in absolute form, through upstream mode with the origin's
    certificate verified: the upstream proxy gets a CONNECT to the checked address (it cannot
    resolve the lab's names; a name would give 502 or land anywhere), while the TLS server
    name and the Host header stay the name. A disallowed one never leaves the proxy."""
    upstream = start_proxy(None, command="bare")
    proxy = start_proxy(None, "--mode", f"upstream:http://127.0.0.1:{upstream.port}",
                        "--set", f"ssl_verify_upstream_trusted_ca={cert[0]}")
    port = tls[DE].port
    names_before = len(tls[DE].server_names)
    allowed = _absolute_form_get(proxy, f"https://de.zoom.us:{port}/pinned")
    assert allowed.status == 200, proxy.output() + upstream.output()
    assert f"server connect {DE}:{port}" in upstream.output()
    assert tls[DE].server_names[names_before:] == ["de.zoom.us"]           # SNI kept
    assert tls[DE].requests[-1] == {"path": "/pinned", "host": f"de.zoom.us:{port}"}  # Host kept
    before = tls[IN].connections
    blocked = _absolute_form_get(proxy, f"https://in.zoom.us:{tls[IN].port}/x")
    assert blocked.status == 403 and blocked.headers["X-Regionguard-Region"] == "IN"
    assert tls[IN].connections == before
    assert "in.zoom.us" not in upstream.output()
    assert [(d["action"], d["host"], d["connect_to"]) for d in proxy.decisions(2)] == \
        [("allow", "de.zoom.us", DE), ("block", "in.zoom.us", None)]


# --- per-client groups through the explicit proxy ---------------------------------------------

GROUPS = """groups:
  - {name: india-office, clients: [127.0.0.2/32], regions: {opt_in: [IN]}}
"""


def test_client_groups_decide_each_clients_connections_by_its_own_policy(start_proxy, web, tls, cert):
    """One destination, two clients: the default group (127.0.0.1) may use DE but not IN; the
    india-office group (127.0.0.2) may use IN (and US, the default region) but not DE. Both
    plain HTTP and CONNECT; a blocked origin never sees a connection."""
    proxy = start_proxy(policy_text(extra=GROUPS))
    hp, tp = web[DE].port, tls[DE].port
    before = {a: (web[a].connections, tls[a].connections) for a in (DE, IN)}
    results = {}
    for client in ("127.0.0.1", "127.0.0.2"):
        for name in ("de.zoom.us", "in.zoom.us"):
            plain = _via(proxy, f"http://{name}:{hp}/", "--interface", client)
            connect = _via(proxy, f"https://{name}:{tp}/", "--interface", client,
                           "--cacert", str(cert[0]))
            results[client, name] = (status_of(plain), status_of(connect))
            if status_of(plain) == 200:
                assert body_json(plain)["origin"] == body_json(connect)["origin"] == \
                    (DE if name.startswith("de") else IN)
    assert results == {
        ("127.0.0.1", "de.zoom.us"): (200, 200), ("127.0.0.1", "in.zoom.us"): (403, 403),
        ("127.0.0.2", "de.zoom.us"): (403, 403), ("127.0.0.2", "in.zoom.us"): (200, 200)}
    # Each origin saw exactly the two connections of the client allowed to reach it.
    assert web[DE].connections - before[DE][0] == 1 and tls[DE].connections - before[DE][1] == 1
    assert web[IN].connections - before[IN][0] == 1 and tls[IN].connections - before[IN][1] == 1
    lines = proxy.decisions(8)
    assert [(d["client"], d["host"], d["group"], d["action"], d["hook"]) for d in lines] == [
        ("127.0.0.1", "de.zoom.us", "default", "allow", "requestheaders"),
        ("127.0.0.1", "de.zoom.us", "default", "allow", "http_connect"),
        ("127.0.0.1", "in.zoom.us", "default", "block", "requestheaders"),
        ("127.0.0.1", "in.zoom.us", "default", "block", "http_connect"),
        ("127.0.0.2", "de.zoom.us", "india-office", "block", "requestheaders"),
        ("127.0.0.2", "de.zoom.us", "india-office", "block", "http_connect"),
        ("127.0.0.2", "in.zoom.us", "india-office", "allow", "requestheaders"),
        ("127.0.0.2", "in.zoom.us", "india-office", "allow", "http_connect")]


# --- TLS interception, as regionguard_intercept chooses ----------------------------------------


@pytest.fixture
def other_tls(tmp_path):
    """An HTTPS origin for the non-Zoom name plain.example, with its own certificate."""
    d = tmp_path / "other-cert"
    d.mkdir()
    pem = make_cert(d, ["plain.example"], [OTHER])
    origin = origins_on_one_port([OTHER], tls=pem)[OTHER]
    yield origin, pem[0]
    origin.stop()


@pytest.mark.parametrize(("intercept", "zoom_intercepted", "other_intercepted"), [
    ("none", False, False), ("non-zoom", False, True), ("all", True, True)])
def test_tls_is_intercepted_as_regionguard_intercept_chooses(start_proxy, tls, cert, other_tls,
                                                             tmp_path, intercept,
                                                             zoom_intercepted, other_intercepted):
    """Intercepted or not, seen from the client: trusting only the origin's own certificate
    works when the proxy passes TLS through, and fails when the proxy presents its own."""
    other, other_pem = other_tls
    bundle = tmp_path / "origins.pem"           # the proxy, intercepting, checks both origins
    bundle.write_bytes(cert[0].read_bytes() + other_pem.read_bytes())
    proxy = start_proxy(None, "--set", f"regionguard_intercept={intercept}",
                        "--set", f"ssl_verify_upstream_trusted_ca={bundle}")
    mitm_ca = tmp_path / "mitmproxy-conf" / "mitmproxy-ca-cert.pem"
    zoom_url = f"https://de.zoom.us:{tls[DE].port}/"
    other_url = f"https://plain.example:{other.port}/"

    def passed_through(url: str, origin_pem) -> bool:
        r = _via(proxy, url, "--cacert", str(origin_pem))
        if r.returncode == 0:
            assert status_of(r) == 200, r.stdout
            return True
        assert "SSL certificate problem" in r.stderr, r.stderr   # the proxy's certificate
        return False

    assert passed_through(zoom_url, cert[0]) is not zoom_intercepted
    assert passed_through(other_url, other_pem) is not other_intercepted
    if zoom_intercepted:      # the proxy's own certificate: a client that trusts its CA gets through
        assert status_of(_via(proxy, zoom_url, "--cacert", str(mitm_ca))) == 200
    if other_intercepted:
        r = _via(proxy, other_url, "--cacert", str(mitm_ca))
        assert r.returncode == 0 and body_json(r)["origin"] == OTHER
    # Whatever is intercepted, the Zoom decision is the same and still audited.
    blocked = _via(proxy, f"https://in.zoom.us:{tls[IN].port}/", "--cacert", str(cert[0]))
    assert status_of(blocked) == 403
    expected = [("de.zoom.us", "allow")] * (2 if zoom_intercepted else 1) + [("in.zoom.us", "block")]
    assert [(d["host"], d["action"]) for d in proxy.decisions(len(expected))] == expected
