"""Invitations as people have them, read into texts to parse and written back with lines removed:

- plain text (pasted from the Zoom client's "Copy invitation"), UTF-8;
- iCalendar files (.ics), read with `icalendar`: each component's DESCRIPTION, LOCATION, COMMENT
  and X-ALT-DESC (HTML); written back with `Calendar.to_ical()`, so the result is a calendar;
- mail (.eml), read with the standard library (`email`, policy=default): every text/plain,
  text/html and text/calendar part, whatever its transfer encoding; written back as a mail whose
  changed parts keep their type, parameters and transfer encoding.

HTML is read a line at a time, a line ending at <br>, </p>, </div>, </li>, </tr> or a heading's
end, as a mail client shows it; removing a line removes its text and its links, and keeps the
other tags, so the markup stays balanced.
"""

from __future__ import annotations

import email
import email.policy
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import icalendar

TEXT, ICS, EML = "text", "ics", "eml"
FORMATS = (TEXT, ICS, EML)
MAX_BYTES = 32 * 1024 * 1024   # an invitation is kilobytes; a mail with attachments megabytes
_ICS_PROPERTIES = ("DESCRIPTION", "LOCATION", "COMMENT", "X-ALT-DESC")


class InputError(Exception):
    """An invitation that cannot be read: names the file, the position and the fix."""

    def __init__(self, file: str, position: str, message: str, fix: str) -> None:
        super().__init__(f"{file}{':' + position if position else ''}: {message}")
        self.file, self.position, self.message, self.fix = file, position, message, fix

    def __str__(self) -> str:
        return f"{self.args[0]}\n    fix: {self.fix}"


@dataclass
class Part:
    """One text of a document: where it is, and the text to parse (HTML: one line per line the
    reader sees)."""

    where: str                 # "" for a plain-text file; "VEVENT 1 DESCRIPTION"; "part 2 text/html"
    text: str
    html: str | None = None    # the HTML this text was read from
    segments: list[tuple[int, int, int]] = field(default_factory=list)   # html: (start, end, next)


@dataclass
class Document:
    path: str
    kind: str
    parts: list[Part]
    problems: list[InputError]         # what was wrong but did not stop the reading
    _source: object = None             # the parsed calendar or message, to write back

    def fixed(self, remove: dict[int, set[int]]) -> bytes:
        """The document with the given lines (1-based, per part index) removed."""
        texts = {i: _without_lines(self.parts[i], lines) for i, lines in remove.items() if lines}
        if self.kind == TEXT:
            return (texts.get(0, self.parts[0].text)).encode("utf-8")
        if self.kind == ICS:
            return _ics_fixed(self._source, self.parts, texts)  # type: ignore[arg-type]
        return _eml_fixed(self._source, self.parts, texts)      # type: ignore[arg-type]


def detect(path: str, data: bytes) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".ics", ".ical", ".ifb", ".icalendar"):
        return ICS
    if suffix == ".eml":
        return EML
    head = data.lstrip()[:200].upper()
    if head.startswith(b"BEGIN:VCALENDAR"):
        return ICS
    if re.match(rb"(?:[!-9;-~]+:[^\n]*\r?\n(?:[ \t][^\n]*\r?\n)*){2,}", data[:4096]) and re.search(
            rb"(?im)^(?:from|subject|mime-version|content-type):", data[:8192]):
        return EML
    return TEXT


def load(path: str, data: bytes, kind: str | None = None) -> Document:
    """Read one invitation. Raises InputError when nothing of it can be read."""
    if len(data) > MAX_BYTES:
        raise InputError(path, "", f"{len(data)} bytes: more than an invitation has ({MAX_BYTES})",
                         "give the invitation itself (text, .ics or .eml)")
    kind = kind or detect(path, data)
    if kind == TEXT:
        return Document(path, TEXT, [Part("", _decode(path, "", data))], [])
    if kind == ICS:
        cal, problems = _read_calendar(path, "", data)
        return Document(path, ICS, list(_calendar_parts(cal, "")), problems, cal)
    return _load_mail(path, data)


# --- plain text ---------------------------------------------------------------------------------


