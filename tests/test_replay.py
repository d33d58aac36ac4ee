"""`regionguard replay` on sessions recorded through the real proxy (tests/fixtures/replay, made by
tools/make_replay_fixtures.py): every format, every output, exit codes, bad input, and proof that
replay opens no network connection. Expectations come from the fixture's manifest (what the clients
really did) and the policies' region sets, not from hard-coded answers."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from regionguard.core.decision import Engine
from regionguard.core.policy import load_policy
from regionguard.replay.replay import replay
from tests.conftest import BIN, ROOT

FIX = ROOT / "tests" / "fixtures" / "replay"
MANIFEST = json.loads((FIX / "manifest.json").read_text())
EUROPE = {"DE", "NL", "IE"}
TIMEOUT = 120


def run(*args: str, cwd: Path = FIX, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "regionguard"), *args], capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=cwd, env=env)


def region_of(address: str) -> str | None:
    for prefix, region in MANIFEST["places"].items():
        if ipaddress.ip_address(address) in ipaddress.ip_network(prefix):
            return region
    return None


def requests(session: str, schemes=("http", "https")) -> set[tuple[str, str, int]]:
    return {(r["host"], r["address"], r["port"]) for r in MANIFEST["sessions"][session]
            if r["scheme"] in schemes}


def zoom_requests(session: str, schemes=("http", "https")) -> set[tuple[str, str, int]]:
    return {r for r in requests(session, schemes) if region_of(r[1]) is not None}


def rows(result, include_pass=False) -> set[tuple[str, str, int]]:
    return {(r.decision.host, r.decision.address, r.decision.port)
            for r in result.sorted_rows(include_pass)}


# --- the three formats ------------------------------------------------------------------------------


def test_fixture_was_recorded_through_the_addon_and_clients_got_answers():
    """What the clients saw (the manifest) is what the addon logged and what today's engine
    decides under the recording policy: a 403 exactly where the decision is block."""
    # recorded before the entry file was renamed (addons/regionguard.py): either name is the addon
    assert MANIFEST["recorded_with"].startswith(("mitmdump + addons/regionguard_addon.py",
                                                 "mitmdump + addons/regionguard.py"))
    engine = Engine(load_policy(FIX / MANIFEST["policy"]))
    for name, session in MANIFEST["sessions"].items():
        logged = {(d["host"], d["port"]): d["action"]
                  for d in map(json.loads, (FIX / f"{name}.audit.jsonl").read_text().splitlines())
                  if "action" in d}
        for r in session:
            # the proxy refused China (outside-china clients never reach CN); everything else worked
            assert r["status"] == (403 if region_of(r["address"]) == "CN" else 200), r
            decided = engine.decide("127.0.0.1", r["host"], r["address"], r["port"], "tcp")
            assert decided.action == ("block" if r["status"] == 403 else
                                      "allow" if region_of(r["address"]) else "pass"), (r, decided)
            assert logged[(r["host"], r["port"])] == decided.action, r


@pytest.mark.parametrize("session", ["eu-session", "mixed-session"])
def test_flow_file_and_har_hold_the_plain_http_requests(session):
    for suffix in (".mitm", ".har"):
        result = replay([FIX / f"{session}{suffix}"], FIX / "policy-record.yaml")
        assert not result.problems
        # mitmproxy does not save CONNECT passthrough flows: only the http:// requests are there
        assert rows(result, include_pass=True) == requests(session, ("http",)), suffix


@pytest.mark.parametrize("session", ["eu-session", "mixed-session"])
def test_audit_log_also_holds_the_https_passthrough(session):
    result = replay([FIX / f"{session}.audit.jsonl"], FIX / "policy-record.yaml")
    assert rows(result, include_pass=True) == requests(session)
    https = requests(session, ("https",))
    assert https and https <= rows(result)


def test_blocked_request_without_address_uses_policy_static_hosts_only():
    result = replay([FIX / "mixed-session.mitm"], FIX / "policy-record.yaml")
    cn = [r for r in result.rows.values() if region_of(r.decision.address or "0.0.0.0") == "CN"]
    assert len(cn) == 1
    # the proxy refused it before connecting, so the flow has no address: the policy's
    # resolver.hosts supplied it, and the addon's own verdict was recorded in the flow
    assert cn[0].resolved_by == "policy resolver.hosts"
    assert cn[0].recorded == {"block": 1}
    assert cn[0].decision.rule == "outside-china-never-cn"


# --- decisions, exit codes and outputs ---------------------------------------------------------------


def test_eu_session_complies_with_eu_policy():
    p = run("replay", "eu-session.mitm", "eu-session.har", "eu-session.audit.jsonl",
            "-p", "policy-eu.yaml")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "result: PASS" in p.stdout
    for host, address, port in zoom_requests("eu-session"):
        assert host in p.stdout and address in p.stdout and f"{port}/tcp" in p.stdout
    assert "intranet.example.test" not in p.stdout   # not Zoom's: listed only with --all
    assert "intranet.example.test" in run("replay", "eu-session.mitm", "-p", "policy-eu.yaml",
                                          "--all").stdout


def test_mixed_session_fails_eu_policy_with_json_naming_each_offender():
    p = run("replay", "mixed-session.mitm", "mixed-session.audit.jsonl", "-p", "policy-eu.yaml",
            "--json")
    assert p.returncode == 1, p.stderr
    doc = json.loads(p.stdout)
    failing = {(c["host"], c["address"], c["port"]) for c in doc["connections"] if c["fails"]}
    expected = {r for r in zoom_requests("mixed-session") if region_of(r[1]) not in EUROPE}
    assert failing == expected
    allowed = {(c["host"], c["address"], c["port"]) for c in doc["connections"] if not c["fails"]}
    assert allowed == {r for r in zoom_requests("mixed-session") if region_of(r[1]) in EUROPE}
    for c in doc["connections"]:
        assert c["region"] == region_of(c["address"])
        assert c["evidence_source"] == "override"
    assert doc["summary"]["exit_code"] == 1 and not doc["summary"]["complies"]


def test_same_session_under_the_recording_policy_fails_only_for_china():
    result = replay([FIX / "mixed-session.audit.jsonl"], FIX / "policy-record.yaml")
    assert {region_of(r.decision.address) for r in result.failing} == {"CN"}
    assert result.exit_code == 1


def test_fail_on_is_configurable(write_policy):
    assert run("replay", "mixed-session.mitm", "-p", "policy-eu.yaml", "--fail-on", "none").returncode == 0
    monitor = write_policy((FIX / "policy-eu.yaml").read_text().replace(
        "disallowed: block", "disallowed: monitor"))
    args = ("replay", str(FIX / "mixed-session.mitm"), "-p", str(monitor))
    # China stays blocked even when monitoring (a hard rule): exit 1 either way
    plain = run(*args, "--json")
    doc = json.loads(plain.stdout)
    monitored = [c for c in doc["connections"] if c["action"] == "monitor"]
    assert monitored and all(not c["fails"] for c in monitored)
    strict = json.loads(run(*args, "--json", "--fail-on", "block,monitor").stdout)
    assert all(c["fails"] for c in strict["connections"] if c["action"] == "monitor")
    assert run(*args, "--fail-on", "reroute").returncode == 0
    bad = run(*args, "--fail-on", "explode")
    assert bad.returncode == 2 and "choose from" in bad.stderr and "Traceback" not in bad.stderr


def test_junit_xml_has_a_failure_per_blocked_connection(tmp_path):
    out = tmp_path / "junit.xml"
    p = run("replay", "mixed-session.audit.jsonl", "-p", "policy-eu.yaml", "--junit", str(out))
    assert p.returncode == 1
    suite = ET.parse(out).getroot()
    cases = suite.findall("testcase")
    failed = {c.get("name") for c in cases if c.find("failure") is not None}
    expected = {f"{h} {a}:{port}/tcp" for h, a, port in zoom_requests("mixed-session")
                if region_of(a) not in EUROPE}
    assert failed == expected
    assert suite.get("failures") == str(len(expected)) and suite.get("tests") == str(len(cases))


def test_invalid_policy_and_missing_file_are_clear(tmp_path, write_policy):
    bad = write_policy("version: 1\naccount: {type: paid, default_region: XX}\n")
    p = run("replay", "eu-session.mitm", "-p", str(bad))
    assert p.returncode == 2 and str(bad) in p.stderr and "Traceback" not in p.stderr
    p = run("replay", "eu-session.mitm", str(tmp_path / "nope.mitm"), "-p", "policy-eu.yaml")
    assert p.returncode == 4 and "nope.mitm" in p.stdout and "cannot read" in p.stdout
    assert "de01web.zoom.us" in p.stdout          # the readable file was still replayed


def test_progress_bar_when_asked():
    p = run("replay", "mixed-session.mitm", "-p", "policy-eu.yaml", "--progress", "always")
    assert "100.0%" in p.stderr
    assert "%" not in run("replay", "mixed-session.mitm", "-p", "policy-eu.yaml").stderr


# --- bad input ------------------------------------------------------------------------------------------


def _flow_offsets(path: Path) -> list[int]:
    from mitmproxy.io import tnetstring

    offsets = []
    with open(path, "rb") as f:
        while f.peek(1):
            offsets.append(f.tell())
            tnetstring.load(f)
    return offsets


def test_truncated_flow_file(tmp_path):
    data = (FIX / "mixed-session.mitm").read_bytes()
    offsets = _flow_offsets(FIX / "mixed-session.mitm")
    cut = offsets[2] + (offsets[3] - offsets[2]) // 2          # halfway through flow 3
    broken = tmp_path / "cut.mitm"
    broken.write_bytes(data[:cut])
    p = run("replay", str(broken), "eu-session.har", "-p", "policy-record.yaml", "--json")
    assert p.returncode == 4, p.stderr
    doc = json.loads(p.stdout)
    [problem] = doc["problems"]
    assert problem["file"] == str(broken)
    assert problem["position"] == f"flow 3 (byte {offsets[2]})" and "truncated" in problem["message"]
    hosts = {c["host"] for c in doc["connections"] if str(broken) in c["first_seen"]}
    assert len(hosts) == 2                                      # flows 1 and 2 were replayed
    assert any("eu-session.har" in c["first_seen"] for c in doc["connections"])  # next file too
    assert "Traceback" not in p.stderr and str(broken) in p.stderr


def test_corrupt_flow_in_the_middle_is_skipped(tmp_path):
    data = bytearray((FIX / "mixed-session.mitm").read_bytes())
    offsets = _flow_offsets(FIX / "mixed-session.mitm")
    data[offsets[1]:offsets[1] + 3] = b"x!?"                   # flow 2's length prefix
    broken = tmp_path / "corrupt.mitm"
    broken.write_bytes(bytes(data))
    result = replay([broken], FIX / "policy-record.yaml")
    assert [p.position for p in result.problems] == [f"flow 2 (byte {offsets[1]})"]
    assert result.records == len(offsets) - 1                  # every other flow was read
    assert result.exit_code == 4 | 1                           # and CN still fails


def test_har_that_is_not_json(tmp_path):
    text = (FIX / "mixed-session.har").read_text()
    broken = tmp_path / "cut.har"
    broken.write_text(text[: len(text) // 2])
    p = run("replay", str(broken), "eu-session.audit.jsonl", "-p", "policy-eu.yaml")
    assert p.returncode == 4
    assert f"{broken}: line " in p.stdout and "not valid JSON" in p.stdout
    assert "de01web.zoom.us" in p.stdout and "Traceback" not in p.stderr


def test_har_entry_without_url_is_skipped(tmp_path):
    doc = json.loads((FIX / "eu-session.har").read_text())
    del doc["log"]["entries"][1]["request"]["url"]
    broken = tmp_path / "entry.har"
    broken.write_text(json.dumps(doc))
    result = replay([broken], FIX / "policy-eu.yaml")
    assert [p.position for p in result.problems] == ["entry 1 (log.entries[1])"]
    assert result.records == len(doc["log"]["entries"]) - 1


def test_audit_line_that_is_not_json(tmp_path):
    lines = (FIX / "mixed-session.audit.jsonl").read_text().splitlines()
    lines.insert(2, '{"time": "2026-11-29T00:00:00Z", "action": "allo')   # cut short by a crash
    lines.insert(4, "garbage")
    broken = tmp_path / "audit.jsonl"
    broken.write_text("\n".join(lines) + "\n")
    result = replay([broken], FIX / "policy-record.yaml")
    assert [p.position.split(" column")[0] for p in result.problems] == ["line 3", "line 5"]
    assert result.records == len(lines) - 2
    assert result.exit_code == 5


def test_real_zoom_address_in_a_har_is_located_from_bundled_data(tmp_path):
    """A HAR's serverIPAddress decides; replace the loopback address with a Zoom address the
    bundled data places (first row of zoom-datacenters.csv with a region)."""
    import csv

    row = next(r for r in csv.DictReader(open(ROOT / "config/data/zoom-datacenters.csv"))
               if r["region"] and r["kind"] != "inferred")
    address = str(next(ipaddress.ip_network(row["prefix"]).hosts(), None)
                  or ipaddress.ip_network(row["prefix"]).network_address)
    doc = json.loads((FIX / "eu-session.har").read_text())
    for e in doc["log"]["entries"]:
        e["serverIPAddress"] = address
    har = tmp_path / "zoom.har"
    har.write_text(json.dumps(doc))
    result = replay([har], ROOT / "config" / "examples" / "eu-only.yaml")
    zoom = result.zoom_rows
    assert zoom and {r.decision.region for r in zoom} == {row["region"]}
    assert bool(result.failing) == (row["region"] not in EUROPE)


# --- replay never connects out -------------------------------------------------------------------------

HOOK = textwrap.dedent("""
    import os, sys
    _log = os.environ["RG_NET_LOG"]
    def _hook(event, args):
        if event in ("socket.connect", "socket.getaddrinfo", "socket.sendto", "socket.sendmsg",
                     "socket.gethostbyname", "socket.gethostbyaddr", "socket.bind"):
            with open(_log, "a") as f:
                f.write(f"{event} {args[1:]!r}\\n")
    sys.addaudithook(_hook)
