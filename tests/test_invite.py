"""`regionguard invite`: Zoom's rules S4 and S5 on meeting invitations as people have them.

The invitations under tests/fixtures/invite/ are written in Zoom's own format (see the README
there): the Zoom client's text (2021 room-connector list), a Google Calendar export and two mails
(2025 list). Every expectation below is written by hand from Zoom's rules and the shipped
policies (config/), never computed by the code under test: a number's country is the one its
country code and area say, a room connector's region the one Zoom's own invitations label it.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import icalendar
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regionguard.cli import main
from regionguard.core.errors import ConfigError
from regionguard.invite.labels import label_places, load_label_places
from regionguard.invite.parse import CRC, DIALIN, SIP, URL, parse_invitation

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "invite"
CONFIG = ROOT / "config"
EU_ONLY = CONFIG / "examples" / "eu-only.yaml"
DEFAULT = CONFIG / "policy.yaml"
FREE = CONFIG / "examples" / "free-account.yaml"
CHINA_OFFICE = CONFIG / "examples" / "china-office.yaml"

# Every dial-in number of the fixtures and its country, by hand: country code, then the area
# (+1 646 New York, +1 438 Montreal, +1 587 Alberta; 833/888 North American toll-free, Zoom
# labels them "US Toll-free").
COUNTRY = {
    "+496938079883": "DE", "+496950502596": "DE", "+31207947345": "NL", "+31707006526": "NL",
    "+35312409438": "IE", "+35361639031": "IE", "+442034815240": "GB", "+441314601196": "GB",
    "+448000315717": "GB", "+33170379729": "FR", "+41432107108": "CH", "+46850539728": "SE",
    "+34917870058": "ES", "+16465588656": "US", "+16699006833": "US", "+13017158592": "US",
    "+18335480282": "US", "+18887880099": "US", "+12532158782": "US", "+13462487799": "US",
    "+16469313860": "US", "+14388097799": "CA", "+15873281099": "CA", "+912248798004": "IN",
    "+918071280009": "IN", "+61280156011": "AU", "+61370182005": "AU", "+551146806788": "BR",
    "+525541614288": "MX", "+81345781488": "JP", "+81524564439": "JP", "+85258033730": "HK",
    "+6531651065": "SG", "+861087833177": "CN", "+4721032037": "NO", "+4532701206": "DK",
    "+48223987356": "PL", "+390694806488": "IT", "+27875517702": "ZA", "+6498846780": "NZ",
}
# The room-connector addresses of the fixtures and the region Zoom's invitations label them with.
CRC_REGION = {
    "162.255.37.11": "US", "162.255.36.11": "US", "144.195.19.161": "US", "206.247.11.121": "US",
    "115.114.131.7": "IN", "115.114.115.7": "IN", "213.19.144.110": "NL", "159.124.15.191": "NL",
    "213.244.140.110": "DE", "159.124.47.249": "DE", "103.122.166.55": "AU", "103.122.167.55": "AU",
    "159.124.104.213": "AU", "159.124.74.212": "AU", "149.137.40.110": "SG", "170.114.180.219": "SG",
    "64.211.144.160": "LA", "69.174.57.160": "CA", "65.39.152.160": "CA", "159.124.168.213": "CA",
    "159.124.196.25": "CA", "207.226.132.110": "TY", "149.137.24.110": "TY", "170.114.194.163": "TY",
    "147.124.100.25": "TY", "170.114.134.121": "HK", "221.122.88.195": "CN",
}
# dial-in countries with no Zoom data-center region: no region choice disables them
NO_REGION = {"GB", "FR", "CH", "SE", "ES", "NO", "DK", "PL", "IT", "ZA", "NZ"}
REGION_OF_COUNTRY = {"DE": "DE", "NL": "NL", "IE": "IE", "US": "US", "CA": "CA", "IN": "IN",
                     "AU": "AU", "BR": "LA", "MX": "MX", "JP": "TY", "HK": "HK", "SG": "SG",
                     "CN": "CN"}


def invite(*args: str | Path) -> subprocess.CompletedProcess:
    """`regionguard invite ARGS` through the command line's own entry point, in this process (a
    fresh interpreter costs a second a run; the tests marked `process` below run one)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["invite", *map(str, args)])
    return subprocess.CompletedProcess(["regionguard", "invite"], status, out.getvalue().encode(),
                                       err.getvalue().encode())


