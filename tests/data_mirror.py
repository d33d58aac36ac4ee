"""Test support for `regionguard data update`: a mirror of the upstream files on 127.0.0.1.

The files are made from the bundled snapshot (config/data), so an update from an unchanged
mirror reproduces the shipped data: AWS's and Oracle's files verbatim, and Zoom's range files
split back out of zoom-ranges.csv by service (phone → ZoomPhone*.txt, cdn → ZoomCDN*.txt, the
rest → Zoom.txt or ZoomMeetings*.txt by the file the prefix was first seen in). Each file can
be made to misbehave: cut short, replaced by an HTML error page, or answered too late.
"""

from __future__ import annotations

import csv
import ipaddress
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUNDLED = ROOT / "config" / "data"
AWS_NAME = "ip-ranges.json"                 # the official URLs' file names
ORACLE_NAME = "public_ip_ranges.json"
ZOOM_NAMES = ("Zoom.txt", "ZoomMeetings.txt", "ZoomMeetings-IPv6.txt", "ZoomCRC.txt",
              "ZoomPhone.txt", "ZoomPhone-IPv6.txt", "ZoomCC.txt", "ZoomCC-IPv6.txt",
              "ZoomCDN.txt", "ZoomCDN-IPv6.txt", "ZoomApps.txt", "ZoomApps-IPv6.txt")
HTML_ERROR = (b"<!DOCTYPE html><html><head><title>503 Service Unavailable</title></head>"
              b"<body><h1>Service Unavailable</h1></body></html>\n")


def bundled_files() -> dict[str, bytes]:
    """File name (as in the official URL) → content, from the bundled snapshot."""
    files = {AWS_NAME: (BUNDLED / "aws-ip-ranges.json").read_bytes(),
             ORACLE_NAME: (BUNDLED / "oracle-public_ip_ranges.json").read_bytes()}
    lines: dict[str, list[str]] = {name: [] for name in ZOOM_NAMES}
    with open(BUNDLED / "zoom-ranges.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            v6 = ipaddress.ip_network(row["prefix"]).version == 6
            if row["service"] == "phone":
                name = "ZoomPhone-IPv6.txt" if v6 else "ZoomPhone.txt"
            elif row["service"] == "cdn":
                name = "ZoomCDN-IPv6.txt" if v6 else "ZoomCDN.txt"
            elif row["source"].startswith("Zoom.txt"):
                name = "Zoom.txt"
            else:
                name = "ZoomMeetings-IPv6.txt" if v6 else "ZoomMeetings.txt"
            lines[name].append(row["prefix"])
    for name, prefixes in lines.items():
        files[name] = "".join(p + "\n" for p in prefixes).encode()
    return files


class Mirror:
    """An HTTP server on 127.0.0.1 serving `files` at /<name>. `faults`: name → "truncate"
    (Content-Length says the whole file, half is sent, then the connection closes), "html"
    (200 with an HTML error page), "slow" (nothing for `slow_seconds`, or until `release` is
    set), "404", "no-length" (the whole file with no Content-Length: its end is the connection's
    close, as HTTP/1.0)."""

    def __init__(self, files: dict[str, bytes], slow_seconds: float = 5.0) -> None:
        self.files = dict(files)
        self.faults: dict[str, str] = {}
        self.slow_seconds = slow_seconds
        self.release = threading.Event()   # ends every "slow" wait at once (a test's own signal)
        self.requests: list[str] = []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:   # quiet
                pass

            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                mirror.requests.append(name)
                fault = mirror.faults.get(name)
                body = mirror.files.get(name)
                if body is None or fault == "404":
                    self.send_error(404)
                    return
                if fault == "slow":
                    mirror.release.wait(mirror.slow_seconds)
                if fault == "html":
                    body = HTML_ERROR
                self.send_response(200)
                self.send_header("Content-Type", "text/html" if fault == "html"
                                 else "application/octet-stream")
                if fault != "no-length":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    if fault == "truncate":
                        self.wfile.write(body[: len(body) // 2])
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)
                        self.close_connection = True
                        return
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):   # the client gave up (timeout)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()   # no handler left waiting out a long slow_seconds
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Mirror:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def dated_set(root: Path, aws_date: str, zoom_ranges_date: str) -> Path:
    """A data set in force under `root` (REGIONGUARD_DATA_DIR), installed as `regionguard data
    update` installs one, holding the bundled files but dated: AWS's createDate `aws_date`,
    Zoom's ranges fetched on `zoom_ranges_date` (YYYY-MM-DD). Returns the set's directory."""
    import re

    from regionguard.core import datasets
    from regionguard.data.update import install

    files = {name: (BUNDLED / name).read_bytes() for name in datasets.FILES}
    files[datasets.AWS], n = re.subn(rb'"createDate"\s*:\s*"[^"]*"',
                                     f'"createDate": "{aws_date}-00-00-00"'.encode(),
                                     files[datasets.AWS], count=1)
    assert n == 1
    return install(root, files, {"format": 1, "dates": {"zoom-ranges": zoom_ranges_date}})
