"""The entries of a Zoom meeting invitation, from its text: pure (text in, items out), each item
with the line and column it was found at.

What Zoom writes (its client's "Copy invitation", its calendar and mail invitations):

    Join Zoom Meeting
    https://us02web.zoom.us/j/85746382910?pwd=...
    One tap mobile
    +16465588656,,85746382910#,,,,*123456# US (New York)
    Dial by your location
            +1 646 558 8656 US (New York)
            +49 69 3807 9883 Germany
            833 548 0282 US Toll-free
    Join by SIP
    85746382910@zoomcrc.com
    Join by H.323
    162.255.37.11 (US West)
    213.19.144.110 (Amsterdam Netherlands)
    Meeting ID: 857 4638 2910

Found here: dial-in numbers (with '+', and the national toll-free form a country label follows),
each with the country the phone-number library (`phonenumbers`) places it in; room-connector
addresses (IPv4, with the location in brackets after them); SIP URIs (sip:, under a "Join by SIP"
heading, or at a room-connector domain); and web links. A meeting ID or passcode is never taken
for a number: only '+' numbers, and bare numbers followed by a country, are.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import phonenumbers

from regionguard.invite.labels import LabelPlaces

DIALIN, CRC, SIP, URL = "dial-in", "crc", "sip", "url"
H323 = "h323"

# '+', a digit, then digits and the separators Zoom and people use; ends on a digit. A one-tap
# line continues with ",,MEETING#,,,,*PASSCODE#": the dial string, not part of the number.
_PLUS_NUMBER = re.compile(r"(?<![\w+])\+\d[\d \t().\-]{4,24}\d(?!\d)")
_DIAL_SUFFIX = re.compile(r"(?:[,;][\d,;#*]*)?")
# A national number at the start of a line, a country label after it: "833 548 0282 US Toll-free"
_BARE_NUMBER = re.compile(r"^[ \t]*(?:[•*·\-][ \t]*)?(?P<num>\d[\d \-]{5,18}\d)[ \t]+(?P<label>\S[^\n]*)$",
                          re.MULTILINE)
_IPV4 = re.compile(r"(?<![\w.@])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_BRACKETED = re.compile(r"[ \t]*\((?P<label>[^()\n]{1,80})\)")
_SIP_URI = re.compile(r"(?<![\w.+\-])(?P<scheme>sips?:)?(?P<user>[\w.+\-]+)@"
                      r"(?P<host>(?:\d{1,3}\.){3}\d{1,3}|[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
                      r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,})")
_URL = re.compile(r"https?://[^\s<>\"')\]]+", re.IGNORECASE)
# Headings that say which protocol the addresses under them are for: "Join by SIP", "H.323:"
_HEADING = re.compile(r"^\W*(?:join\s+by\s+|join\s+with\s+|dial\s+)?(?P<what>sip|h\.?\s?323)\b[^@\n]*$",
                      re.IGNORECASE)
_PHONE_HEADING = re.compile(r"^\W*(?:one tap|dial by|dial-in|dial in|phone)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Item:
    """One entry of an invitation."""

    kind: str               # DIALIN | CRC | SIP | URL
    value: str              # dial-in: E.164; crc: the address; sip: user@host; url: the URL
    text: str               # as written
    line: int               # 1-based, in the text parsed
    column: int             # 1-based
    label: str | None = None     # the place the invitation states beside it, if any
    country: str | None = None   # dial-in: the number's country, from the phone-number library
    protocol: str | None = None  # crc: H323 or SIP, from the heading it is under
    host: str | None = None      # sip, url: the host part


@dataclass(frozen=True, slots=True)
class ParseProblem:
    """Something in the text that looks like an entry but cannot be read as one."""

    line: int
    column: int
    text: str
    message: str
    fix: str


# A label is a place name beside its entry ("US (New York)"), not the rest of a long line: cut at
# the next number or link, and at a bound, so a line of many entries is read in linear time.
_LABEL_MAX = 80
_LABEL_END = re.compile(r"\s(?:\+\d|https?://)")


def _label(rest: str) -> str | None:
    rest = rest[:_LABEL_MAX]
    end = _LABEL_END.search(rest)
    return (rest[:end.start()] if end else rest).strip() or None


class _Spans:
    """Disjoint spans of the text already read, sorted: an overlap test is one bisection."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def overlaps(self, start: int, end: int) -> bool:
        # the spans are disjoint, so only the last one starting before `end` can reach `start`
        index = bisect.bisect_left(self.starts, end) - 1
        return index >= 0 and self.ends[index] > start

    def append(self, span: tuple[int, int]) -> None:
        index = bisect.bisect_left(self.starts, span[0])
        self.starts.insert(index, span[0])
        self.ends.insert(index, span[1])


class _Lines:
    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = [0] + [m.end() for m in re.finditer(r"\n", text)]

    def position(self, offset: int) -> tuple[int, int]:
        index = bisect.bisect_right(self.starts, offset) - 1
        return index + 1, offset - self.starts[index] + 1

    def rest_of_line(self, offset: int) -> str:
        end = self.text.find("\n", offset)
        return self.text[offset:] if end < 0 else self.text[offset:end]


