"""Recorded sessions as connections to decide: mitmproxy flow files, HAR files, audit logs.

Every reader yields `Connection`s (what the client reached: host/SNI, address, port, transport)
and `InputProblem`s (what could not be read, with file and position), and keeps going after a bad
record wherever the format allows: a bad audit line or HAR entry is skipped; a corrupt flow in a
`.mitm` file is skipped by finding the next flow boundary; a truncated file ends where it ends.

Nothing here opens a network connection: a name recorded without an address is looked up only in
the policy's static `resolver.hosts` (by the caller), never in DNS.

Formats, told apart by content (the extension only breaks ties):
- mitmproxy flow files (`mitmdump -w`): tnetstrings of flow states, read with mitmproxy's own
  migration code so files from older mitmproxy versions work;
- HAR 1.2 (browsers, mitmproxy's `hardump`): `serverIPAddress` is the address, when present;
- regionguard audit logs (JSON lines, `regionguard/audit/log.py`), optionally gzip-compressed;
- packet captures, pcap and pcapng (`regionguard/replay/pcap.py`): one connection per TCP/UDP flow, and
  the capture's DNS answers handed to an `observe_dns` callback in capture order.
"""

from __future__ import annotations

import gzip
import io
import json
import mmap
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from regionguard.core.prefixes import is_address
from regionguard.replay.pcap import CaptureProblem, DnsAnswer, is_capture, read_capture

Progress = Callable[[int], None]   # called with the number of bytes read so far

# What a resolved name is for, as the DNS front end decides it (regionguard.dns.filter): HTTPS.
DNS_ANSWER_PORT, DNS_ANSWER_TRANSPORT = 443, "tcp"


@dataclass(frozen=True, slots=True)
class Connection:
    """One recorded connection or request, as the decision engine needs it."""

    file: str
    position: str                 # where in the file: "flow 3 (byte 1234)", "entry 5", "line 17"
    kind: str                     # http, tcp, udp, dns, har, audit, pcap
    client: str | None
    host: str | None              # hostname or SNI, when recorded
    address: str | None           # the address connected to, when recorded
    port: int
    transport: str = "tcp"
    recorded: str | None = None   # the action recorded at the time (audit line, addon's mark)


@dataclass(frozen=True, slots=True)
class InputProblem:
    """A record that could not be read: file, position, what is wrong, what to do."""

    file: str
    position: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.file}: {self.position}: {self.message}"
        return f"{text}\n    fix: {self.fix}" if self.fix else text

    def to_dict(self) -> dict:
        return {"file": self.file, "position": self.position, "message": self.message,
                "fix": self.fix}


Record = Connection | InputProblem
FORMATS = ("mitm", "har", "audit", "pcap")
# Told a capture's DNS answers, in capture order, interleaved with the connections yielded:
# (capture time, name, addresses). Replay feeds them to the learned evidence.
ObserveDns = Callable[[float, str, tuple[str, ...]], None]


# --- format detection ---------------------------------------------------------------------------


def _open(path: Path) -> BinaryIO:
    f = open(path, "rb")  # noqa: SIM115 - the caller closes it
    if f.read(2) == b"\x1f\x8b":
        f.seek(0)
        return gzip.open(f)  # type: ignore[return-value]
    f.seek(0)
    return f


def detect_format(path: str | Path) -> str:
    """mitm, har, audit or pcap: by the first bytes, then by the extension."""
    path = Path(path)
    with open(path, "rb") as raw:
        if is_capture(raw.read(4)):
            return "pcap"
    with _open(path) as f:
        head = f.read(4096)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1].isdigit():
        return "mitm"
    if text.startswith(b"{"):
        # A HAR is one JSON document whose first key is (almost always) "log"; audit lines are
        # one object per line, each with "time".
        if re.match(rb'\{\s*"log"\s*:', text) or path.suffix.lower() == ".har":
            return "har"
        return "audit"
    suffix = path.suffix.lower()
    if suffix == ".har":
        return "har"
    if suffix in (".pcap", ".pcapng", ".cap"):
        return "pcap"   # an empty or headless capture: the pcap reader says what is wrong
    if suffix in (".jsonl", ".json", ".log", ".gz") or ".jsonl" in path.name:
        return "audit"
    return "mitm"


FORMAT_NAMES = {"mitm": "a mitmproxy flow file (mitmdump -w)",
                "har": "a HAR file (HTTP requests exported by a browser or mitmproxy)",
                "audit": "a regionguard audit log", "pcap": "a packet capture (pcap/pcapng)"}

