"""The pytest plugin, used the way a team would: a test file in another directory, run by pytest in a
subprocess, finding the `regionguard_replay` fixture through the installed entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

from tests.conftest import ROOT

FIX = ROOT / "tests" / "fixtures" / "replay"

TEAM_TESTS = textwrap.dedent("""
    import pytest

    def test_eu_recording_complies(regionguard_replay):
        regionguard_replay("rec/eu-session.mitm", "rec/eu-session.audit.jsonl").assert_complies()

    def test_mixed_recording_complies(regionguard_replay):
        regionguard_replay("rec/mixed-session.har").assert_complies()

    def test_policy_named_by_the_test(regionguard_replay):
        result = regionguard_replay("rec/mixed-session.har", policy="rec/policy-record.yaml")
        assert {r.decision.region for r in result.failing} == {"CN"}

    def test_missing_recording_is_an_error(regionguard_replay):
        with pytest.raises(FileNotFoundError, match="no-such.mitm"):
            regionguard_replay("rec/no-such.mitm")
""")


def test_team_writes_compliance_tests_with_the_fixture(tmp_path):
    rec = tmp_path / "rec"
    rec.mkdir()
    for f in FIX.glob("*-session.*"):
        shutil.copy(f, rec)
    shutil.copy(FIX / "policy-eu.yaml", rec)
    shutil.copy(FIX / "policy-record.yaml", rec)
    (tmp_path / "test_recordings.py").write_text(TEAM_TESTS)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--rootdir", str(tmp_path), "--regionguard-policy", "rec/policy-eu.yaml",
                        "test_recordings.py"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=180)
    out = p.stdout + p.stderr
    assert "1 failed, 3 passed" in out, out
    # the failure names every offending connection and why
    failure = out[out.index("test_mixed_recording_complies"):]
    assert "ReplayComplianceError" in failure
    for host in ("us01web.zoom.us", "in01web.zoom.us", "cn01web.zoom.us"):
        assert host in failure
    assert "not in the allowed set" in failure
