"""The audit log on its own: the line format, the writer thread's batches, the size cap with
rotation, failures that never raise, and lines still queued when the process exits."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

from regionguard.audit import AuditLog, audit_record, timestamp
from regionguard.decision import Action, Decision
from tests.conftest import ROOT

DECISION = Decision(Action.BLOCK, "region-disallowed", "IN is not in the allowed set", True,
                    service="meeting", region="IN", country="IN", group="default",
                    host="in.zoom.us", address="127.0.2.1", port=443, client="127.0.0.1",
                    policy_version="abc")


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_line_is_audit_record_encoded_whatever_the_context(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    contexts = [
        {"mode": "regular", "front_end": "mitmproxy", "hook": "http_connect", "connect_to": None},
        {"mode": "resolver", "front_end": "dns", "dns_kept": [], "dns_dropped": ["127.0.2.1"],
         "dns_ttl": 30, "dns_ok": True},
        {"client": "10.0.0.1", "hook": "x"},            # overrides a decision field
        {"host": "other.zoom.us", "dns_kept": []},      # another name: the DNS filter's case
        {"host": None, "client": "10.0.0.2"},           # more than the host overridden
        {},
    ]
    for context in contexts:
        log.record(DECISION, **context)
    log.close()
    for line, context in zip(_lines(tmp_path / "audit.jsonl"), contexts, strict=True):
        expected = audit_record(DECISION, **context)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
        line["time"] = expected["time"]
        assert list(line.items()) == list(expected.items())   # same keys, same order


def test_a_line_is_byte_for_byte_what_json_dumps_gives(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    contexts = [
        {"mode": "resolver", "front_end": "dns", "host": "m1.zoom.us", "dns_qtype": "A",
         "dns_kept": ["198.51.100.1", "2001:db8::1"], "dns_dropped": [], "dns_outcome": "filtered"},
        {"dns_kept": ['"quoted"', "caf\u00e9", "tab\t"], "dns_ttl": 30, "dns_ok": False},
        {"mixed": ["a", 1, None], "nested": {"k": ["v"]}, "path": tmp_path},   # default=str
    ]
    for context in contexts:
        log.record(DECISION, **context)
    log.close()
    raw = (tmp_path / "audit.jsonl").read_text().splitlines()
    for line, context in zip(raw, contexts, strict=True):
        expected = audit_record(DECISION, **context)
        expected["time"] = json.loads(line)["time"]
        assert line == json.dumps(expected, separators=(",", ":"), default=str)


def test_a_host_in_the_context_gives_the_line_of_the_decision_for_that_host(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", flush_interval=0)
    log.record(DECISION, mode="resolver", host="b.zoom.us", dns_qname="b.zoom.us")
    log.record(DECISION.with_host("b.zoom.us"), mode="resolver", dns_qname="b.zoom.us")
    log.record(DECISION)                                  # the cached fragment: its own host again
    log.close()
    named, renamed, own = _lines(tmp_path / "audit.jsonl")
    renamed["time"] = named["time"]
    assert list(named.items()) == list(renamed.items())
    assert named["host"] == "b.zoom.us" and own["host"] == "in.zoom.us"


def test_timestamp_is_utc_with_milliseconds():
    assert timestamp(0.25) == "1970-01-01T00:00:00.250Z"
    assert timestamp(86_400.999) == "1970-01-02T00:00:00.999Z"


def test_queued_lines_are_written_by_the_writer_in_order(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", flush_interval=0.05)
    for i in range(50):
        log.record(DECISION, mode="regular", n=i)
    log.write_raw({"event": "policy-reload", "ok": True})
    log.close()
    lines = _lines(tmp_path / "audit.jsonl")
    assert [x.get("n") for x in lines] == [*range(50), None]
    assert lines[-1] == {"event": "policy-reload", "ok": True}
    assert log.counters.by_action == {"block": 50} and log.counters.audit_failures == 0


def test_batches_keep_the_size_cap_with_rotation(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, max_bytes=4096, backups=2, flush_interval=60)
    for i in range(200):
        log.record(DECISION, n=i)
    log.flush()   # one batch of 200 lines, far beyond the cap
    files = sorted(tmp_path.glob("audit.jsonl*"))
    assert [f.name for f in files] == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all(f.stat().st_size <= 4096 for f in files)
    newest = [x["n"] for f in (path.with_name("audit.jsonl.2"), path.with_name("audit.jsonl.1"), path)
              for x in _lines(f)]
    assert newest == list(range(200 - len(newest), 200))   # whole lines, the newest kept
    log.close()


def test_an_unwritable_log_counts_its_lost_lines_and_never_raises(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    for interval in (0.0, 0.05):
        log = AuditLog(blocker / "audit.jsonl", flush_interval=interval)
        for _ in range(5):
            log.record(DECISION)
        log.write_raw({"event": "x"})
        log.close()
        assert log.counters.audit_failures == 6


def test_the_queue_is_bounded(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", flush_interval=60, max_pending=10)
    for _ in range(25):
        log.record(DECISION)
    assert log.counters.audit_failures == 15      # lost, counted, and nothing waited
    log.close()
    assert len(_lines(tmp_path / "audit.jsonl")) == 10


def test_lines_still_queued_are_written_when_the_process_dies(tmp_path):
    """No close(): an unhandled exception ends the process; the exit handler writes the queue."""
    path = tmp_path / "audit.jsonl"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from regionguard.audit import AuditLog
        from tests.test_audit import DECISION
        log = AuditLog({str(path)!r}, flush_interval=60)
        for i in range(3):
            log.record(DECISION, n=i)
        raise RuntimeError("crash")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert r.returncode == 1 and "RuntimeError: crash" in r.stderr
    assert [x["n"] for x in _lines(path)] == [0, 1, 2]
