"""`regionguard explain / validate / regions` as a user runs them: real subprocesses, and a real
DNS server (dnspython, in-process, on 127.0.0.1) for hostname targets."""

import json
import socket
import subprocess
import threading

import dns.message
import dns.rcode
import dns.rrset
import pytest

from tests.conftest import BIN, CONFIG

RG = str(BIN / "regionguard")


def run(*args, check=False):
    return subprocess.run([RG, *args], capture_output=True, text=True, timeout=120, check=check)


class TinyZone:
    """A UDP name server on 127.0.0.1 answering A/AAAA from a dict (enough for `explain`)."""

    def __init__(self, records: dict[tuple[str, str], list[str]]):
        self.records = records
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            q = dns.message.from_wire(data)
            r = dns.message.make_response(q)
            name = q.question[0].name.to_text().rstrip(".").lower()
            rdtype = dns.rdatatype.to_text(q.question[0].rdtype)
            self.queries.append((name, rdtype))
            if not any(n == name for n, _ in self.records):
                r.set_rcode(dns.rcode.NXDOMAIN)
            for addr in self.records.get((name, rdtype), []):
                r.answer.append(dns.rrset.from_text(name + ".", 60, "IN", rdtype, addr))
            self.sock.sendto(r.to_wire(), peer)

    def close(self):
        self._stop = True
        self._thread.join()
        self.sock.close()


@pytest.fixture
def zone():
    z = TinyZone({
        ("eu-meet.zoom.us", "A"): ["159.124.47.249", "206.247.11.121"],
        ("eu-meet.zoom.us", "AAAA"): [],
        ("www.example.org", "A"): ["192.0.2.10"],
    })
    yield z
    z.close()


def test_explain_address_json_has_region_evidence_and_decision():
    r = run("explain", "159.124.47.249", "15.220.80.10", "192.0.2.1", "--json",
            "--policy", str(CONFIG / "examples" / "eu-only.yaml"), "--port", "8801",
            "--transport", "udp")
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["target"] for x in lines] == ["159.124.47.249", "15.220.80.10", "192.0.2.1"]
    de, tpe, other = (x["addresses"][0] for x in lines)
    assert (de["ip"], de["region"], de["country"], de["zoom"], de["service"]) == \
        ("159.124.47.249", "DE", "DE", True, "meeting")
    assert de["evidence"][0]["source"] == "zoom-dc" and de["evidence"][0]["matched"] == "159.124.47.249/32"
    assert lines[0]["decision"]["action"] == "allow" and lines[0]["decision"]["rule"] == "region-allowed"
    assert (tpe["region"], tpe["country"]) == (None, "TW")
    assert lines[1]["decision"]["action"] == "block"
    assert other["zoom"] is False and lines[2]["decision"]["action"] == "pass"
    assert r.returncode == 1  # something would be blocked


def test_explain_hostname_resolves_through_the_given_name_server(zone):
    r = run("explain", "eu-meet.zoom.us", "--json", "--nameserver", f"127.0.0.1:{zone.port}",
            "--policy", str(CONFIG / "examples" / "eu-only.yaml"))
    [out] = [json.loads(x) for x in r.stdout.splitlines()]
    assert [a["ip"] for a in out["addresses"]] == ["159.124.47.249", "206.247.11.121"]
    assert [a["region"] for a in out["addresses"]] == ["DE", "US"]
    assert [a["decision"]["action"] for a in out["addresses"]] == ["allow", "block"]
    assert out["decision"]["action"] == "allow" and out["decision"]["address"] == "159.124.47.249"
    assert ("eu-meet.zoom.us", "A") in zone.queries
    assert r.returncode == 0


def test_explain_text_output_for_people(zone):
    r = run("explain", "eu-meet.zoom.us", "--nameserver", f"127.0.0.1:{zone.port}",
            "--policy", str(CONFIG / "examples" / "eu-only.yaml"))
    assert "159.124.47.249" in r.stdout and "zoom-dc" in r.stdout and "BLOCK" in r.stdout
    assert "region-disallowed" in r.stdout


def test_explain_unresolvable_name_exits_3(zone):
    r = run("explain", "nope.zoom.us", "--nameserver", f"127.0.0.1:{zone.port}")
    assert r.returncode == 3 and "cannot resolve" in r.stderr


def test_validate_good_and_bad_policies(write_policy):
    ok = run("validate", str(CONFIG / "examples" / "china-office.yaml"))
    assert ok.returncode == 0 and "OK" in ok.stdout and "shanghai-office" in ok.stdout
    bad = write_policy("version: 1\naccount: {type: paid, default_region: US}\n"
                       "regions: {opt_out: [US]}\n", "bad.yaml")
    r = run("validate", str(bad))
    assert r.returncode == 2
    assert f"{bad}:3: regions.opt_out" in r.stderr and "fix:" in r.stderr
    assert "Traceback" not in r.stderr


def test_invalid_policy_on_explain_is_a_clear_error(write_policy):
    bad = write_policy("version: 2\n")
    r = run("explain", "192.0.2.1", "--policy", str(bad))
    assert r.returncode == 2 and "version" in r.stderr and "Traceback" not in r.stderr


def test_regions_lists_codes_groups_and_aliases():
    r = run("regions", "--json")
    data = json.loads(r.stdout)
    assert {x["code"] for x in data["regions"]} == set(
        "AU CA CN DE HK IE IN LA MX NL SG TY US".split())
    assert data["groups"]["Europe"] == ["DE", "NL", "IE"] and data["aliases"]["JP"] == "TY"
    text = run("regions").stdout
    assert "Japan/Hong Kong" in text and "no Zoom data center" in text


def test_regions_without_policy_shows_what_the_default_policy_allows():
    # the help says the default policy is used: the allowed column must be there without --policy
    text = run("regions").stdout
    assert "  CN  China           data centers in CN  not allowed" in text
    assert "  DE  Germany         data centers in DE  allowed" in text
    data = json.loads(run("regions", "--json").stdout)
    allowed = {x["code"]: x["allowed"] for x in data["regions"]}
    assert allowed["CN"] is False and allowed["US"] is True
