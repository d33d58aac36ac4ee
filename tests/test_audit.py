"""The audit log on its own: the line format, the writer thread's batches, the size cap with
rotation, failures that never raise, and lines still queued when the process exits. Lost lines
(a full file system, a removed directory) are reported by the real front ends, and an unwritable
path stops them at start-up."""

from __future__ import annotations

import errno
import json
import logging
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from regionguard.audit.log import AuditLog, audit_record, check_audit_path, timestamp
from regionguard.core.decision import Action, Decision
from tests.conftest import BIN, ROOT
from tests.dns_support import POLICY as DNS_POLICY
from tests.dns_support import DnsProcess, ZoneServer, ask
from tests.proxy_support import Proxy, curl

DECISION = Decision(Action.BLOCK, "region-disallowed", "IN is not in the allowed set", True,
                    service="meeting", region="IN", country="IN", group="default",
                    host="in.zoom.us", address="127.0.2.1", port=443, client="127.0.0.1",
                    policy_version="abc")


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# The line of DECISION, written out: front end and mode first, then the decision, then the context.
DECIDED = ('"action":"block","rule":"region-disallowed","reason":"IN is not in the allowed set",'
           '"would":null,"zoom":true,"zoom_why":"","service":"meeting","scope":null,"region":"IN",'
           '"country":"IN","group":"default","host":"in.zoom.us","address":"127.0.2.1","port":443,'
           '"transport":"tcp","client":"127.0.0.1","policy_version":"abc","evidence_source":null,'
           '"evidence_dataset":null,"evidence_date":null,"evidence_matched":null,"conflict":false')