""")


def test_replay_opens_no_network_connection(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(HOOK)
    log = tmp_path / "net.log"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "RG_NET_LOG": str(log)}
    # positive control: the hook does see a connection attempt
    subprocess.run([sys.executable, "-c", "import socket; s=socket.socket(); s.settimeout(1)\n"
                    "try: s.connect(('127.0.0.1', 9))\nexcept OSError: pass"], env=env, timeout=60)
    assert "socket.connect" in log.read_text()
    log.unlink()
    files = [str(p) for p in sorted(FIX.glob("*-session.*"))]
    p = subprocess.run([sys.executable, "-m", "regionguard", "replay", *files, "-p",
                        str(FIX / "policy-eu.yaml"), "--json"],
                       capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert p.returncode == 1, p.stderr
    assert json.loads(p.stdout)["summary"]["records"] > 10, p.stdout[-2000:] + p.stderr[-2000:]
    assert not log.exists(), log.read_text()


def test_truncated_gzip_audit_log_is_a_clear_problem_not_a_crash(tmp_path):
    import gzip

    from tests.conftest import BIN

    data = (FIX / "mixed-session.audit.jsonl").read_bytes() * 200
    gz = gzip.compress(data)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gz[: len(gz) // 2])
    # report: 4, unreadable input. replay: 5 = 1 (the CN requests before the cut are blocked under
    # policy-eu) | 4 (unreadable input).
    for cmd, code in ((["report", str(path)], 4),
                      (["replay", str(path), "--policy", str(FIX / "policy-eu.yaml")], 5)):
        r = subprocess.run([str(BIN / "regionguard"), *cmd], capture_output=True, text=True, timeout=60)
        assert "Traceback" not in r.stderr and "cut.jsonl.gz" in (r.stdout + r.stderr), cmd
        assert r.returncode == code, (cmd, r.returncode, r.stderr[-500:])
        assert "Compressed file ended before the end-of-stream marker" in r.stdout + r.stderr, cmd


def test_short_cut_gzip_audit_log_still_yields_what_it_holds(tmp_path):
    """A .gz cut before its trailer, shorter than what format detection reads: the lines that
    came out are still counted, and the cut is reported."""
    import gzip

    from tests.conftest import BIN

    lines = (FIX / "mixed-session.audit.jsonl").read_bytes().splitlines(keepends=True)[:3]
    path = tmp_path / "short.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(lines))[:-12])   # the last line cut, no trailer
    r = subprocess.run([str(BIN / "regionguard"), "report", "--json", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 4 and "short.jsonl.gz" in r.stderr, (r.returncode, r.stderr)
    assert json.loads(r.stdout)["decisions"] == 2, r.stdout


# --- a file that is not a flow file at all (issue 19) ---------------------------------------------


@pytest.mark.parametrize("text", ["meeting notes\nroom 4, Tuesday\n", "12:30 stand-up\n",
                                  "2026 plan: move to EU\n"])
def test_a_text_file_is_not_read_as_a_flow_file(tmp_path, text):
    notes = tmp_path / "notes.txt"        # no known extension: detection falls back to mitm
    notes.write_text(text)
    p = run("replay", str(notes), "eu-session.har", "-p", "policy-eu.yaml", "--json")
    assert p.returncode == 4, p.stderr
    doc = json.loads(p.stdout)
    [problem] = doc["problems"]          # one problem for the file, not one per "flow"
    assert problem["file"] == str(notes) and problem["position"] == "byte 0"
    assert "not a mitmproxy flow file" in problem["message"]
    assert "nothing in it was replayed" in problem["message"]
    assert "replayed" not in problem["fix"]                     # no claim that flows were replayed
    assert "HAR" in problem["fix"] and "pcap" in problem["fix"]
    assert any("eu-session.har" in c["first_seen"] for c in doc["connections"])  # next file read


def test_a_corrupt_first_flow_does_not_claim_flows_before_it(tmp_path):
    data = bytearray((FIX / "mixed-session.mitm").read_bytes())
    offsets = _flow_offsets(FIX / "mixed-session.mitm")
    end = offsets[1] - 1                                   # flow 1's closing `}`
    data[end:end + 1] = b"x"                               # no tnetstring type, so corrupt
    broken = tmp_path / "corrupt.mitm"
    broken.write_bytes(bytes(data))
    result = replay([broken], FIX / "policy-record.yaml")
    [problem] = result.problems
    assert problem.position == "flow 1 (byte 0)"
    assert "no flow before it was read" in problem.fix, problem.fix
    assert f"next whole flow (byte {offsets[1]})" in problem.fix
    assert result.records == len(offsets) - 1
    # a corrupt flow after two good ones says how many were replayed before it
    data = bytearray((FIX / "mixed-session.mitm").read_bytes())
    data[offsets[2]:offsets[2] + 3] = b"x!?"
    broken.write_bytes(bytes(data))
    [problem] = replay([broken], FIX / "policy-record.yaml").problems
    assert problem.fix.startswith("the 2 flow(s) before it were replayed; replay went on")
