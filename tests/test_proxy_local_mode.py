"""`regionguard run --mode local` says clearly why it cannot run, for each reason, on any Linux
host where the test runs as root: each case runs `regionguard run` in a private mount namespace
the test creates (unshare -m), in which /sys/fs/cgroup is what the case needs (a plain tmpfs = no
cgroup v2; a cgroup2 mount = cgroup v2), so the answer does not depend on how this host mounts
its cgroups. The host itself is never changed: the namespace goes when its process exits.

Not covered: local mode actually redirecting a process; mitmproxy-linux runs its eBPF
redirector through `sudo`, which a test host need not have."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import BIN

NEEDS = ("root and unshare(1)/setpriv(1) on Linux, to run regionguard in a private mount "
         "namespace with its own /sys/fs/cgroup")
pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0
    or not (shutil.which("unshare") and shutil.which("setpriv")), reason=f"needs {NEEDS}")

TMPFS_CGROUP = "mount -t tmpfs none /sys/fs/cgroup"        # no unified hierarchy there
CGROUP2 = "mount -t cgroup2 none /sys/fs/cgroup"           # cgroup v2, as a unified host has

# The venv's Python may live under root's home (pyenv), which other users cannot enter: for the
# unprivileged case, root's home is replaced (in the namespace only) by one that holds just the
# interpreter's directory.
PYTHON_HOME = os.path.realpath(sys.executable).split("/bin/")[0]


def _in_namespace(setup: str, command: str, tmp_path) -> subprocess.CompletedProcess:
    script = f"set -e; mount --make-rprivate /; {setup}; exec {command}"
    r = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)})
    assert "Traceback" not in r.stderr, r.stderr
    return r


def test_without_cgroup_v2_it_says_so_and_exits_2(tmp_path):
    r = _in_namespace(TMPFS_CGROUP, f"{BIN / 'regionguard'} run --mode local:zoom", tmp_path)
    assert (r.returncode, r.stderr.strip()) == (2, (
        "regionguard run: --mode local needs cgroup v2 (a unified /sys/fs/cgroup) on Linux, and "
        "this system does not have it; use the explicit proxy (default), a PAC file, or "
        "--mode wireguard")), r.stdout


def test_without_root_it_says_so_and_exits_2(tmp_path):
    setup = CGROUP2
    if PYTHON_HOME.startswith("/root/"):
        real = tmp_path / "real-root"
        real.mkdir()
        inner = PYTHON_HOME.removeprefix("/root/")
        setup += (f"; mount --bind /root {real}; mount -t tmpfs -o mode=755 none /root; "
                  f"mkdir -p /root/{inner}; mount --bind {real}/{inner} /root/{inner}")
    # HOME: somewhere the unprivileged user can look (mitmproxy's config file is read from it).
    # Not measured by coverage (./dev test): that user cannot write the checkout's data files.
    command = (f"setpriv --reuid=65534 --regid=65534 --clear-groups "
               f"env -u COVERAGE_PROCESS_CONFIG HOME=/nonexistent "
               f"{BIN / 'regionguard'} run --mode local:zoom")
    r = _in_namespace(setup, command, tmp_path)
    assert (r.returncode, r.stderr.strip()) == (
        2, "regionguard run: --mode local needs root on Linux (it loads an eBPF program); "
           "run it as root"), r.stdout


def test_without_mitmproxy_linux_it_says_so_and_exits_2(tmp_path):
    """Root and cgroup v2, but the package is absent (hidden from this one interpreter)."""
    hide = ("import sys; sys.modules['mitmproxy_linux'] = None; "
            "from regionguard.cli import main; sys.exit(main(sys.argv[1:]))")
    command = f"{sys.executable} -c \"{hide}\" run --mode local:zoom"
    r = _in_namespace(CGROUP2, command, tmp_path)
    assert (r.returncode, r.stderr.strip()) == (
        2, "regionguard run: --mode local needs the mitmproxy-linux package: "
           "pip install mitmproxy-linux"), r.stdout


@pytest.mark.parametrize("mode", ["local", "local:zoom", "local:!zoom", "local@5"])
def test_every_spelling_of_local_mode_is_checked(tmp_path, mode):
    r = _in_namespace(TMPFS_CGROUP, f"{BIN / 'regionguard'} run --mode {mode}", tmp_path)
    assert r.returncode == 2 and "--mode local needs cgroup v2" in r.stderr