# A flow file starts with a tnetstring dict: `LENGTH:` then its first key, itself a tnetstring
# string `LENGTH:BYTES` closed by `;` (text) or `,` (bytes).
_TNETSTRING_DICT_START = re.compile(rb"\d{1,10}:(\d{1,10}):")


def starts_like_flow_file(f: BinaryIO) -> bool:
    """Does the stream (at its start) open a tnetstring dict, as every mitmproxy flow file does?
    A text file that happens to start with a digit does not: `12 meetings` has no `12:`, and in
    `12:30:45 ...` no key of 30 bytes ends in `;` or `,`. Only the start is checked: a first flow
    that is corrupt further in is the reader's to report (and to skip)."""
    start = f.tell()
    try:
        head = f.read(64)
        m = _TNETSTRING_DICT_START.match(head)
        if m is None:
            return False
        f.seek(start + m.end() + int(m.group(1)))
        return f.read(1) in (b";", b",")
    finally:
        f.seek(start)


def is_flow_file(path: str | Path) -> bool:
    with _open(Path(path)) as f:
        return starts_like_flow_file(f)


def read_connections(path: str | Path, *, fmt: str | None = None,
                     progress: Progress | None = None,
                     observe_dns: ObserveDns | None = None) -> Iterator[Record]:
    """Every connection recorded in one file, and a problem for every part that is unreadable.
    For a capture, `observe_dns` is told each DNS answer before the connections that follow it
    in capture time are yielded."""
    path = Path(path)
    name = str(path)
    try:
        fmt = fmt or detect_format(path)
    except (OSError, EOFError, zlib.error) as e:
        yield InputProblem(name, "file", f"cannot read: {getattr(e, 'strerror', None) or e}",
                           "check the path and permissions")
        return
    try:
        if fmt == "pcap":
            yield from _read_pcap(path, progress, observe_dns)
            return
        reader = {"mitm": _read_mitm, "har": _read_har, "audit": _read_audit}[fmt]
        yield from reader(path, progress)
    except (OSError, EOFError, zlib.error) as e:
        yield InputProblem(name, "file", f"read failed: {e}", "check the file and the disk")


# --- mitmproxy flow files -----------------------------------------------------------------------


def _read_mitm(path: Path, progress: Progress | None) -> Iterator[Record]:
    from mitmproxy.io import compat, tnetstring  # mitmproxy is regionguard's own dependency

    name = str(path)
    with _open(path) as f:
        if not starts_like_flow_file(f):
            head = f.read(40)
            if not head:
                return     # an empty flow file: mitmdump -w with nothing recorded
            yield InputProblem(name, "byte 0", "not a mitmproxy flow file: it does not start with "
                               f"a tnetstring (it starts {_preview(head)}); nothing in it was "
                               "replayed",
                               "replay reads mitmproxy flow files (mitmdump -w), HAR files, "
                               "regionguard audit logs (JSON lines) and pcap/pcapng captures; "
                               "pass one of those, or --format if the detection was wrong")
            return
        number = 0
        read = 0       # flows read so far: what the fix text may claim was replayed
        while True:
            start = f.tell()
            if not f.read(1):
                return
            f.seek(start)
            number += 1
            where = f"flow {number} (byte {start})"
            try:
                state = tnetstring.load(f)
            except (ValueError, TypeError, IndexError) as e:
                end = _file_size(f)
                before = (f"the {read} flow(s) before it were replayed" if read
                          else "no flow before it was read")
                if _looks_truncated(f, start, end):
                    yield InputProblem(name, where, f"file ends inside a flow ({end - start} of its "
                                       "bytes present): the file is truncated",
                                       f"{before}; re-record or copy the file again if the "
                                       "session continued")
                    return
                resume = _next_flow_offset(f, start + 1)
                after = (f"replay went on at the next whole flow (byte {resume})"
                         if resume is not None else "no readable flow follows it")
                yield InputProblem(name, where, f"corrupt flow: {_short(e)}", f"{before}; {after}")
                if resume is None:
                    return
                f.seek(resume)
                continue
            try:
                if not isinstance(state, dict) or "type" not in state:
                    raise ValueError("not a flow (no 'type')")
                flow = _flow_from_state(compat.migrate_flow(state))
            except Exception as e:  # noqa: BLE001 - any malformed state: report it, go on
                yield InputProblem(name, where, f"unreadable flow: {_short(e)}",
                                   "the other readable flows were replayed; was this file "
                                   "written by mitmproxy (mitmdump -w)?")
                continue
            read += 1
            if progress:
                progress(f.tell() if not isinstance(f, gzip.GzipFile) else f.fileobj.tell())
            yield from _flow_connections(flow, name, f"flow {number} (byte {start})")


