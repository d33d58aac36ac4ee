"""Issue 12 item 1: the proxy never runs without its addon. Every regionguard_* option is
checked (one set of rules, regionguard.mitm.options, shared by `regionguard run` and the
addon); a bad value stops `regionguard run` with exit 2 before anything listens and stops
`mitmdump -s addons/regionguard_addon.py`; a script that is gone or unconfigured leaves Zoom blocked.
Real processes, real curl, origins on loopback."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import BIN, ROOT
from tests.proxy_support import Proxy, curl, origins_on_one_port, status_of
from tests.test_proxy import DE, IN, OTHER, policy_text

ADDON = ROOT / "addons" / "regionguard_addon.py"
EXIT_WITHIN = 90   # seconds: a process that is still running by then runs without its checks


@pytest.fixture(scope="module")
def web():
    servers = origins_on_one_port([DE, IN, OTHER])
    yield servers
    for s in servers.values():
        s.stop()


@pytest.fixture
def policy(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text())
    return path


def _run(cmd: list[str], tmp_path) -> subprocess.CompletedProcess:
    """Run a proxy command that must refuse to start; one still running after EXIT_WITHIN
    seconds is killed and reported as the failure it is."""
    try:
        return subprocess.run(cmd + ["--listen-host", "127.0.0.1", "--listen-port", "0",
                                     "--set", f"confdir={tmp_path / 'conf'}"],
                              capture_output=True, text=True, timeout=EXIT_WITHIN, cwd=tmp_path)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
        pytest.fail(f"{cmd} kept running (without its checks):\n{out}")


BAD_VALUES = [
    (["--set", "regionguard_reload=abc"], "regionguard_reload: 'abc' is not a whole number"),
    (["--set", "regionguard_reload=-1"], "regionguard_reload: -1 is out of range"),
    (["--set", "regionguard_reload"], "regionguard_reload: needs a value"),
    (["--set", "regionguard_reload=5", "--set", "regionguard_reload=6"],
     "regionguard_reload: given 2 times"),
    (["--set", "regionguard_audit_flush_ms=abc"], "regionguard_audit_flush_ms: 'abc' is not a whole number"),
    (["--set", "regionguard_audit_flush_ms=-5"], "regionguard_audit_flush_ms: -5 is out of range"),
    (["--set", "regionguard_audit_flush_ms=99999999"], "regionguard_audit_flush_ms: 99999999 is out of range"),
    (["--set", "regionguard_audit_pass=maybe"], "regionguard_audit_pass: 'maybe' is not a boolean"),
    (["--set", "regionguard_audit_max_bytes=10"], "regionguard_audit_max_bytes: 10 is out of range"),
    (["--set", "regionguard_audit_max_bytes=1e9"], "regionguard_audit_max_bytes: '1e9' is not a whole number"),
    (["--set", "regionguard_audit_backups=-1"], "regionguard_audit_backups: -1 is out of range"),
    (["--set", "regionguard_intercept=sometimes"],
     "regionguard_intercept: 'sometimes' is not valid; use one of none, non-zoom, all"),
    (["--set", "regionguard_pac_path=proxy.pac"], "regionguard_pac_path: 'proxy.pac' must start with '/'"),
    (["--set", "regionguard_pac_proxy=nope"], "regionguard_pac_proxy: 'nope' is not HOST:PORT"),
    (["--set", "regionguard_polcy=x.yaml"], "regionguard_polcy: unknown option"),
]


@pytest.mark.parametrize("args, expected", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_regionguard_run_refuses_a_bad_option_with_exit_2_before_listening(tmp_path, policy, args, expected):
    r = _run([str(BIN / "regionguard"), "run", "--policy", str(policy), *args], tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert expected in r.stderr
    assert "listening" not in r.stdout + r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("args, expected", [
    (["--set", "regionguard_policy={policy}"],
     "the policy is given twice (--policy and --set regionguard_policy); give it once"),
    (["--audit", "a.jsonl", "--set", "regionguard_audit=b.jsonl"], "the audit log is given twice"),
    (["-s", str(ADDON)], "regionguard run loads its addon itself"),
], ids=["policy-twice", "audit-twice", "addon-script-twice"])
def test_regionguard_run_never_passes_an_option_twice(tmp_path, policy, args, expected):
    args = [a.format(policy=policy) for a in args]
    r = _run([str(BIN / "regionguard"), "run", "--policy", str(policy), *args], tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert expected in r.stderr and "listening" not in r.stdout + r.stderr


@pytest.mark.parametrize("how", ["--audit", "--set"])
def test_regionguard_run_refuses_an_unwritable_audit_log_before_listening(tmp_path, policy, how):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log's directory should be\n")
    target = blocker / "audit.jsonl"
    args = ["--audit", str(target)] if how == "--audit" else ["--set", f"regionguard_audit={target}"]
    r = _run([str(BIN / "regionguard"), "run", "--policy", str(policy), *args], tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "the audit log cannot be written" in r.stderr and "not a directory" in r.stderr
    assert "listening" not in r.stdout + r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("line, expected", [
    ("regionguard_reload: abc", "regionguard_reload: 'abc' is not a whole number"),
    ("regionguard_audit_pass: 3", "regionguard_audit_pass: 3 is not a boolean"),
    ("regionguard_reload: 2", "regionguard_reload: given twice (--set and the mitmproxy config file)"),
])
def test_regionguard_run_checks_mitmproxys_config_file_too(tmp_path, policy, line, expected):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(line + "\n")
    r = _run([str(BIN / "regionguard"), "run", "--policy", str(policy),
              "--set", "regionguard_reload=3"], tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert expected in r.stderr and "listening" not in r.stdout + r.stderr


def test_set_regionguard_policy_alone_is_the_policy_and_is_enforced(tmp_path, policy, web):
    """`--set regionguard_policy=FILE` without --policy is taken as the policy (passed once)."""
    proxy = Proxy(policy, tmp_path, "--set", f"regionguard_policy={policy}", audit=False,
                  command="run-no-policy")
    try:
        r = curl("-x", proxy.url, f"http://in.zoom.us:{web[IN].port}/")
        assert status_of(r) == 403 and "X-Regionguard-Region: IN" in r.stdout
        ok = curl("-x", proxy.url, f"http://de.zoom.us:{web[DE].port}/")
        assert status_of(ok) == 200
    finally:
        proxy.stop()


MITMDUMP_BAD = [a for a in BAD_VALUES] + [
    (["--set", "regionguard_policy={policy}", "--set", "regionguard_policy={policy}"],
     "regionguard_policy: given 2 times"),
    (["--set", "regionguard_policy=/nonexistent/policy.yaml"], "/nonexistent/policy.yaml: file not found"),
]


@pytest.mark.parametrize("args, expected", MITMDUMP_BAD, ids=[" ".join(a) for a, _ in MITMDUMP_BAD])
def test_mitmdump_with_the_addon_stops_on_a_bad_option(tmp_path, policy, args, expected):
    args = [a.format(policy=policy) for a in args]
    r = _run([str(BIN / "mitmdump"), "-s", str(ADDON), *args], tmp_path)
    assert r.returncode != 0, r.stdout + r.stderr
    assert expected in r.stdout + r.stderr
    assert "in force" not in r.stdout   # no policy was ever enforced with a value dropped


def test_the_runner_checks_the_addon_holds_its_policy_before_listening(tmp_path, policy):
    """The last gate of `regionguard run`: whatever got past the checks, the addon in mitmproxy
    must say that the policy the runner validated is in force, else exit 2 before listening."""
    other = tmp_path / "other.yaml"
    other.write_text(policy_text())
    code = ("import sys; from pathlib import Path; from regionguard.mitm.run import run_mitmdump\n"
            f"sys.exit(run_mitmdump(['--set', 'regionguard_policy={other}', '--listen-host', "
            f"'127.0.0.1', '--listen-port', '0', '--set', 'confdir={tmp_path}'], Path('{policy}')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=EXIT_WITHIN, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"not starting: the policy in force is {other}, not {policy}" in r.stderr
    assert "listening" not in r.stdout + r.stderr


def _wait(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


def test_zoom_stays_blocked_when_the_script_fails_to_reload(tmp_path, policy, web):
    """mitmproxy reloads an edited script and, if the new one fails, runs on without it: a
    plain proxy. The guard, which is not part of the script, keeps Zoom blocked."""
    script = tmp_path / "addons" / "regionguard_addon.py"
    script.parent.mkdir()
    shutil.copy(ADDON, script)
    proxy = Proxy(policy, tmp_path, audit=False, command="mitmdump", script=script)
    try:
        de_by_name = f"http://de.zoom.us:{web[DE].port}/"
        de_by_address = f"http://{DE}:{web[DE].port}/"
        other = f"http://{OTHER}:{web[OTHER].port}/"
        assert status_of(curl("-x", proxy.url, de_by_name)) == 200
        assert status_of(curl("-x", proxy.url, de_by_address)) == 200
        time.sleep(1.1)   # a new mtime for the edit (mitmproxy compares them)
        script.write_text("raise RuntimeError('a broken edit')\n")
        _wait(lambda: "a broken edit" in proxy.output())
        before = web[DE].connections
        for url in (de_by_name, de_by_address):
            r = curl("-x", proxy.url, url)
            assert status_of(r) == 403 and "X-Regionguard-Rule: not-enforcing" in r.stdout, r.stdout
        assert web[DE].connections == before
        assert status_of(curl("-x", proxy.url, other)) == 200     # not Zoom's: untouched
        # Mended: the reloaded addon enforces again and the guard steps aside.
        in_force = proxy.output().count("in force")
        time.sleep(1.1)
        shutil.copy(ADDON, script)
        _wait(lambda: proxy.output().count("in force") > in_force)
        assert status_of(curl("-x", proxy.url, de_by_name)) == 200
        assert status_of(curl("-x", proxy.url, f"http://in.zoom.us:{web[IN].port}/")) == 403
    finally:
        proxy.stop()