def invite_process(*args: str | Path, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """`regionguard invite ARGS` as its own process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "regionguard", "invite", *map(str, args)],
                          capture_output=True, timeout=60, input=stdin, cwd=ROOT,
                          env={**os.environ, "REGIONGUARD_COMPILED": "off"})


def entries(r: subprocess.CompletedProcess) -> list[dict]:
    doc = json.loads(r.stdout)
    return [e for f in doc["files"] for e in f["entries"]]


def expected_verdict(entry: dict, allowed: set[str]) -> str:
    """What Zoom's rules say, from the hand tables above."""
    if entry["kind"] == DIALIN:
        country = COUNTRY[entry["value"]]
        return "allowed" if country in NO_REGION or REGION_OF_COUNTRY[country] in allowed else "outside"
    if entry["kind"] == CRC:
        return "allowed" if CRC_REGION[entry["value"]] in allowed else "outside"
    return "allowed"   # zoomcrc.com URIs and us0Nweb.zoom.us links name no region


ALL_FIXTURES = ("zoom-client.txt", "calendar.ics", "mail.eml", "html-only.eml", "outlook-request.eml")


# --- parsing: what is found, where, and each number's country --------------------------------


def test_every_dial_in_number_has_its_country_from_the_phone_number_library():
    places = label_places()
    seen = set()
    for name in ("zoom-client.txt", "forwarded.txt"):
        items, problems = parse_invitation((FIXTURES / name).read_text(), places)
        assert problems == []
        for item in items:
            if item.kind == DIALIN:
                assert item.country == COUNTRY[item.value], item
                seen.add(item.value)
    # the client's text lists 25 numbers, one-tap lines among them, and a toll-free one without '+'
    assert {"+18335480282", "+496938079883", "+16465588656", "+861087833177"} <= seen
    assert len(seen) >= 25


def test_zoom_client_text_items_with_positions_labels_and_protocols():
    text = (FIXTURES / "zoom-client.txt").read_text()
    items, _ = parse_invitation(text, label_places(), lambda host: host == "zoomcrc.com")
    kinds = [i.kind for i in items]
    assert kinds.count(DIALIN) == 27 and kinds.count(CRC) == 14 and kinds.count(SIP) == 1
    assert kinds.count(URL) == 2
    one_tap = items[1]
    assert (one_tap.kind, one_tap.value, one_tap.line, one_tap.column, one_tap.label) == \
        (DIALIN, "+496938079883", 12, 1, "Germany")
    amsterdam = next(i for i in items if i.value == "213.19.144.110")
    assert (amsterdam.label, amsterdam.protocol) == ("Amsterdam Netherlands", "h323")
    assert text.splitlines()[amsterdam.line - 1][amsterdam.column - 1:].startswith("213.19.144.110")
    sip = next(i for i in items if i.kind == SIP)
    assert (sip.value, sip.host) == ("85746382910@zoomcrc.com", "zoomcrc.com")
    # "Meeting ID: 857 4638 2910" and "Passcode: 123456" are not numbers to dial
    assert not any(i.value.endswith("85746382910") and i.kind == DIALIN for i in items)


def test_entries_run_together_on_one_line_each_keep_their_own_label():
    """A label is the place beside its entry, not the rest of the line: a pasted invitation whose
    line breaks were lost (or a hostile one) still gives each number its own country claim, and
    reading it stays linear in its length."""
    line = "+49 69 3807 9883 Germany +1 646 558 8656 US (New York) " * 2000
    items, problems = parse_invitation(line, label_places())
    assert not problems and len(items) == 4000
    assert {(i.country, i.label) for i in items} == {("DE", "Germany"), ("US", "US (New York)")}
    assert [i.column for i in items[:3]] == [1, 26, 56]


def test_meeting_ids_passcodes_and_mail_addresses_are_not_entries():
    text = "Meeting ID: 857 4638 2910\nPasscode: 123456\nquestions: outreach@example.org\n" \
           "Time: Mar 8, 2021 10:00 AM\n"
    assert parse_invitation(text, label_places()) == ([], [])


# --- checking under the shipped policies --------------------------------------------------------


@pytest.mark.parametrize("policy, client, allowed", [
    (EU_ONLY, None, {"DE", "NL", "IE"}),
    (DEFAULT, None, {"US", "CA", "DE", "NL", "IE", "IN", "AU", "LA", "MX", "TY", "HK", "SG"}),
    (FREE, None, {"US"}),
    # the Shanghai office's group: in China, CN and Japan/Hong Kong opted in, and the default US
    (CHINA_OFFICE, "10.20.0.5", {"US", "CN", "TY", "HK"}),
])
def test_every_entry_of_every_invitation_is_judged_as_zooms_rules_say(policy, client, allowed):
    args = [*[FIXTURES / f for f in ALL_FIXTURES], "--policy", policy, "--json"]
    r = invite(*args, *(["--client", client] if client else []))
    found = entries(r)
    assert len(found) > 150
    wrong = [(e["value"], e["verdict"], e["reason"]) for e in found
             if e["verdict"] != expected_verdict(e, allowed)]
    assert wrong == []
    outside = [e for e in found if e["verdict"] == "outside"]
    assert r.returncode == (1 if outside else 0), r.stderr
    assert outside, "every shipped policy disables some region of these invitations"
    for e in found:   # the evidence agrees with Zoom's own labels in these invitations
        assert e["label_agrees"] in (True, None), e


def test_the_table_names_each_entry_its_verdict_and_why():
    r = invite(FIXTURES / "zoom-client.txt", "--policy", EU_ONLY)
    out = r.stdout.decode()
    assert r.returncode == 1
    line = next(x for x in out.splitlines() if "+1 646 558 8656" in x)
    assert "US (New York)" in line and "outside" in line and "region US is not allowed" in line
    line = next(x for x in out.splitlines() if "213.244.140.110" in x)
    assert "crc/h323" in line and "allowed" in line and "zoom-dc" in line
    # 12 of the 27 numbers (DE, NL, IE, and GB, FR, CH, SE, ES that no region serves), 2 of the 14
    # connectors (Amsterdam, Germany), the SIP URI and the 2 links
    assert "44 entries: 17 allowed, 27 outside the policy" in out


def test_a_label_that_disagrees_with_the_evidence_is_reported():
    r = invite(FIXTURES / "forwarded.txt", "--policy", EU_ONLY, "--json")
    by_value = {e["value"]: e for e in entries(r)}
    # a German number labelled New York: allowed (the number is German) but flagged
    de = by_value["+496938079883"]
    assert (de["verdict"], de["country"], de["label_country"], de["label_agrees"]) == \
        ("allowed", "DE", "US", False)
    assert "the label 'US (New York)' says US, but the evidence says DE" in de["reason"]
    # an Indian number labelled Germany: outside, whatever the label says
    assert (by_value["+912248798004"]["verdict"], by_value["+912248798004"]["label_agrees"]) == \
        ("outside", False)
    # a US West connector relabelled Germany: blocked by the evidence
    us = by_value["162.255.37.11"]
    assert (us["verdict"], us["region"], us["label_country"], us["label_agrees"]) == \
        ("outside", "US", "DE", False)
    # "EMEA" names no country: judged on the evidence alone (China: never outside China)
    cn = by_value["221.122.88.195"]
    assert (cn["verdict"], cn["label_country"], cn["label_agrees"]) == ("outside", None, None)
    # a SIP URI at an address is a room connector at that address
    sip = by_value["89795054002@159.124.15.191"]
    assert (sip["kind"], sip["verdict"], sip["region"]) == ("sip", "allowed", "NL")
    assert r.returncode == 1


# --- --fix -----------------------------------------------------------------------------------------


def _values(r: subprocess.CompletedProcess) -> list[str]:
    return [e["value"] for e in entries(r)]


def test_fix_text_keeps_exactly_the_allowed_entries(tmp_path):
    out = tmp_path / "fixed.txt"
    before = invite(FIXTURES / "zoom-client.txt", "--policy", EU_ONLY, "--json", "--fix", out)
    assert before.returncode == 1
    allowed = [e["value"] for e in entries(before) if e["verdict"] == "allowed"]
    after = invite(out, "--policy", EU_ONLY, "--json")
    assert after.returncode == 0, after.stdout
    assert _values(after) == allowed
    text = out.read_text()
    # the one-tap line for New York went with the number; the Germany one stayed
    assert "+16465588656,," not in text and "+496938079883,,85746382910#,,,,*123456# Germany" in text
    # what is not an entry is untouched, headings keep their allowed entries
    assert "Meeting ID: 857 4638 2910\nPasscode: 123456\nOne tap mobile\n" in text
    assert "Join by H.323\n213.19.144.110 (Amsterdam Netherlands)\n213.244.140.110 (Germany)\n" in text


def test_fix_drops_a_heading_left_with_nothing_under_it(tmp_path):
    given = tmp_path / "us-rooms.txt"
    given.write_text("Join by H.323\n162.255.37.11 (US West)\n162.255.36.11 (US East)\n\n"
                     "Join by SIP\n85746382910@zoomcrc.com\n")
    out = tmp_path / "fixed.txt"
    assert invite(given, "--policy", EU_ONLY, "--fix", out).returncode == 1
    assert out.read_text() == "\nJoin by SIP\n85746382910@zoomcrc.com\n"
    assert invite(given, "--policy", FREE, "--fix", out).returncode == 0
    assert out.read_text() == given.read_text()   # nothing outside: the same text


def test_fix_ics_is_a_calendar_that_round_trips(tmp_path):
    out = tmp_path / "fixed.ics"
    before = invite(FIXTURES / "calendar.ics", "--policy", EU_ONLY, "--json", "--fix", out)
    assert before.returncode == 1
    data = out.read_bytes()
    cal = icalendar.Calendar.from_ical(data)
    assert cal.to_ical() == data                                  # round-trips through icalendar
    events = cal.walk("VEVENT")
    original = icalendar.Calendar.from_ical((FIXTURES / "calendar.ics").read_bytes()).walk("VEVENT")
    assert [str(e["UID"]) for e in events] == [str(e["UID"]) for e in original]
    for fixed, old in zip(events, original, strict=True):         # only the texts changed
        for prop in ("DTSTART", "DTEND", "SUMMARY", "ORGANIZER"):
            if prop in old:
                assert fixed[prop].to_ical() == old[prop].to_ical()
    assert events[1]["X-ALT-DESC"].params["FMTTYPE"] == "text/html"
    html = str(events[1]["X-ALT-DESC"])
    assert "162.255.37.11" not in html and "159.124.15.191 (Amsterdam Netherlands)" in html
    assert html.count("<p>") == html.count("</p>")
    after = invite(out, "--policy", EU_ONLY, "--json")
    assert after.returncode == 0
    assert _values(after) == [e["value"] for e in entries(before) if e["verdict"] == "allowed"]


@pytest.mark.parametrize("name", ["mail.eml", "html-only.eml"])
def test_fix_eml_is_a_mail_whose_parts_keep_their_encoding(tmp_path, name):
    out = tmp_path / name
    before = invite(FIXTURES / name, "--policy", EU_ONLY, "--json", "--fix", out)
    assert before.returncode == 1
    original = email.message_from_bytes((FIXTURES / name).read_bytes(), policy=email.policy.default)
    fixed = email.message_from_bytes(out.read_bytes(), policy=email.policy.default)
    assert fixed["Subject"] == original["Subject"] and fixed["From"] == original["From"]
    old_parts = [p for p in original.walk() if not p.is_multipart()]
    new_parts = [p for p in fixed.walk() if not p.is_multipart()]
    assert [(p.get_content_type(), p["Content-Transfer-Encoding"]) for p in new_parts] == \
        [(p.get_content_type(), p["Content-Transfer-Encoding"]) for p in old_parts]
    assert all(not p.defects for p in fixed.walk())
    after = invite(out, "--policy", EU_ONLY, "--json")
    assert after.returncode == 0
    assert _values(after) == [e["value"] for e in entries(before) if e["verdict"] == "allowed"]
    for part in new_parts:
        content = part.get_content()
        assert "+852 5803 3730" not in content and "170.114.134.121" not in content
        assert "+49 69 3807 9883" in content and "159.124.47.249" in content
        if part.get_content_type() == "text/html":
            assert "tel:+85258033730" not in content   # the link went with its line
            assert content.count("<p>") == content.count("</p>")


def test_fix_several_files_writes_one_per_file_into_a_directory(tmp_path):
    out = tmp_path / "fixed"
    r = invite(FIXTURES / "zoom-client.txt", FIXTURES / "calendar.ics", "--policy", DEFAULT,
               "--fix", out)
    assert r.returncode == 1
    assert sorted(p.name for p in out.iterdir()) == ["calendar.ics", "zoom-client.txt"]
    assert invite(*out.iterdir(), "--policy", DEFAULT).returncode == 0


# --- bad input -------------------------------------------------------------------------------------


def test_bad_input_names_file_and_position_and_the_rest_is_still_checked(tmp_path):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Einwahl\n+49 69 3807 9883 Deutschland \xfcber\n".encode("latin-1"))
    broken = tmp_path / "broken.ics"
    broken.write_bytes((FIXTURES / "calendar.ics").read_bytes().replace(
        b"SEQUENCE:0\r\n", b"SEQUENCE:0\r\nthis line has no colon\r\n"))
    wrong = tmp_path / "wrong-number.txt"
    wrong.write_text("Dial by your location\n  +1 15550100 US (gg)\n  +49 69 3807 9883 Germany\n")
    missing = tmp_path / "missing.eml"
    r = invite_process(latin1, broken, wrong, missing, FIXTURES / "html-only.eml", "--policy",
                       EU_ONLY, "--json")
    err = r.stderr.decode()
    assert r.returncode == 5, err   # 1 (outside) | 4 (unreadable input)
    assert f"{latin1}:line 2 (byte 37): not UTF-8 text" in err and "fix: save the invitation as UTF-8" in err
    assert f"{broken}:line 46: VEVENT: Content line could not be parsed" in err
    assert f"{wrong}:line 2 col 3: '+1 15550100': not a valid phone number" in err
    assert f"{missing}: file not found" in err
    doc = json.loads(r.stdout)
    by_file = {Path(f["file"]).name: f for f in doc["files"]}
    assert by_file["latin1.txt"]["error"] and by_file["missing.eml"]["error"]
    # the calendar's bad line was skipped, the rest of it checked
    assert len(by_file["broken.ics"]["entries"]) == 48
    assert [e["value"] for e in by_file["wrong-number.txt"]["entries"]] == ["+496938079883"]
    assert by_file["html-only.eml"]["outside"] == 4


def test_an_unreadable_calendar_and_a_mail_without_headers_are_named(tmp_path):
    cal = tmp_path / "cut.ics"
    cal.write_bytes(b"BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nEND:VCALENDAR\r\n")
    mail = tmp_path / "body.eml"
    mail.write_bytes(b"\r\n+49 69 3807 9883 Germany\r\n")
    r = invite(cal, mail, "--policy", EU_ONLY)
    err = r.stderr.decode()
    assert r.returncode == 4
    assert f"{cal}: not an iCalendar file" in err and "fix: export the calendar again" in err
    assert f"{mail}:line 1: not a mail: no header lines" in err


def test_standard_input_is_read_as_pasted_text():
    text = (FIXTURES / "zoom-client.txt").read_bytes()
    r = invite_process("-", "--policy", DEFAULT, "--json", stdin=text)
    assert r.returncode == 1
    found = entries(r)
    assert len(found) == 44
    assert [e["value"] for e in found if e["verdict"] == "outside"] == ["+861087833177"]


def test_labels_name_countries_as_invitations_write_them():
    places = label_places()
    assert [places.country(x) for x in (
        "US (New York)", "US (Jersey City)", "US Toll-free", "Amsterdam Netherlands", "Hong Kong SAR",
        "Mainland China", "India / India Mumbai", "EMEA / Amsterdam Netherlands", "EMEA", "UK",
        "South Korea", "Japan Tokyo", "(Germany)", "the us", "")] == [
        "US", "US", "US", "NL", "HK", "CN", "IN", "NL", None, "GB", "KR", "JP", "DE", None, None]


def test_meeting_links_whose_host_names_a_region_are_held_to_the_policy(tmp_path):
    given = tmp_path / "links.txt"
    given.write_text("https://us02web.zoom.us/j/85746382910\nhttps://www.zoom.com.cn/j/85746382910\n"
                     "https://zoomgov.com/j/1605550100\nhttps://example.org/agenda\n")
    by_value = {e["value"]: e for e in entries(invite(given, "--policy", EU_ONLY, "--json"))}
    assert by_value["https://us02web.zoom.us/j/85746382910"]["verdict"] == "allowed"
    assert (by_value["https://www.zoom.com.cn/j/85746382910"]["verdict"],
            by_value["https://www.zoom.com.cn/j/85746382910"]["region"]) == ("outside", "CN")
    assert (by_value["https://zoomgov.com/j/1605550100"]["verdict"],
            by_value["https://zoomgov.com/j/1605550100"]["region"]) == ("outside", "US")
    assert by_value["https://example.org/agenda"]["verdict"] == "not-zoom"
    by_value = {e["value"]: e for e in entries(invite(given, "--policy", DEFAULT, "--json"))}
    assert by_value["https://zoomgov.com/j/1605550100"]["verdict"] == "allowed"
    assert by_value["https://www.zoom.com.cn/j/85746382910"]["verdict"] == "outside"   # outside China


def test_an_outlook_meeting_request_is_checked_and_fixed_in_its_text_and_its_calendar(tmp_path):
    out = tmp_path / "fixed.eml"
    before = invite(FIXTURES / "outlook-request.eml", "--policy", EU_ONLY, "--json", "--fix", out)
    found = entries(before)
    parts = {e["part"] for e in found}
    assert parts == {"part 2 (text/plain)", "part 3 (text/calendar) VEVENT 1 DESCRIPTION",
                     "part 3 (text/calendar) VEVENT 1 LOCATION"}
    outside = sorted(e["value"] for e in found if e["verdict"] == "outside")
    assert outside == ["+16469313860", "+16469313860", "221.122.88.195", "221.122.88.195"]
    raw = out.read_bytes()
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")   # CRLF, as it came
    fixed = email.message_from_bytes(raw, policy=email.policy.default)
    calendar = next(p for p in fixed.walk() if p.get_content_type() == "text/calendar")
    assert calendar.get_param("method") == "REQUEST" and calendar["Content-Transfer-Encoding"] == "base64"
    assert "MIME-Version" not in calendar
    data = calendar.get_payload(decode=True)
    cal = icalendar.Calendar.from_ical(data)
    assert cal.to_ical() == data and str(cal["METHOD"]) == "REQUEST"
    event = cal.walk("VEVENT")[0]
    assert str(event["UID"]) == "040000008200E00074C5B7101A82E00800000000"
    assert "221.122.88.195" not in str(event["DESCRIPTION"])
    assert "+496938079883,,86746313244# Germany" in str(event["DESCRIPTION"])
    after = invite(out, "--policy", EU_ONLY, "--json")
    assert after.returncode == 0
    assert _values(after) == [e["value"] for e in found if e["verdict"] == "allowed"]


def test_text_saved_by_windows_notepad_as_unicode_is_read(tmp_path):
    given = tmp_path / "notepad.txt"
    given.write_bytes("\r\n".join(["Dial by your location", "    +49 69 3807 9883 Germany",
                                   "    +1 646 558 8656 US (New York)"]).encode("utf-16"))
    r = invite(given, "--policy", EU_ONLY, "--json")
    assert [(e["value"], e["line"], e["verdict"]) for e in entries(r)] == [
        ("+496938079883", 2, "allowed"), ("+16465588656", 3, "outside")]


def test_a_config_dir_without_the_label_names_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match="invite-labels.yaml: cannot read"):
        load_label_places(CONFIG / "data" / "iso3166-alpha2.csv", tmp_path / "invite-labels.yaml")
    bad = tmp_path / "bad-labels.yaml"
    bad.write_text("aliases:\n  Atlantis: XX\n")
    with pytest.raises(ConfigError, match=r"bad-labels.yaml:2: aliases.Atlantis: 'XX' is not an ISO"):
        load_label_places(CONFIG / "data" / "iso3166-alpha2.csv", bad)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([
    "+49 69 3807 9883 Germany", "+1 646 558 8656 US (New York)", "162.255.37.11 (US West)",
    "Join by SIP", "Join by H.323", "85746382910@zoomcrc.com", "Meeting ID: 857 4638 2910",
    "https://us02web.zoom.us/j/1", "+16465588656,,85746382910#", "833 548 0282 US Toll-free",
    "999.1.2.3", "+", "+1", "(", "•", "a@b.cd", "sip:", "\t", ""]) | st.text(max_size=40), max_size=12))
def test_parsing_never_fails_and_every_position_points_at_its_entry(lines):
    text = "\n".join(lines)
    items, problems = parse_invitation(text, label_places(), lambda host: host == "zoomcrc.com")
    rows = text.split("\n")
    for item in items:
        assert rows[item.line - 1][item.column - 1:].startswith(item.text)
    for p in problems:
        assert rows[p.line - 1][p.column - 1:].startswith(p.text)
