"""Scope (issue 11 §1): the allowed regions hold only the traffic Zoom's region setting governs
(zone controllers, multimedia routers, media, relays, tunnels, CRC, and anything unrecognised);
web, login, logging, CDN and push are allowed and audited unless `scope.other` says otherwise.
Zoom's hard rules hold for every class. Driven through the engine, the CLI, `regionguard run`
with curl, and `regionguard dns` with dnspython."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest

from regionguard import Action, Engine, load_policy
from regionguard.core.errors import PolicyError
from regionguard.core.zoom import ZoomCatalogue
from regionguard.dns.filter import AnswerFilter
from tests.conftest import BIN, CONFIG, free_port

RG = str(BIN / "regionguard")
UNPLACED = "170.114.52.2"        # in Zoom's ranges; no trusted source places it (zoom.us lives here)
US_MEETING = "206.247.11.121"    # labelled US by Zoom
DE_MEETING = "159.124.47.249"    # labelled DE by Zoom
CN_MEETING = "221.122.88.195"    # labelled CN


@pytest.fixture(scope="module")
def eu():
    return Engine(load_policy(CONFIG / "examples" / "eu-only.yaml"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RG, *args], capture_output=True, text=True, timeout=120)


# --- the classes of a real desktop client's connections ------------------------------------

CLIENT_CONNECTIONS = [
    # (what, host, port, transport, class, scope)
    ("zone controller", "zoomfr12zc.zoom.us", 443, "tcp", "zone-controller", "governed"),
    ("zone controller", "zoomam104zc.zoom.us", 443, "tcp", "zone-controller", "governed"),
    ("multimedia router, TLS", "zoomsjcbb24mmr.sjc.zoom.us", 443, "tcp", "tunnel", "governed"),
    ("multimedia router, TLS", "zoomfrc123mmr.zoom.us", 443, "tcp", "tunnel", "governed"),
    ("multimedia router, media", "zoomfrc123mmr.zoom.us", 8801, "udp", "meeting", "governed"),
    ("multimedia router, media", "zoomdvm156mmr.zoom.us", 8801, "tcp", "meeting", "governed"),
    ("media by address", None, 8805, "udp", "meeting", "governed"),
    ("STUN/TURN relay", None, 3478, "udp", "relay", "governed"),
    ("STUN/TURN relay", None, 3479, "tcp", "relay", "governed"),
    ("meeting server at a site", "edge7.ams.zoom.us", 443, "tcp", "tunnel", "governed"),
    ("HTTPS to a Zoom address", None, 443, "tcp", "tunnel", "governed"),
    ("CRC", "123456789.zoomcrc.com", 443, "tcp", "crc", "governed"),
    ("H.323", None, 1720, "tcp", "crc", "governed"),
    ("web", "zoom.us", 443, "tcp", "web", "other"),
    ("web", "www3.zoom.us", 443, "tcp", "web", "other"),
    ("web client", "us05web.zoom.us", 443, "tcp", "web", "other"),
    ("REST API", "api.zoom.us", 443, "tcp", "web", "other"),
    ("marketplace", "marketplace.zoom.us", 443, "tcp", "web", "other"),
    ("web over HTTP/3", "zoom.us", 443, "udp", "web", "other"),
    ("client logging", "log.zoom.us", 443, "tcp", "logging", "other"),
    ("client logging", "logfiles.zoom.us", 443, "tcp", "logging", "other"),
    ("client logging", "us04logfiles.zoom.us", 443, "tcp", "logging", "other"),
    ("CDN", "st1.zoom.us", 443, "tcp", "cdn", "other"),
    ("CDN", "st3.zoom.us", 443, "tcp", "cdn", "other"),
    ("CDN", "us02st1.zoom.us", 443, "tcp", "cdn", "other"),
    ("CDN", "source.zoom.us", 443, "tcp", "cdn", "other"),
    ("push web socket", "us02zpns.zoom.us", 443, "tcp", "push", "other"),
    # what no rule recognises stays held
    ("unknown port", None, 8001, "tcp", "unknown-service", "governed"),
    ("unknown Zoom name", "newthing.zoom.us", 443, "tcp", "unknown-service", "governed"),
    ("web name, odd port", "zoom.us", 8443, "tcp", "unknown-service", "governed"),
    ("look-alike name", "zoom.us.evil.example", 443, "tcp", "unknown-service", "governed"),
    ("look-alike name", "log.zoom.us.evil.example", 443, "tcp", "unknown-service", "governed"),
]


@pytest.mark.parametrize("what,host,port,transport,service,scope", CLIENT_CONNECTIONS,
                         ids=[f"{c[0]}:{c[1]}:{c[2]}/{c[3]}" for c in CLIENT_CONNECTIONS])
def test_each_kind_of_client_connection_lands_in_its_class(eu, what, host, port, transport,
                                                           service, scope):
    d = eu.decide("10.0.0.1", host, UNPLACED, port, transport)
    assert (d.service, d.scope) == (service, scope), what
    if scope == "governed":   # unplaced: held to the policy, so blocked as unknown
        assert (d.action, d.rule) == (Action.BLOCK, "unknown-region")
    else:
        assert (d.action, d.rule) == (Action.ALLOW, "out-of-scope")


def test_the_cdn_ranges_are_cdn_by_address():
    engine = Engine(load_policy(CONFIG / "examples" / "eu-only.yaml"))
    d = engine.decide(None, None, "52.84.151.10", 443)
    assert (d.service, d.scope, d.action) == ("cdn", "other", Action.ALLOW)


def test_a_meeting_server_of_a_disallowed_region_is_still_blocked(eu):
    d = eu.decide(None, "zoomsjcbb24mmr.sjc.zoom.us", US_MEETING, 8801, "udp")
    assert (d.action, d.rule, d.scope) == (Action.BLOCK, "region-disallowed", "governed")
    # ... and web to the same disallowed-region address is allowed, audited out of scope
    d = eu.decide(None, "zoom.us", US_MEETING, 443)
    assert (d.action, d.rule, d.scope, d.region) == (Action.ALLOW, "out-of-scope", "other", "US")
    assert "scope.other: allow" in d.reason


# --- scope.other: monitor | block, scope.governed -------------------------------------------

def _engine(write_policy, scope: str, client: str = "outside-china") -> Engine:
    return Engine(load_policy(write_policy(f"""
        version: 1
        account: {{type: paid, default_region: DE}}
        regions: {{opt_in: [Europe]}}
        client: {{location: {client}}}
        actions: {{disallowed: block, unknown: block}}
        scope: {scope}
    """)))


def test_other_monitor_lets_through_and_records_what_the_region_rules_would_do(write_policy):
    engine = _engine(write_policy, "{other: monitor}")
    d = engine.decide(None, "zoom.us", US_MEETING, 443)
    assert (d.action, d.would, d.rule, d.scope) == (Action.MONITOR, Action.BLOCK,
                                                    "region-disallowed", "other")
    assert "scope.other: monitor" in d.reason
    d = engine.decide(None, "zoom.us", DE_MEETING, 443)          # in region: plainly allowed
    assert (d.action, d.rule, d.scope) == (Action.ALLOW, "region-allowed", "other")
    d = engine.decide(None, "zoomfr12zc.zoom.us", US_MEETING, 443)   # governed: enforced
    assert (d.action, d.scope) == (Action.BLOCK, "governed")


def test_other_block_blocks_zoom_traffic_outside_the_governed_scope(write_policy):
    engine = _engine(write_policy, "{other: block}")
    d = engine.decide(None, "log.zoom.us", DE_MEETING, 443)
    assert (d.action, d.rule, d.scope) == (Action.BLOCK, "out-of-scope", "other")
    assert engine.decide(None, "zoomam104zc.zoom.us", DE_MEETING, 443).action == Action.ALLOW


def test_governed_lists_the_classes_held(write_policy):
    engine = _engine(write_policy, "{governed: [meeting, web]}")
    assert engine.decide(None, "zoom.us", US_MEETING, 443).rule == "region-disallowed"
    d = engine.decide(None, "zoomfr12zc.zoom.us", US_MEETING, 443)
    assert (d.action, d.scope) == (Action.ALLOW, "other")


def test_groups_inherit_scope_and_may_change_it(write_policy):
    policy = load_policy(write_policy("""
        version: 1
        account: {type: paid, default_region: DE}
        regions: {opt_in: [Europe]}
        scope: {other: block}
        groups:
          - {name: lab, clients: [10.9.0.0/16], scope: {other: allow}}
          - {name: desk, clients: [10.8.0.0/16]}
    """))
    engine = Engine(policy)
    assert engine.decide("10.9.0.1", "zoom.us", US_MEETING, 443).action == Action.ALLOW
    assert engine.decide("10.8.0.1", "zoom.us", US_MEETING, 443).action == Action.BLOCK
    assert engine.decide("10.7.0.1", "zoom.us", US_MEETING, 443).action == Action.BLOCK


# --- the hard rules stay above scope ---------------------------------------------------------

def test_outside_china_never_reaches_cn_whatever_the_service(write_policy):
    engine = _engine(write_policy, "{other: allow}")
    for host in ("zoom.us", "log.zoom.us", "st1.zoom.us"):
        d = engine.decide(None, host, CN_MEETING, 443)
        assert (d.action, d.rule, d.scope) == (Action.BLOCK, "outside-china-never-cn", "other"), host


def test_china_tunnel_servers_stay_blocked_for_clients_in_china():
    engine = Engine(load_policy(CONFIG / "examples" / "china-office.yaml"))
    for host in ("zoomsh1mmr.zoom.us", "zoomsh12zc.zoom.us", None):
        d = engine.decide("10.20.1.5", host, CN_MEETING, 443)
        assert (d.action, d.rule) == (Action.BLOCK, "cn-tunnel-removed"), host
    # web to CN from the Shanghai office is its allowed region
    d = engine.decide("10.20.1.5", "zoom.us", CN_MEETING, 443)
    assert d.action == Action.ALLOW and d.scope == "other"


# --- policy files ----------------------------------------------------------------------------

OLD = """\
version: 1
name: old-eu
account: {type: paid, default_region: DE}
regions: {opt_in: [Europe]}
actions: {disallowed: block, unknown: block, exempt_services: [cdn]}
"""


def test_exempt_services_is_rejected_with_both_exact_rewrites(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(OLD)
    r = run("validate", str(old))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{old}:5: actions.exempt_services" in r.stderr
    assert "delete exempt_services" in r.stderr
    rewrite = r.stderr.split("write `", 1)[1].split("`", 1)[0]
    assert rewrite.startswith("scope: {governed: [")
    # the first rewrite: the new default
    new = tmp_path / "new.yaml"
    new.write_text(OLD.replace(", exempt_services: [cdn]", ""))
    # the second, pasted as printed: the old meaning, everything but cdn held
    same = tmp_path / "same.yaml"
    same.write_text(OLD.replace(", exempt_services: [cdn]", "") + rewrite + "\n")
    assert run("validate", str(new)).returncode == 0
    assert run("validate", str(same)).returncode == 0
    kept = Engine(load_policy(same))
    d = kept.decide(None, "zoom.us", UNPLACED, 443)
    assert (d.action, d.rule, d.scope) == (Action.BLOCK, "unknown-region", "governed")
    assert kept.decide(None, None, "52.84.151.10", 443).action == Action.ALLOW   # cdn, as before
    assert Engine(load_policy(new)).decide(None, "zoom.us", UNPLACED, 443).action == Action.ALLOW


def test_bad_scope_values_name_the_field_and_fix(write_policy):
    path = write_policy("""
        version: 1
        account: {type: paid, default_region: DE}
        scope: {governed: [meeting, webb], other: alow, extra: 1}
    """)
    with pytest.raises(PolicyError) as e:
        load_policy(path)
    text = str(e.value)
    assert "scope.governed[1]: 'webb' is not a valid value" in text and "'web'" in text
    assert "scope.other: 'alow' is not a valid value" in text and "'allow'" in text
    assert "scope.extra: unknown key" in text


def test_validate_prints_the_scope_and_shipped_policies_explain_it():
    r = run("validate", str(CONFIG / "examples" / "eu-only.yaml"),
            str(CONFIG / "examples" / "china-office.yaml"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("scope: governed zone-controller meeting relay tunnel crc "
                          "unknown-service; other Zoom traffic (web logging cdn push phone): "
                          "allow") == 2
    for path in [CONFIG / "policy.yaml", *sorted((CONFIG / "examples").glob("*.yaml"))]:
        text = path.read_text()
        assert "scope:" in text and "exempt_services" not in text, path


# --- explain ----------------------------------------------------------------------------------

def test_explain_says_the_scope(tmp_path):
    eu = str(CONFIG / "examples" / "eu-only.yaml")
    r = run("explain", UNPLACED, "--host", "www3.zoom.us", "--policy", eu, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["addresses"][0]["scope"] == "other"
    assert out["addresses"][0]["service"] == "web"
    assert (out["decision"]["action"], out["decision"]["rule"],
            out["decision"]["scope"]) == ("allow", "out-of-scope", "other")
    r = run("explain", UNPLACED, "--host", "zoomfr12zc.zoom.us", "--policy", eu)
    assert r.returncode == 1
    assert "service zone-controller scope governed" in r.stdout


# --- zoom.yaml is checked ---------------------------------------------------------------------

@pytest.mark.parametrize("rule,message", [
    ("{service: web, match: '(www)\\.zoom\\.us'}", "capturing group"),
    ("{service: webby, match: 'x\\.zoom\\.us'}", "not in `services:`"),
])
def test_a_bad_name_rule_in_zoom_yaml_is_refused(tmp_path, rule, message):
    (tmp_path / "data").symlink_to(CONFIG / "data")
    text = (CONFIG / "zoom.yaml").read_text().replace("names:\n", f"names:\n  - {rule}\n", 1)
    (tmp_path / "zoom.yaml").write_text(text)
    with pytest.raises(ValueError, match=message):
        ZoomCatalogue.load(tmp_path)


# --- the DNS filter's decision cache keys on the name's class ----------------------------------

def test_dns_decision_cache_tells_web_names_from_meeting_names(eu):
    answers = AnswerFilter(eu)
    seen = []
    for host in ("zoom.us", "newthing.zoom.us", "www3.zoom.us", "zoomfr12zc.zoom.us",
                 "api.zoom.us", "other.zoom.us", "log.zoom.us", "zoomam104zc.zoom.us"):
        d = answers.decide(None, host, US_MEETING)
        seen.append((host, d.action, d.scope))
    assert answers._cache_on, "the cache disagreed with the engine"
    assert seen == [
        ("zoom.us", Action.ALLOW, "other"), ("newthing.zoom.us", Action.BLOCK, "governed"),
        ("www3.zoom.us", Action.ALLOW, "other"), ("zoomfr12zc.zoom.us", Action.BLOCK, "governed"),
        ("api.zoom.us", Action.ALLOW, "other"), ("other.zoom.us", Action.BLOCK, "governed"),
        ("log.zoom.us", Action.ALLOW, "other"), ("zoomam104zc.zoom.us", Action.BLOCK, "governed"),
    ]


# --- live: regionguard run + curl, audit lines, report ------------------------------------------

US_WEB, DE_WEB = "127.77.1.1", "127.77.2.1"


@pytest.fixture(scope="module")
def port80():
    """Plain HTTP origins on port 80 (names class only on the web ports), on loopback addresses
    of their own; skipped where port 80 cannot be bound."""
    from tests.proxy_support import Origin
    try:
        servers = {a: Origin(a, 80) for a in (US_WEB, DE_WEB)}
    except OSError as e:
        pytest.skip(f"cannot listen on port 80 here: {e}")
    yield servers
    for s in servers.values():
        s.stop()


def test_live_proxy_holds_meeting_servers_and_lets_web_and_logging_through(tmp_path, port80):
    from tests.proxy_support import Proxy, curl, status_of
    policy = tmp_path / "policy.yaml"
    policy.write_text(textwrap.dedent(f"""
        version: 1
        account: {{type: paid, default_region: DE}}
        regions: {{opt_in: [Europe]}}
        actions: {{disallowed: block, unknown: block}}
        overrides:
          - {{match: 127.77.1.0/24, region: US, zoom: true}}
          - {{match: 127.77.2.0/24, region: DE, zoom: true}}
        resolver:
          nameservers: ["127.0.0.1:{free_port()}"]   # nothing answers: names from hosts only
          timeout: 1
          hosts:
            zoom.us: {US_WEB}
            log.zoom.us: {US_WEB}
            zoomfr12zc.zoom.us: {US_WEB}
            zoomam104zc.zoom.us: {DE_WEB}
    """))
    proxy = Proxy(policy, tmp_path)
    try:
        before = port80[US_WEB].connections
        statuses = {host: status_of(curl("-x", proxy.url, f"http://{host}/"))
                    for host in ("zoom.us", "log.zoom.us", "zoomfr12zc.zoom.us",
                                 "zoomam104zc.zoom.us")}
        assert statuses == {"zoom.us": 200, "log.zoom.us": 200, "zoomfr12zc.zoom.us": 403,
                            "zoomam104zc.zoom.us": 200}
        assert port80[US_WEB].connections == before + 2     # the zone controller never reached
        lines = {r["host"]: r for r in proxy.decisions(4)}
    finally:
        proxy.stop()
    assert {h: (r["service"], r["scope"], r["action"], r["rule"]) for h, r in lines.items()} == {
        "zoom.us": ("web", "other", "allow", "out-of-scope"),
        "log.zoom.us": ("logging", "other", "allow", "out-of-scope"),
        "zoomfr12zc.zoom.us": ("zone-controller", "governed", "block", "region-disallowed"),
        "zoomam104zc.zoom.us": ("zone-controller", "governed", "allow", "region-allowed"),
    }
    # the report says which scope the connections fell in
    r = run("report", str(proxy.audit), "--json")
    assert r.returncode == 0, r.stderr
    by_scope = json.loads(r.stdout)["by_scope"]
    assert by_scope["other"] == {"total": 2, "allow": 2}
    assert by_scope["governed"] == {"total": 2, "allow": 1, "block": 1}
    text = run("report", str(proxy.audit)).stdout
    assert "by scope:" in text
    html = tmp_path / "r.html"
    assert run("report", str(proxy.audit), "--html", str(html)).returncode == 0
    assert "By scope" in html.read_text()
    # and replaying the log under the same policy shows the scope column
    r = run("replay", str(proxy.audit), "--policy", str(policy))
    assert r.returncode == 1
    row = next(line for line in r.stdout.splitlines() if line.startswith("1  zoom.us "))
    assert "web" in row and "other" in row and "ALLOW out-of-scope" in row
    junit = tmp_path / "replay.xml"
    run("replay", str(proxy.audit), "--policy", str(policy), "--junit", str(junit))
    assert "service: web (scope other)" in junit.read_text()


# --- live: regionguard dns + dnspython ---------------------------------------------------------

def test_live_dns_filter_keeps_web_answers_and_filters_meeting_servers(tmp_path, monkeypatch):
    from tests import dns_support
    from tests.dns_support import DnsProcess, ZoneServer, addresses, ask
    # 203.0.113.0/24 is US in dns_support.POLICY, which allows DE only
    for name, address in (("zoom.us.", "203.0.113.50"), ("log.zoom.us.", "203.0.113.51"),
                          ("zoomfr12zc.zoom.us.", "203.0.113.52")):
        monkeypatch.setitem(dns_support.ZONE, name, [("A", 300, address)])
    policy = tmp_path / "dns.yaml"
    policy.write_text(dns_support.POLICY)
    audit = tmp_path / "dns.jsonl"
    zone = ZoneServer()
    server = DnsProcess(policy, [zone.address], "--audit-flush-ms", "0", audit=audit)
    try:
        assert addresses(ask(server.port, "zoom.us")) == {"203.0.113.50"}
        assert addresses(ask(server.port, "log.zoom.us")) == {"203.0.113.51"}
        blocked = ask(server.port, "zoomfr12zc.zoom.us")
        assert not addresses(blocked) and blocked.rcode() == 3     # NXDOMAIN
    finally:
        server.close()
        zone.close()
    lines = [json.loads(x) for x in audit.read_text().splitlines() if x.strip()]
    scopes = {r["dns_qname"]: (r.get("scope"), r["action"]) for r in lines if "dns_qname" in r}
    assert scopes == {"zoom.us": ("other", "allow"), "log.zoom.us": ("other", "allow"),
                      "zoomfr12zc.zoom.us": ("governed", "block")}


def test_readme_has_the_scope_paragraph():
    readme = (CONFIG.parent / "README.md").read_text()
    assert "**Scope.**" in readme and "`unknown-service`" in readme


def test_a_governed_list_that_leaves_out_meeting_traffic_is_warned_about(tmp_path):
    path = tmp_path / "loose.yaml"
    path.write_text("version: 1\naccount: {type: paid, default_region: DE}\n"
                    "scope: {governed: [zone-controller, tunnel, crc, unknown-service, web]}\n")
    r = run("validate", str(path))
    assert r.returncode == 0
    assert ("warning: " in r.stderr and "scope.governed: leaves out meeting, relay" in r.stderr
            and "add meeting, relay to scope.governed" in r.stderr), r.stderr


# --- a name the client sends (SNI, Host) is a claim ---------------------------------------------

def _claims_engine(write_policy, hosts: str) -> Engine:
    return Engine(load_policy(write_policy(f"""
        version: 1
        account: {{type: paid, default_region: DE}}
        regions: {{opt_in: [Europe]}}
        actions: {{disallowed: block, unknown: block}}
        resolver: {{hosts: {hosts}, timeout: 1}}
    """)))


@pytest.mark.parametrize("claimed", ["zoom.us", "log.zoom.us", "st1.zoom.us"])
def test_a_web_name_sent_to_a_meeting_servers_address_does_not_take_it_out_of_scope(
        write_policy, claimed):
    # Transparent and WireGuard modes know the address the client dialled and the SNI it sent.
    # A client that calls a US meeting server by a web name must still be held to the regions:
    # regionguard's own resolution of the name (here the policy's static hosts) does not reach
    # that address.
    import asyncio

    from regionguard.mitm.enforce import Enforcer

    engine = _claims_engine(write_policy, f'{{"{claimed}": "{UNPLACED}"}}')
    assert engine.decide("10.0.0.5", claimed, US_MEETING, 443, "tcp").scope == "other"  # the claim alone
    verdict = asyncio.run(Enforcer(engine).verdict("10.0.0.5", claimed, US_MEETING, 443, "tcp"))
    d = verdict.decision
    assert verdict.address is None
    assert (d.action, d.rule, d.scope, d.region, d.host) == (
        Action.BLOCK, "region-disallowed", "governed", "US", claimed)
    assert "client's claim" in d.reason


def test_a_web_name_that_does_reach_the_address_keeps_its_scope(write_policy):
    import asyncio

    from regionguard.mitm.enforce import Enforcer

    engine = _claims_engine(write_policy, f'{{"zoom.us": "{US_MEETING}"}}')
    verdict = asyncio.run(Enforcer(engine).verdict("10.0.0.5", "zoom.us", US_MEETING, 443, "tcp"))
    assert verdict.address == US_MEETING
    assert (verdict.decision.action, verdict.decision.scope) == (Action.ALLOW, "other")