def _flow_from_state(state: dict) -> Any:
    from mitmproxy import flow as mflow

    return mflow.Flow.from_state(state)


def _short(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) < 160 else text[:157] + "..."


def _file_size(f: BinaryIO) -> int:
    if isinstance(f, gzip.GzipFile):
        return -1
    pos = f.tell()
    size = f.seek(0, io.SEEK_END)
    f.seek(pos)
    return size


def _looks_truncated(f: BinaryIO, start: int, end: int) -> bool:
    """Does the flow at `start` declare more bytes than the file has left?"""
    if end < 0:
        return False
    f.seek(start)
    head = f.read(12)
    m = re.match(rb"(\d{1,10}):", head)
    return m is not None and start + m.end() + int(m.group(1)) + 1 > end


_FLOW_START = re.compile(rb"(\d{1,10}):")
_FLOW_TYPES = ("http", "tcp", "udp", "dns", b"http", b"tcp", b"udp", b"dns")


def _next_flow_offset(f: BinaryIO, offset: int) -> int | None:
    """The next offset holding a whole tnetstring dict that is a flow (skipping a corrupt one)."""
    from mitmproxy.io import tnetstring

    if isinstance(f, gzip.GzipFile):
        return None   # no random access: stop at the corruption
    fileno = f.fileno()
    with mmap.mmap(fileno, 0, access=mmap.ACCESS_READ) as m:
        for match in _FLOW_START.finditer(m, offset):
            length = int(match.group(1))
            end = match.end() + length
            if end >= len(m) or m[end:end + 1] != b"}":
                continue
            try:
                state = tnetstring.loads(m[match.start():end + 1])
            except (ValueError, TypeError, IndexError):
                continue
            if isinstance(state, dict) and state.get("type") in _FLOW_TYPES and "version" in state:
                return match.start()
    return None


def _peer(addr: Any) -> tuple[str | None, int | None]:
    if not addr:
        return None, None
    return str(addr[0]), int(addr[1]) if len(addr) > 1 and addr[1] is not None else None


def _recorded_mark(flow: Any) -> str | None:
    """The regionguard addon notes its decision in the flow's comment: 'regionguard: ACTION ...'."""
    comment = getattr(flow, "comment", "") or ""
    m = re.match(r"regionguard: (\w+)", comment)
    return m.group(1) if m else None


def _flow_connections(flow: Any, name: str, where: str) -> Iterator[Connection]:
    kind = flow.type
    client, _ = _peer(flow.client_conn.peername)
    server = flow.server_conn
    address, port = _peer(server.peername)
    named_host, named_port = _peer(server.address)
    transport = "udp" if getattr(server, "transport_protocol", "tcp") == "udp" else "tcp"
    recorded = _recorded_mark(flow)
    if kind == "dns":
        yield from _dns_connections(flow, name, where, client)
        return
    host = server.sni or None
    if kind == "http":
        req = flow.request
        if host is None:
            for candidate in (req.host, req.host_header):
                if candidate and not is_address(candidate.split(":")[0].strip("[]")):
                    host = candidate.split(":")[0] if candidate.count(":") == 1 else candidate
                    break
        if address is None and is_address(req.host):
            address = req.host
        port = port or named_port or req.port
    if host is None and named_host and not is_address(named_host):
        host = named_host
    if address is None and named_host and is_address(named_host):
        address = named_host
    if port is None:
        port = named_port or 443
    yield Connection(name, where, kind, client, host, address, int(port), transport, recorded)


def _dns_connections(flow: Any, name: str, where: str, client: str | None) -> Iterator[Connection]:
    response = flow.response
    if response is None:
        return
    for answer in response.answers:
        if answer.type not in (1, 28):   # A, AAAA
            continue
        try:
            address = str(answer.ipv4_address if answer.type == 1 else answer.ipv6_address)
        except ValueError:
            continue
        yield Connection(name, where, "dns", client, answer.name.rstrip("."), address,
                         DNS_ANSWER_PORT, DNS_ANSWER_TRANSPORT, _recorded_mark(flow))


# --- HAR ------------------------------------------------------------------------------------------