def _decode(path: str, where: str, data: bytes) -> str:
    """UTF-8 (with or without a byte-order mark), or UTF-16 with its mark (what Windows' Notepad
    saves as "Unicode")."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16").replace("\r\n", "\n").replace("\r", "\n")
        except UnicodeDecodeError as e:
            raise InputError(path, f"{where + ' ' if where else ''}byte {e.start}",
                             "not UTF-16 text, although it starts with a UTF-16 mark",
                             "save the invitation as UTF-8") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise InputError(path, f"{where + ' ' if where else ''}line {line} (byte {e.start})",
                         "not UTF-8 text", "save the invitation as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _without_lines(part: Part, lines: set[int]) -> str:
    if part.html is not None:
        return _html_without(part, lines)
    kept = [line for n, line in enumerate(part.text.split("\n"), 1) if n not in lines]
    return "\n".join(kept)


# --- HTML -------------------------------------------------------------------------------------

_LINE_END = re.compile(r"<br\s*/?>|</(?:p|div|li|tr|h[1-6]|table)\s*>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_SKIP = re.compile(r"<(style|script|head)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_LINK = re.compile(r"<a\b[^>]*>|</a\s*>", re.IGNORECASE)


def html_part(where: str, markup: str) -> Part:
    """An HTML text as the lines a mail client shows."""
    hidden = [(m.start(), m.end()) for m in _SKIP.finditer(markup)]
    segments: list[tuple[int, int, int]] = []
    texts: list[str] = []
    start = 0
    for m in [*_LINE_END.finditer(markup), None]:
        end, after = (m.start(), m.end()) if m else (len(markup), len(markup))
        if any(s < end and start < e for s, e in hidden):
            piece = _SKIP.sub("", markup[start:end])
        else:
            piece = markup[start:end]
        texts.append(" ".join(html.unescape(_TAG.sub("", piece)).split()))
        segments.append((start, end, after))
        start = after
    return Part(where, "\n".join(texts), markup, segments)


def _html_without(part: Part, lines: set[int]) -> str:
    markup = part.html or ""
    out: list[str] = []
    for n, (start, end, after) in enumerate(part.segments, 1):
        if n in lines:
            # the tags stay (balanced markup), the text and its links go; a <br> ending it too
            tags = [t for t in _TAG.findall(markup[start:end]) if not _LINK.fullmatch(t)]
            out.append("".join(tags))
            if not re.fullmatch(r"<br\s*/?>", markup[end:after], re.IGNORECASE):
                out.append(markup[end:after])
        else:
            out.append(markup[start:after])
    return "".join(out)


# --- iCalendar ----------------------------------------------------------------------------------


def _read_calendar(path: str, where: str, data: bytes) -> tuple[icalendar.Calendar, list[InputError]]:
    prefix = f"{where} " if where else ""
    try:
        cal = icalendar.Calendar.from_ical(data)
    except ValueError as e:
        raise InputError(path, prefix + _ical_line(data, str(e)), f"not an iCalendar file: {e}",
                         "export the calendar again (BEGIN:VCALENDAR ... END:VCALENDAR)") from None
    if isinstance(cal, list):   # several calendars in one file: icalendar returns a list
        raise InputError(path, prefix.strip(), "more than one VCALENDAR in one file",
                         "give each calendar as a file of its own")
    problems = []
    for component in cal.walk():
        for _, message in getattr(component, "errors", ()):
            problems.append(InputError(path, prefix + _ical_line(data, message),
                                       f"{component.name}: {message} (the line was skipped)",
                                       "correct or remove that line"))
    return cal, problems


def _ical_line(data: bytes, message: str) -> str:
    """The line of the file the parser's message quotes, when it quotes one."""
    m = re.search(r"'(.{3,}?)'", message)
    if m:
        found = data.find(m.group(1).encode("utf-8", "replace"))
        if found >= 0:
            return f"line {data[:found].count(b'\n') + 1}"
    return ""


def _calendar_parts(cal: icalendar.Calendar, where: str) -> Iterator[Part]:
    counts: dict[str, int] = {}
    for component in cal.walk():
        counts[component.name] = counts.get(component.name, 0) + 1
        for prop in _ICS_PROPERTIES:
            if prop not in component:
                continue
            values = component[prop]
            if isinstance(values, list):   # a property given twice: the first one is read
                values = values[0]
            name = f"{where + ' ' if where else ''}{component.name} {counts[component.name]} {prop}"
            text = str(values)
            is_html = prop == "X-ALT-DESC" or str(values.params.get("FMTTYPE", "")).lower() == "text/html"
            yield html_part(name, text) if is_html else Part(name, text.replace("\r\n", "\n"))


def _ics_fixed(cal: icalendar.Calendar, parts: list[Part], texts: dict[int, str]) -> bytes:
    _set_calendar_texts(cal, parts, texts, "")
    return cal.to_ical()


