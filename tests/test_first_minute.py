"""What a user sees in the first minute (issue 19, "Small behaviours"): commands stop at the
timeout they report, start-up lines say where decisions go, the consoles of the proxy and the
DNS server speak one format, and ./dev says what it is doing and what to install."""

import os
import re
import socket
import subprocess
import time

from regionguard.mitm.console_summary import summary_line
from tests.conftest import BIN
from tests.proxy_support import Proxy, curl, origins_on_one_port, status_of
from tests.test_proxy import policy_text

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
    # A bound on behaviour, not a benchmark: waiting the full lifetime twice (A, then AAAA, each
    # for the whole of it) takes longer than two lifetimes whatever the start-up costs; one
    # lifetime leaves the start-up (a few seconds under coverage on a busy machine) room.
    assert took < 2 * float(reported.group(1)), (took, r.stderr)


# --- ./dev ------------------------------------------------------------------------------------

def _tools_dir(tmp_path):
    """A PATH with the few tools ./dev needs before it looks for Python, and no Python at all."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "ls", "sort", "cat", "cut", "head", "sha256sum", "xargs", "sed"):
        found = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True,
                               text=True).stdout.strip()
        if found:
            (bin_dir / tool).symlink_to(found)
    return bin_dir


def test_dev_without_python_suggests_installs_that_exist_on_debian_12(tmp_path):
    empty = tmp_path / "pyenv"
    empty.mkdir()
    env = {"PATH": str(_tools_dir(tmp_path)), "HOME": str(tmp_path), "PYENV_ROOT": str(empty),
           "REGIONGUARD_VENV": str(tmp_path / "venv")}
    r = subprocess.run(["/bin/bash", os.path.join(ROOT, "dev"), "setup"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "none was found" in r.stderr
    # ... and says where it looked: PATH, pyenv's and uv's directories
    looked = r.stderr.splitlines()[0]
    assert f"{empty}/versions" in looked and f"{tmp_path}/.local/share/uv/python" in looked
    # Debian 12 has no python3.12 package: the hint names what works there.
    assert "apt-get install python3.12" not in r.stderr
    assert "uv python install 3.12" in r.stderr and "pyenv install 3.12" in r.stderr
    assert "Debian 13" in r.stderr


def test_dev_run_says_each_install_step_before_it_starts(tmp_path):
    # A venv whose pip only records that it was asked (the real install takes a minute and the
    # network): what is checked is ./dev's own output around the steps.
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    calls = tmp_path / "calls"
    real = os.path.realpath(str(BIN / "python"))
    (venv / "bin" / "python").write_text(
        "#!/bin/bash\n"
        f'if [ "$1 $2" = "-m pip" ]; then echo "pip $*" >> {calls}; echo "pip $*" >&2; exit 0; fi\n'
        f'exec {real} "$@"\n')
    (venv / "bin" / "regionguard").write_text('#!/bin/bash\necho "regionguard $*" >&2\n')
    for f in ("python", "regionguard"):
        (venv / "bin" / f).chmod(0o755)
    env = {**os.environ, "REGIONGUARD_VENV": str(venv)}
    r = subprocess.run([os.path.join(ROOT, "dev"), "run", "--help"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(calls.read_text().splitlines()) == 2        # pip upgraded, then the install
    said = [i for i, line in enumerate(lines) if line.startswith("dev: ")]
    pip = [i for i, line in enumerate(lines) if line.startswith("pip ")]
    assert said and pip and said[0] < pip[0] and said[1] < pip[1], lines
    assert any("installing" in line and "mypyc" in line for line in lines), lines
    assert lines[-1] == "regionguard run --help"


def test_dev_finds_the_python_uv_installed(tmp_path):
    # What the hint's `uv python install 3.12` leaves: a Python under ~/.local/share/uv/python.
    uv_python = tmp_path / ".local/share/uv/python/cpython-3.12.9-linux-x86_64-gnu/bin"
    uv_python.mkdir(parents=True)
    (uv_python / "python3").symlink_to(os.path.realpath(str(BIN / "python")))
    script = (f"source <(sed -n '/^find_python()/,/^}}/p' {os.path.join(ROOT, 'dev')}); "
              f"PATH={_tools_dir(tmp_path)} find_python")
    r = subprocess.run(["/bin/bash", "-c", script], capture_output=True, text=True, timeout=30,
                       env={"PATH": os.environ["PATH"], "HOME": str(tmp_path),
                            "PYENV_ROOT": str(tmp_path / "none")})
    assert r.returncode == 0 and r.stdout.strip() == str(uv_python / "python3"), r


# --- the proxy's and the DNS server's consoles ------------------------------------------------

LINE = re.compile(r"^\[\d\d:\d\d:\d\d\.\d{3}\] regionguard( dns)?: \S")
DE, IN = "127.0.1.1", "127.0.2.1"


def _proxy(tmp_path, *extra, audit=True):
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    return Proxy(policy, tmp_path, *extra, audit=audit)


def test_proxy_start_up_says_that_decisions_are_not_logged_and_how_to(tmp_path):
    proxy = _proxy(tmp_path, audit=False)
    try:
        out = proxy.wait_for_output("regionguard: audit: off", timeout=30)
        assert "regionguard run --audit FILE" in out
    finally:
        proxy.stop()


def test_proxy_start_up_says_where_decisions_are_logged(tmp_path):
    proxy = _proxy(tmp_path)
    try:
        proxy.wait_for_output(f"regionguard: audit: decisions logged to {proxy.audit}", timeout=30)
    finally:
        proxy.stop()


def test_proxy_console_counts_allowed_traffic_too(tmp_path):
    web = origins_on_one_port([DE, IN])
    proxy = _proxy(tmp_path, "--set", "regionguard_summary=1")
    try:
        port = web[DE].port
        for host, status in (("de.zoom.us", 200), ("de.zoom.us", 200), ("in.zoom.us", 403)):
            assert status_of(curl("-x", proxy.url, f"http://{host}:{port}/")) == status
        # The counts may fall into two one-second lines: add them up (bounded wait).
        summary = re.compile(r"regionguard: last 1 s: allowed (\d+), blocked (\d+)")
        deadline = time.monotonic() + 20
        totals = (0, 0)
        while time.monotonic() < deadline and totals != (2, 1):
            found = summary.findall(proxy.output())
            totals = (sum(int(a) for a, _ in found), sum(int(b) for _, b in found))
            time.sleep(0.2)
        assert totals == (2, 1), proxy.output()
        # one line per decision still for what enforcement changed, none per allowed connection
        out = proxy.output()
        assert out.count("regionguard: BLOCK") == 1 and "regionguard: ALLOW" not in out
        assert all(LINE.match(line) for line in out.splitlines() if "last 1 s" in line)
    finally:
        proxy.stop()
        for server in web.values():
            server.stop()


def test_an_idle_proxy_prints_no_summary():
    assert summary_line({"allow": 3}, {"allow": 3}, 10) is None
    assert summary_line({}, {"allow": 2, "monitor": 1}, 10) == \
        "regionguard: last 10 s: allowed 2, blocked 0, monitored 1"


def test_proxy_and_dns_server_print_their_start_up_lines_in_one_format(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    proxy = Proxy(policy, tmp_path, audit=False)
    dns_log = tmp_path / "dns.log"
    with open(dns_log, "wb") as log:
        dns = subprocess.Popen([RG, "dns", "--policy", str(policy), "--listen", "127.0.0.1:0",
                                "--upstream", "127.0.0.1:9"], stdout=log, stderr=subprocess.STDOUT)
    try:
        proxy.wait_for_output("regionguard: audit:", timeout=30)
        deadline = time.monotonic() + 30
        while "audit:" not in dns_log.read_text() and time.monotonic() < deadline:
            assert dns.poll() is None, dns_log.read_text()
            time.sleep(0.1)
        dns_lines = dns_log.read_text().splitlines()
        proxy_lines = [line for line in proxy.output().splitlines() if "] regionguard" in line]
        assert any("regionguard dns: listening on" in line for line in dns_lines), dns_lines
        assert any("regionguard dns: audit: off" in line for line in dns_lines), dns_lines
        assert any("regionguard: policy" in line for line in proxy_lines), proxy_lines
        # every line of both: [HH:MM:SS.mmm] regionguard...: message (mitmproxy's own format)
        for line in [*dns_lines, *proxy_lines]:
            assert LINE.match(line), line
    finally:
        proxy.stop()
        dns.terminate()
        dns.wait(timeout=15)