def _read_har(path: Path, progress: Progress | None) -> Iterator[Record]:
    name = str(path)
    with _open(path) as f:
        raw = f.read()
    if progress:
        progress(len(raw))
    try:
        doc = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        yield InputProblem(name, f"byte {e.start}", "not UTF-8 text, so not a HAR file",
                           "pass a HAR exported by a browser or mitmproxy (hardump)")
        return
    except json.JSONDecodeError as e:
        yield InputProblem(name, f"line {e.lineno} column {e.colno}",
                           f"not valid JSON ({e.msg}), so not a readable HAR file",
                           "re-export the HAR; a truncated download or copy ends mid-document")
        return
    entries = doc.get("log", {}).get("entries") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        yield InputProblem(name, "log.entries", "missing: this JSON document is not a HAR file",
                           "pass a HAR 1.2 file (an object with log.entries)")
        return
    for i, entry in enumerate(entries):
        where = f"entry {i} (log.entries[{i}])"
        try:
            yield _har_connection(entry, name, where)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            yield InputProblem(name, where, f"unreadable entry: {_short(e)}",
                               "each entry needs request.url; the other entries were replayed")


def _har_connection(entry: dict, name: str, where: str) -> Connection:
    url = entry["request"]["url"]
    method = str(entry["request"].get("method", "GET")).upper()
    if method == "CONNECT" and "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"request.url {url!r} has no host")
    host = parts.hostname
    port = parts.port or {"http": 80, "ws": 80}.get(parts.scheme, 443)
    address = str(entry.get("serverIPAddress") or "").strip("[]") or None
    if address is not None and not is_address(address):
        address = None
    if is_address(host):
        address = address or host
        host = None
    return Connection(name, where, "har", None, host, address, port, "tcp", None)


# --- audit logs -------------------------------------------------------------------------------------


def iter_audit_lines(path: str | Path, progress: Progress | None = None
                     ) -> Iterator[tuple[int, dict] | InputProblem]:
    """(line number, record) for each audit line; a problem for each line that is not one.
    Event lines (policy reloads) are yielded too: they carry "event" and no decision."""
    name = str(path)
    with _open(Path(path)) as f:
        raw_file = f.fileobj if isinstance(f, gzip.GzipFile) else f
        number = 0
        while True:
            try:
                line = f.readline()
            except (EOFError, zlib.error, OSError) as e:  # a gzip file cut short, a bad disk
                yield InputProblem(name, f"after line {number}", f"unreadable: {e}",
                                   "the lines before were read; a log cut short by a crash is "
                                   "otherwise harmless")
                return
            if not line:
                break
            number += 1
            if progress and number % 2048 == 0:
                progress(raw_file.tell())
            text = line.strip()
            if not text:
                continue
            try:
                record = json.loads(text)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                msg = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8"
                col = f" column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
                yield InputProblem(name, f"line {number}{col}",
                                   f"not a JSON audit line ({msg}): {_preview(text)}",
                                   "the other lines were read; a line cut short by a crash or "
                                   "a full disk is harmless")
                continue
            if not isinstance(record, dict):
                yield InputProblem(name, f"line {number}", "not a JSON object",
                                   "audit lines are objects written by regionguard")
                continue
            yield number, record
        if progress:
            progress(raw_file.tell())


def _preview(text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return repr(text[:60] + ("..." if len(text) > 60 else ""))


def _read_audit(path: Path, progress: Progress | None) -> Iterator[Record]:
    name = str(path)
    for item in iter_audit_lines(path, progress):
        if isinstance(item, InputProblem):
            yield item
            continue
        number, record = item
        if "event" in record and "action" not in record:
            continue   # a policy reload or another event: no connection
        where = f"line {number}"
        address, host = record.get("address"), record.get("host")
        port = record.get("port")
        if not address and not host:
            yield InputProblem(name, where, "audit line has neither 'address' nor 'host'",
                               "was this file written by regionguard?")
            continue
        try:
            port = int(port)
        except (TypeError, ValueError):
            yield InputProblem(name, where, f"audit line has no valid 'port' ({port!r})",
                               "was this file written by regionguard?")
            continue
        transport = record.get("transport") or "tcp"
        if transport not in ("tcp", "udp"):
            yield InputProblem(name, where, f"'transport' is {transport!r}, not tcp or udp",
                               "was this file written by regionguard?")
            continue
        yield Connection(name, where, "audit", record.get("client") or None, host or None,
                         address or None, port, transport, record.get("action"))


# --- packet captures ----------------------------------------------------------------------------


def _read_pcap(path: Path, progress: Progress | None, observe_dns: ObserveDns | None
               ) -> Iterator[Record]:
    name = str(path)
    for item in read_capture(path, progress):
        if isinstance(item, CaptureProblem):
            yield InputProblem(name, item.position, item.message, item.fix)
        elif isinstance(item, DnsAnswer):
            if observe_dns is not None:
                observe_dns(item.time, item.name, item.addresses)
        else:
            where = f"packet {item.packet}"
            yield Connection(name, where, "pcap", item.client, item.sni, item.server,
                             item.port, item.transport, None)
