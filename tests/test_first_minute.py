"""What a user sees in the first minute (issue 19, "Small behaviours"): commands stop at the
timeout they report, start-up lines say where decisions go, the consoles of the proxy and the
DNS server speak one format, and ./dev says what it is doing and what to install."""

import os
import re
import socket
import subprocess
import time

from tests.conftest import BIN

RG = str(BIN / "regionguard")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_explain_with_a_dead_name_server_stops_at_the_lifetime_it_reports():
    # A UDP socket that never answers: every query times out.
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    try:
        started = time.monotonic()
        r = subprocess.run([RG, "explain", "dead.zoom.us", "--nameserver",
                            f"127.0.0.1:{dead.getsockname()[1]}"],
                           capture_output=True, text=True, timeout=60)
        took = time.monotonic() - started
    finally:
        dead.close()
    assert r.returncode == 3, r.stderr
    reported = re.search(r"lifetime expired after ([\d.]+) seconds", r.stderr)
    assert reported, r.stderr
    # A bound on behaviour, not a benchmark: the reported lifetime plus the interpreter's
    # start-up, well below a second lifetime (A, then AAAA, each waited the full one).
    assert took < float(reported.group(1)) + 2.0, (took, r.stderr)