def test_a_line_is_audit_record_encoded_whatever_the_context(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    plain = '{"time":"T","front_end":"","mode":"",' + DECIDED
    cases = [
        ({"mode": "regular", "front_end": "mitmproxy", "hook": "http_connect", "connect_to": None},
         '{"time":"T","front_end":"mitmproxy","mode":"regular",' + DECIDED + ',"hook":"http_connect","connect_to":null}'),
        ({"mode": "resolver", "front_end": "dns", "dns_kept": [], "dns_dropped": ["127.0.2.1"],
          "dns_ttl": 30, "dns_ok": True},
         '{"time":"T","front_end":"dns","mode":"resolver",' + DECIDED
         + ',"dns_kept":[],"dns_dropped":["127.0.2.1"],"dns_ttl":30,"dns_ok":true}'),
        ({"client": "10.0.0.1", "hook": "x"},              # overrides a decision field
         plain.replace('"client":"127.0.0.1"', '"client":"10.0.0.1"') + ',"hook":"x"}'),
        ({"host": "other.zoom.us", "dns_kept": []},        # another name: the DNS filter's case
         plain.replace('"host":"in.zoom.us"', '"host":"other.zoom.us"') + ',"dns_kept":[]}'),
        ({"host": None, "client": "10.0.0.2"},             # more than the host overridden
         plain.replace('"host":"in.zoom.us"', '"host":null')
              .replace('"client":"127.0.0.1"', '"client":"10.0.0.2"') + "}"),
        ({}, plain + "}"),
    ]
    for context, _ in cases:
        log.record(DECISION, **context)
    log.close()
    for line, (context, expected) in zip(_lines(tmp_path / "audit.jsonl"), cases, strict=True):
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
        line["time"] = "T"
        assert list(line.items()) == list(json.loads(expected).items()), context  # keys in order
        assert audit_record(DECISION, **context) | {"time": "T"} == line


def test_a_line_is_byte_for_byte_what_json_dumps_gives(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    cases = [
        ({"mode": "resolver", "front_end": "dns", "host": "m1.zoom.us", "dns_qtype": "A",
          "dns_kept": ["198.51.100.1", "2001:db8::1"], "dns_dropped": [], "dns_outcome": "filtered"},
         '{"time":"T","front_end":"dns","mode":"resolver",'
         + DECIDED.replace('"host":"in.zoom.us"', '"host":"m1.zoom.us"')
         + ',"dns_qtype":"A","dns_kept":["198.51.100.1","2001:db8::1"],"dns_dropped":[],"dns_outcome":"filtered"}'),
        ({"dns_kept": ['"quoted"', "caf\u00e9", "tab\t"], "dns_ttl": 30, "dns_ok": False},
         '{"time":"T","front_end":"","mode":"",' + DECIDED
         + ',"dns_kept":["\\"quoted\\"","caf\\u00e9","tab\\t"],"dns_ttl":30,"dns_ok":false}'),
        ({"mixed": ["a", 1, None], "nested": {"k": ["v"]}, "path": tmp_path},   # default=str
         '{"time":"T","front_end":"","mode":"",' + DECIDED
         + f',"mixed":["a",1,null],"nested":{{"k":["v"]}},"path":"{tmp_path}"}}'),
    ]
    for context, _ in cases:
        log.record(DECISION, **context)
    log.close()
    raw = (tmp_path / "audit.jsonl").read_text().splitlines()
    for line, (context, expected) in zip(raw, cases, strict=True):
        written = re.fullmatch(r'\{"time":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)"(,.*)', line)
        assert written, line
        assert '{"time":"T"' + written[2] == expected, context


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
    # and as many as the cap holds: the two backups are full (another line would not fit)
    line_bytes = max(len(x) + 1 for x in path.read_text().splitlines())
    for backup in (path.with_name("audit.jsonl.1"), path.with_name("audit.jsonl.2")):
        assert backup.stat().st_size + line_bytes > 4096, backup
    assert _lines(path) and len(newest) >= 2 * (4096 // line_bytes)
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
        from regionguard.audit.log import AuditLog
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


# --- lost lines are reported: at the first loss, then with a count; an unwritable path at start-up


@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs mounted for the test: a file system that really fills up (needs root)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mount)],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {r.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def fill(directory) -> Path:
    """Fill the file system holding `directory`; returns the filler file (delete it to free it)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for _ in range(10_000):     # bounded: 64 KiB fills in a few writes
            try:
                f.write(b"x" * 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                return filler
    raise AssertionError("the file system never filled up")


def test_a_full_file_system_is_reported_at_the_first_loss_then_with_a_count_then_recovery(tiny_fs, caplog):
    caplog.set_level(logging.INFO, logger="regionguard.audit")
    filler = fill(tiny_fs)
    log = AuditLog(tiny_fs / "audit.jsonl", report_every=0.3)
    started = time.monotonic()
    for _ in range(100):         # ≥ 1.2 s of lost lines: a report every 0.3 s, each with its count
        log.record(DECISION)
        time.sleep(0.012)
    elapsed = time.monotonic() - started   # longer on a busy machine: so many more reports
    reports = [r.getMessage() for r in caplog.records if "line(s) lost so far" in r.getMessage()]
    counts = [int(re.search(r"(\d+) line\(s\) lost so far", m).group(1)) for m in reports]
    assert 2 <= len(reports) <= 2 + elapsed / 0.3, (elapsed, reports)   # not one per line, not once
    assert counts[0] == 1 and counts == sorted(counts) and "No space left" in reports[0]
    assert log.counters.audit_failures == 100 and log.counters.snapshot()["audit_failures"] == 100
    filler.unlink()
    log.record(DECISION)
    log.close()
    assert any("written again (100 line(s) lost in all)" in r.getMessage() for r in caplog.records)
    assert len(_lines(tiny_fs / "audit.jsonl")) == 1


def test_a_deleted_log_file_is_noticed_counted_and_started_again(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="regionguard.audit")
    directory = tmp_path / "audit"
    for interval in (0.0, 0.05):
        log = AuditLog(directory / "audit.jsonl", flush_interval=interval)
        for _ in range(3):
            log.record(DECISION)
        log.flush()
        shutil.rmtree(directory)            # the file stays open: writes "succeed", unseen
        log.record(DECISION)
        log.close()
        assert log.counters.audit_failures == 3
        assert any("deleted or its directory removed, with the 3 line(s)" in r.getMessage()
                   for r in caplog.records)
        assert len(_lines(directory / "audit.jsonl")) == 1     # a new file, where it was
        shutil.rmtree(directory)
        caplog.clear()


def test_a_log_renamed_away_is_not_a_loss(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.record(DECISION)
    path.rename(tmp_path / "rotated.jsonl")          # logrotate's way
    log.record(DECISION)
    log.close()
    assert log.counters.audit_failures == 0
    assert len(_lines(tmp_path / "rotated.jsonl")) == 1 and len(_lines(path)) == 1


def test_check_audit_path_says_what_cannot_be_written(tmp_path):
    assert check_audit_path(tmp_path / "new" / "dir" / "audit.jsonl") is None
    blocker = tmp_path / "file"
    blocker.write_text("")
    problem = check_audit_path(blocker / "audit.jsonl")
    assert problem is not None and "is not a directory" in str(problem) and "--audit" in str(problem)
    assert "is a directory" in str(check_audit_path(tmp_path, "regionguard_audit"))


def test_regionguard_dns_refuses_an_unwritable_audit_path_before_listening(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = subprocess.run([str(BIN / "regionguard"), "dns", "--listen", "127.0.0.1:0", "--upstream",
                        "127.0.0.1:9", "--audit", str(blocker / "audit.jsonl")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "--audit" in r.stderr and "cannot be written" in r.stderr and "listening" not in r.stderr


def test_the_proxy_addon_refuses_an_unwritable_audit_path_at_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = subprocess.run([str(BIN / "mitmdump"), "-s", str(ROOT / "addons" / "regionguard_addon.py"),
                        "--listen-host", "127.0.0.1", "--listen-port", "0",
                        "--set", f"confdir={tmp_path / 'conf'}",
                        "--set", f"regionguard_audit={blocker / 'audit.jsonl'}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "regionguard_audit" in r.stdout + r.stderr and "cannot be written" in r.stdout + r.stderr


def _dns_until(server, predicate, timeout: float = 30.0) -> None:
    """Ask new Zoom names (each one audited) until predicate() holds; bounded in time."""
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        n += 1
        ask(server.port, f"q{n}-{time.monotonic_ns()}.wild.zoom.us", timeout=5)
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s; server log:\n{''.join(server.log)}")


def test_regionguard_dns_reports_a_removed_audit_directory(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(DNS_POLICY)
    audit = tmp_path / "audit" / "dns.jsonl"
    zone = ZoneServer()
    server = DnsProcess(policy, [zone.address], audit=audit)
    try:
        _dns_until(server, lambda: audit.exists() and audit.stat().st_size > 0)
        shutil.rmtree(audit.parent)
        _dns_until(server, lambda: "line(s) lost so far" in "".join(server.log))
        assert "directory removed" in "".join(server.log)
        _dns_until(server, lambda: audit.exists() and audit.stat().st_size > 0)   # started again
    finally:
        server.close()
        zone.close()


def test_regionguard_dns_reports_a_full_file_system_and_its_recovery(tiny_fs):
    policy = tiny_fs.parent / "policy.yaml"
    policy.write_text(DNS_POLICY)
    audit = tiny_fs / "dns.jsonl"
    filler = fill(tiny_fs)
    zone = ZoneServer()
    server = DnsProcess(policy, [zone.address], audit=audit)
    try:
        _dns_until(server, lambda: "line(s) lost so far" in "".join(server.log))
        assert "No space left" in "".join(server.log)
        filler.unlink()
        _dns_until(server, lambda: "written again" in "".join(server.log))
        assert re.search(r"written again \(\d+ line\(s\) lost in all\)", "".join(server.log))
        assert audit.stat().st_size > 0
    finally:
        server.close()
        zone.close()


def test_the_proxy_reports_a_removed_audit_directory(tmp_path):
    from tests.test_proxy import policy_text
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    audit = tmp_path / "audit" / "proxy.jsonl"
    proxy = Proxy(policy, tmp_path, "--set", f"regionguard_audit={audit}", audit=False,
                  command="mitmdump")
    try:
        def blocked_requests_until(predicate, timeout: float = 30.0) -> None:
            deadline = time.monotonic() + timeout
            while not predicate():
                assert time.monotonic() < deadline, proxy.output()
                curl("-x", proxy.url, "-m", "5", "http://in.zoom.us/")    # blocked, audited
                time.sleep(0.1)

        blocked_requests_until(lambda: audit.exists() and audit.stat().st_size > 0)
        shutil.rmtree(audit.parent)
        blocked_requests_until(lambda: "line(s) lost so far" in proxy.output())
        assert "directory removed" in proxy.output()
    finally:
        proxy.stop()
