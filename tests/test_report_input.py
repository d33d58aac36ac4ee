"""`regionguard report` on what a new user gives it (issue 19): the policy reloads the proxy
audited (a real `regionguard run` whose policy file is edited, then broken), a recorded session
instead of an audit log, and audit lines that leave a field empty."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

from regionguard.report.summary import RELOADS_KEPT, summarise
from tests.conftest import BIN, ROOT
from tests.proxy_support import Proxy

FIX = ROOT / "tests" / "fixtures" / "replay"
POLICY = "version: 1\naccount: {type: paid, default_region: US}\nregions: {opt_in: [%s]}\n"


def report(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "regionguard"), "report", *map(str, args)],
                          capture_output=True, text=True, timeout=180)


def test_policy_reloads_from_a_real_proxy_are_shown_in_text_json_and_html(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY % "US")
    proxy = Proxy(policy, tmp_path, "--set", "regionguard_reload=1")
    try:
        time.sleep(1.1)                     # a new mtime second: the edit is seen as a change
        policy.write_text(POLICY % "US, DE")
        proxy.wait_for_audit(lambda r: r.get("event") == "policy-reload" and r["ok"])
        time.sleep(1.1)
        policy.write_text(POLICY % "US, Atlantis")
        proxy.wait_for_audit(lambda r: r.get("event") == "policy-reload" and not r["ok"])
    finally:
        proxy.stop()
    events = [json.loads(x) for x in proxy.audit.read_text().splitlines()]
    reloads = [e for e in events if e.get("event") == "policy-reload"]
    failed = next(e for e in reloads if not e["ok"])

    doc = json.loads(report(proxy.audit, "--json").stdout)["policy_reloads"]
    assert doc["ok"] == sum(e["ok"] for e in reloads) >= 1
    assert doc["failed"] == sum(not e["ok"] for e in reloads) >= 1
    [listed] = [r for r in doc["latest"] if not r["ok"]][-1:]
    assert listed["time"] == failed["time"] and "Atlantis" in listed["error"]
    assert listed["policy"] == str(policy) and listed["policy_version"] == failed["policy_version"]

    p = report(proxy.audit)
    assert p.returncode == 0, p.stderr
    assert f"policy reloads: {doc['ok']} ok, {doc['failed']} failed" in p.stdout
    line = next(x for x in p.stdout.splitlines() if "FAILED" in x)
    assert failed["time"] in line and "Atlantis" in line and str(policy) in line

    html = tmp_path / "r.html"
    assert report(proxy.audit, "--html", html).returncode == 0
    page = html.read_text()
    assert "<h2>Policy reloads</h2>" in page
    row = re.search(r"<tr class=fail>(.*?)</tr>", page).group(1)
    assert failed["time"] in row and "Atlantis" in row and "FAILED" in row


def test_reloads_listed_are_bounded_and_all_are_counted(tmp_path):
    log = tmp_path / "audit.jsonl"
    with open(log, "w") as f:
        for i in range(3 * RELOADS_KEPT):
            ok = i % 3 != 0
            f.write(json.dumps({"time": f"2026-11-29T00:{i // 60:02d}:{i % 60:02d}.000Z",
                                "event": "policy-reload", "ok": ok, "policy": "/etc/p.yaml",
                                "policy_version": f"v{i}", **({} if ok else {"error": "x" * 5000})})
                    + "\n")
    s = summarise([log])
    assert (s.reloads_ok, s.reloads_failed) == (2 * RELOADS_KEPT, RELOADS_KEPT)
    latest = s.latest_reloads()
    assert len(latest) == RELOADS_KEPT and latest[-1]["policy_version"] == f"v{3 * RELOADS_KEPT - 1}"
    assert all(len(r["error"]) <= 500 for r in latest)
    p = report(log)
    assert len([x for x in p.stdout.splitlines() if re.match(r"  2026-", x)]) == 10
    assert f"... {3 * RELOADS_KEPT - 10} earlier" in p.stdout


def test_a_har_or_flow_file_given_to_report_is_named_once(tmp_path):
    for session, what in ((FIX / "mixed-session.har", "a HAR file"),
                          (FIX / "mixed-session.mitm", "a mitmproxy flow file")):
        p = report(session, FIX / "eu-session.audit.jsonl")
        assert p.returncode == 4, p.stderr                        # EXIT_INPUT, as unreadable input
        assert "not a JSON audit line" not in p.stdout
        assert p.stdout.count(str(session)) == 2, p.stdout        # the problem and its fix
        assert f"this is {what}" in p.stdout and "not a regionguard audit log" in p.stdout
        assert f"regionguard replay {session}" in p.stdout
        assert re.search(r"\b\d+ decision\(s\)", p.stdout)        # the audit log was counted
        doc = json.loads(report(session, "--json").stdout)
        assert doc["problems"] == 1 and doc["decisions"] == 0


def test_empty_fields_show_as_none_everywhere(tmp_path):
    """Audit lines from before `scope` and `group` existed leave them out: every renderer shows
    the same word for that, never a bare "-"."""
    lines = [json.loads(x) for x in (FIX / "mixed-session.audit.jsonl").read_text().splitlines()]
    for r in lines:
        r.pop("scope", None), r.pop("group", None), r.pop("service", None)
    log = tmp_path / "old.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in lines))
    text = report(log).stdout
    assert re.search(r"^\s+\(none\)\s+\d", text, re.M) and not re.search(r"^\s+-\s+\d", text, re.M)
    doc = json.loads(report(log, "--json").stdout)
    for table in ("by_service", "by_scope", "by_group"):
        assert list(doc[table]) == ["(none)"], doc[table]
    html = tmp_path / "r.html"
    assert report(log, "--html", html).returncode == 0
    page = html.read_text()
    assert ">(none)</text>" in page and ">-</text>" not in page