def parse_invitation(text: str, places: LabelPlaces,
                     is_crc_host: Callable[[str], bool] = lambda host: False
                     ) -> tuple[list[Item], list[ParseProblem]]:
    """Every entry of an invitation's text, in the order written, and what could not be read.

    `places` reads labels; `is_crc_host` says whether a host is a room-connector domain (a URI
    user@HOST there is a SIP URI even without "sip:")."""
    lines = _Lines(text)
    found: list[tuple[int, Item]] = []
    problems: list[ParseProblem] = []
    taken = _Spans()   # spans already read, so an address is read once
    overlaps = taken.overlaps

    sections = _sections(text)
    section_starts = [s for s, _ in sections]

    def section_at(offset: int) -> str | None:
        index = bisect.bisect_right(section_starts, offset) - 1
        return sections[index][1] if index >= 0 else None

    for m in _URL.finditer(text):
        url = m.group(0).rstrip(".,;:")
        host = (urlsplit(url).hostname or "").lower()
        line, col = lines.position(m.start())
        found.append((m.start(), Item(URL, url, url, line, col, host=host or None)))
        taken.append((m.start(), m.start() + len(url)))

    for m in _SIP_URI.finditer(text):
        if overlaps(m.start(), m.end()):
            continue   # inside a link (https://user@host/...)
        host = m.group("host").lower()
        if not (m.group("scheme") or section_at(m.start()) == SIP or is_crc_host(host)):
            continue   # an e-mail address, not a SIP URI
        line, col = lines.position(m.start())
        value = f"{m.group('user')}@{host}"
        found.append((m.start(), Item(SIP, value, m.group(0), line, col, host=host,
                                      protocol=SIP)))
        taken.append((m.start(), m.end()))

    for m in _IPV4.finditer(text):
        if overlaps(m.start(), m.end()):
            continue
        try:
            address = str(ipaddress.IPv4Address(m.group(0)))
        except ValueError:
            continue   # 999.1.2.3: a version number or such, not an address
        after = _BRACKETED.match(text, m.end())
        label = after.group("label").strip() if after else None
        line, col = lines.position(m.start())
        protocol = SIP if section_at(m.start()) == SIP else H323
        found.append((m.start(), Item(CRC, address, m.group(0), line, col, label=label,
                                      protocol=protocol)))
        taken.append((m.start(), m.end()))

    for m in _PLUS_NUMBER.finditer(text):
        if overlaps(m.start(), m.end()):
            continue
        raw = m.group(0)
        line, col = lines.position(m.start())
        suffix = _DIAL_SUFFIX.match(text, m.end())
        label = _label(lines.rest_of_line(suffix.end() if suffix else m.end()))
        try:
            number = phonenumbers.parse(raw, None)
        except phonenumbers.NumberParseException as e:
            problems.append(ParseProblem(line, col, raw, f"not a phone number ({e._msg})",
                                         "correct the number, or remove its line"))
            continue
        if not phonenumbers.is_valid_number(number):
            problems.append(ParseProblem(
                line, col, raw, "not a valid phone number: no country numbers it so",
                "correct the number (country code, then the national number), or remove its line"))
            continue
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        found.append((m.start(), Item(DIALIN, e164, raw, line, col, label=label,
                                      country=phonenumbers.region_code_for_number(number))))
        taken.append((m.start(), m.end()))

    for m in _BARE_NUMBER.finditer(text):
        if overlaps(m.start("num"), m.end("num")):
            continue
        label = _label(m.group("label")) or ""
        claimed = places.country(label)
        if claimed is None:
            continue   # a number with no country after it: a meeting ID, a passcode, a date
        try:
            number = phonenumbers.parse(m.group("num"), claimed)
        except phonenumbers.NumberParseException:
            continue
        if not phonenumbers.is_valid_number(number):
            continue
        line, col = lines.position(m.start("num"))
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        found.append((m.start("num"), Item(DIALIN, e164, m.group("num"), line, col, label=label,
                                           country=phonenumbers.region_code_for_number(number))))
        taken.append((m.start("num"), m.end("num")))

    found.sort(key=lambda pair: pair[0])
    problems.sort(key=lambda p: (p.line, p.column))
    return [item for _, item in found], problems


def heading_lines(text: str) -> list[int]:
    """The 1-based lines holding a heading ("One tap mobile", "Dial by your location", "Join by
    SIP", "H.323:"), so a fix can drop a heading left with nothing under it."""
    return [text.count("\n", 0, offset) + 1 for offset, _ in _sections(text)]


def _sections(text: str) -> list[tuple[int, str | None]]:
    """(offset, protocol) where each heading starts: SIP or H323 under "Join by SIP" / "H.323:",
    None under a phone heading."""
    out: list[tuple[int, str | None]] = []
    offset = 0
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        m = _HEADING.match(stripped)
        if m and not _IPV4.search(stripped):
            out.append((offset, SIP if m.group("what").lower() == "sip" else H323))
        elif _PHONE_HEADING.match(stripped):
            out.append((offset, None))
        offset += len(line)
    return out