def _set_calendar_texts(cal: icalendar.Calendar, parts: list[Part], texts: dict[int, str],
                        where: str) -> None:
    by_name = {parts[i].where: text for i, text in texts.items()}
    counts: dict[str, int] = {}
    for component in cal.walk():
        counts[component.name] = counts.get(component.name, 0) + 1
        for prop in _ICS_PROPERTIES:
            name = f"{where + ' ' if where else ''}{component.name} {counts[component.name]} {prop}"
            if name in by_name and prop in component:
                old = component[prop]
                if isinstance(old, list):
                    old = old[0]
                new = icalendar.vText(by_name[name])
                new.params = old.params
                component[prop] = new


# --- mail -------------------------------------------------------------------------------------


def _load_mail(path: str, data: bytes) -> Document:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    problems: list[InputError] = []
    if not msg.keys():
        raise InputError(path, "line 1", "not a mail: no header lines",
                         "save the mail as .eml (with its headers), or give the text as a .txt file")
    parts: list[Part] = []
    calendars: dict[int, tuple[icalendar.Calendar, int, int]] = {}   # mail part -> (cal, first, end)
    for number, part in enumerate(msg.walk(), 1):
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype not in ("text/plain", "text/html", "text/calendar"):
            continue
        where = f"part {number} ({ctype})"
        for defect in part.defects:
            problems.append(InputError(path, where, f"{type(defect).__name__}: {defect}",
                                       "the part was read as well as it could be"))
        try:
            content = part.get_content()
        except (LookupError, ValueError) as e:   # an unknown charset, a broken encoding
            problems.append(InputError(path, where, f"cannot be decoded: {e}",
                                       "the part was skipped; re-send the mail as UTF-8"))
            continue
        if isinstance(content, bytes):
            content = _decode(path, where, content)
        if ctype == "text/html":
            parts.append(html_part(where, content))
        elif ctype == "text/calendar":
            try:
                cal, cal_problems = _read_calendar(path, where, content.encode("utf-8"))
            except InputError as e:
                problems.append(e)
                continue
            problems.extend(cal_problems)
            first = len(parts)
            parts.extend(_calendar_parts(cal, where))
            calendars[number] = (cal, first, len(parts))
        else:
            parts.append(Part(where, content.replace("\r\n", "\n")))
    # written back with the line ends it came with (mail on the wire: CRLF)
    linesep = "\r\n" if b"\r\n" in data[:65536] else "\n"
    return Document(path, EML, parts, problems, (msg, calendars, linesep))


def _eml_fixed(source: tuple[EmailMessage, dict, str], parts: list[Part],
               texts: dict[int, str]) -> bytes:
    msg, calendars, linesep = source
    by_where = {parts[i].where: text for i, text in texts.items()}
    for number, part in enumerate(msg.walk(), 1):
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        where = f"part {number} ({ctype})"
        if number in calendars:
            cal, first, end = calendars[number]
            changed = {i: t for i, t in texts.items() if first <= i < end}
            if not changed:
                continue
            _set_calendar_texts(cal, parts, changed, where)
            _replace_content(part, cal.to_ical())   # bytes: the calendar's CRLF lines kept
        elif where in by_where:
            _replace_content(part, by_where[where])
    return msg.as_bytes(policy=email.policy.default.clone(linesep=linesep))


def _replace_content(part: EmailMessage, content: str | bytes) -> None:
    """New content for a part; its type, parameters (method=REQUEST...), disposition and
    transfer encoding are kept. Bytes (a calendar) are kept as they are, line ends included."""
    params = {k: v for k, v in part.get_params(header="content-type")[1:] if k != "charset"}
    cte = part.get("Content-Transfer-Encoding", "").lower()
    disposition = part.get("Content-Disposition")
    had_version = "MIME-Version" in part
    maintype, subtype = part.get_content_type().split("/")
    cte_arg = cte if cte in ("quoted-printable", "base64", "7bit", "8bit") else None
    if isinstance(content, bytes):
        params["charset"] = "utf-8"
        if cte_arg in (None, "7bit") and not content.isascii():
            cte_arg = "quoted-printable"
        part.set_content(content, maintype, subtype, cte=cte_arg or "base64", params=params)
    else:
        if cte_arg == "7bit" and not content.isascii():
            cte_arg = "quoted-printable"
        kwargs = {"subtype": subtype, "charset": "utf-8", "params": params}
        if cte_arg:
            kwargs["cte"] = cte_arg
        part.set_content(content, **kwargs)
    if disposition:
        del part["Content-Disposition"]
        part["Content-Disposition"] = disposition
    if not had_version:   # set_content adds one; a body part has none
        del part["MIME-Version"]
