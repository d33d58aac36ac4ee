"""deploy/systemd: the units pass `systemd-analyze verify`, are sandboxed as current distributions
ship network daemons (checked with `systemd-analyze security --offline`), and their command lines,
expanded as systemd would, start the real front ends, which serve with the policy in force."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.data_mirror import Mirror, bundled_files
from tests.deploy_support import DEPLOY, check_dns_serves, check_proxy_serves, map_paths
from tests.dns_support import BIN

UNITS = DEPLOY / "systemd"
INSTALLED = "/opt/regionguard/bin/regionguard"   # where the README installs it
SERVICES = ("regionguard-proxy.service", "regionguard-dns.service", "regionguard-data-update.service",
            "regionguard-nft.service")
TIMER = "regionguard-data-update.timer"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (Debian: systemd)")
# Specifiers of a system unit (systemd.unit(5)) used by these units.
SPECIFIERS = {"%S": "/var/lib", "%L": "/var/log", "%%": "%"}


def entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) of a unit file, in order, continuation lines joined."""
    out, section, pending = [], "", ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(path: Path, key: str) -> list[str]:
    return [v for _s, k, v in entries(path) if k == key]


def one(path: Path, key: str) -> str:
    found = values(path, key)
    assert len(found) == 1, f"{path.name}: {key}= given {len(found)} times"
    return found[0]


def expand(text: str, specifiers: dict[str, str] = SPECIFIERS) -> str:
    for spec, value in specifiers.items():
        text = text.replace(spec, value)
    return text


def unit_environment(path: Path, specifiers: dict[str, str] = SPECIFIERS) -> dict[str, str]:
    """The unit's Environment= assignments, specifiers replaced (as systemd does)."""
    env: dict[str, str] = {}
    for assignment in values(path, "Environment"):
        for word in shlex.split(assignment):
            name, _, value = word.partition("=")
            env[name] = expand(value, specifiers)
    return env


def exec_start(path: Path, overrides: dict[str, str] | None = None,
               specifiers: dict[str, str] = SPECIFIERS) -> list[str]:
    """ExecStart= as systemd runs it: specifiers replaced, ${VAR} substituted within a word,
    a lone $VAR split on white space (nothing when empty), from the unit's Environment=."""
    env = unit_environment(path, specifiers)
    env.update(overrides or {})
    line = expand(one(path, "ExecStart"), specifiers)
    argv = []
    for word in shlex.split(line):
        lone = re.fullmatch(r"\$(\w+)", word)
        if lone:
            argv += env[lone.group(1)].split()
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word))
    return argv


def render(directory: Path, source: Path = UNITS) -> Path:
    """The units with ExecStart's binary at this venv's regionguard, which `verify` needs to
    exist; nothing else changes."""
    directory.mkdir(exist_ok=True)
    for unit in (*SERVICES, TIMER):
        text = (source / unit).read_text()
        rendered = text.replace(INSTALLED, str(BIN / "regionguard"))
        assert rendered.replace(str(BIN / "regionguard"), INSTALLED) == text
        (directory / unit).write_text(rendered)
    return directory


def problems(directory: Path) -> str:
    """What `systemd-analyze verify` says about the units in directory (it exits 0 on unknown
    keys and unparsable values, and only warns, so its words count), plus a timer whose service
    is missing, which it lets pass."""
    units = sorted(str(p) for p in directory.iterdir() if p.suffix in (".service", ".timer"))
    done = subprocess.run([ANALYZE, "verify", "--man=no", *units], capture_output=True, text=True,
                          timeout=120, cwd=directory)
    said = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        said += f"\n(exit {done.returncode})"
    for timer in directory.glob("*.timer"):
        target = (values(timer, "Unit") or [timer.stem + ".service"])[0]
        if not (directory / target).exists():
            said += f"\n{timer.name}: starts {target}, which is not there"
    return said


@needs_analyze
def test_the_units_pass_systemd_analyze_verify(tmp_path):
    assert problems(render(tmp_path / "units")) == ""


@needs_analyze
@pytest.mark.parametrize("unit, old, new", [
    ("regionguard-dns.service", "ProtectSystem=strict", "ProtectSystem=stricter"),     # bad value
    ("regionguard-proxy.service", "PrivateTmp=yes", "PrivateTemp=yes"),                # unknown key
    ("regionguard-proxy.service", "[Service]", "[Servce]"),                            # unknown section
    ("regionguard-data-update.service", "Type=oneshot", "Type=once"),
    ("regionguard-dns.service", "bin/regionguard dns", "bin/regionguard-missing dns"),  # no such binary
])
def test_verify_reports_a_broken_unit(tmp_path, unit, old, new):
    """The check above can fail: each of these breakages is reported."""
    units = render(tmp_path / "units")
    text = (units / unit).read_text()
    assert old in text
    (units / unit).write_text(text.replace(old, new, 1))
    assert problems(units) != ""


@needs_analyze
def test_a_timer_without_its_service_is_reported(tmp_path):
    units = render(tmp_path / "units")
    (units / "regionguard-data-update.service").unlink()
    assert "not there" in problems(units)


@needs_analyze
@pytest.mark.parametrize("unit", SERVICES)
def test_each_service_is_sandboxed_as_current_network_daemons_are(tmp_path, unit):
    """systemd's own review rates each service at most 2.0 of 10 ("OK"; a unit with no
    sandboxing is 9.6 "UNSAFE"), and the essentials are set explicitly."""
    rendered = render(tmp_path / "units") / unit
    done = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(rendered)],
                          capture_output=True, text=True, timeout=120)
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert level, done.stdout + done.stderr
    assert float(level.group(1)) <= 2.0, done.stdout
    path = UNITS / unit
    for key, want in [("DynamicUser", "yes"), ("User", "regionguard"), ("ProtectSystem", "strict"),
                      ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes"), ("ProtectHome", "yes"),
                      ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
                      ("StateDirectory", "regionguard")]:
        assert one(path, key) == want, f"{unit}: {key}"
    # Only the DNS filter holds a capability, the one to bind port 53, and the kernel table's
    # keeper the one to change the firewall.
    caps = {"regionguard-dns.service": "CAP_NET_BIND_SERVICE",
            "regionguard-nft.service": "CAP_NET_ADMIN"}.get(unit, "")
    assert one(path, "CapabilityBoundingSet") == caps
    assert one(path, "AmbientCapabilities") == caps
    # Learned evidence and data updates go to the one state directory the units share.
    argv = exec_start(path)
    if unit != "regionguard-data-update.service":   # it learns nothing: no --state-dir
        assert argv[argv.index("--state-dir") + 1] == "/var/lib/regionguard"
    assert unit_environment(path)["REGIONGUARD_DATA_DIR"] == "/var/lib/regionguard/data"
    # systemd 252 gives a dynamic user no $HOME, and regionguard cannot start without one
    # (seen under a booted systemd: deploy/systemd/try-in-nspawn.sh)
    assert "HOME=%S/regionguard" in values(path, "Environment")


def test_an_unsandboxed_unit_is_rated_unsafe(tmp_path):
    """The rating above can fail."""
    if ANALYZE is None:
        pytest.skip("systemd-analyze is not installed")
    bare = tmp_path / "bare.service"
    bare.write_text(f"[Service]\nExecStart={BIN / 'regionguard'} dns\n")
    done = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(bare)],
                          capture_output=True, text=True, timeout=120)
    level = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert level and float(level.group(1)) > 2.0


def test_the_timer_runs_data_update_daily_and_catches_up():
    timer = UNITS / TIMER
    assert values(timer, "Unit") in ([], ["regionguard-data-update.service"])
    assert one(timer, "OnCalendar") == "daily"
    assert one(timer, "Persistent") == "true"
    assert one(timer, "WantedBy") == "timers.target"
    argv = exec_start(UNITS / "regionguard-data-update.service")
    assert argv == [INSTALLED, "data", "update"]


@pytest.mark.parametrize("unit", SERVICES)
def test_each_units_command_line_is_one_the_cli_accepts(unit, capsys):
    """Every ExecStart=, expanded as systemd would, parses with regionguard's own argparse
    (an option the command does not have is exit 2 at every start, whatever the unit says)."""
    from regionguard.cli import build_parser

    for overrides in ({}, {"REGIONGUARD_PROXY_ARGS": "--mode wireguard",
                           "REGIONGUARD_DNS_ARGS": "--upstream 192.0.2.53:53",
                           "REGIONGUARD_NFT_ARGS": "--verdict reject",
                           "REGIONGUARD_DATA_UPDATE_ARGS": "--mirror-base http://127.0.0.1:9"}):
        argv = exec_start(UNITS / unit, overrides)
        assert argv[0] == INSTALLED
        try:
            args, extra = build_parser().parse_known_args(argv[1:])
        except SystemExit:
            pytest.fail(f"{unit}: {shlex.join(argv)}: {capsys.readouterr().err}")
        assert not extra or getattr(args, "accepts_extra", False), f"{unit}: unrecognized {extra}"


def service_environment(path: Path, specifiers: dict[str, str]) -> dict[str, str]:
    """The environment systemd starts the unit's command in: its Environment= lines, and
    $STATE_DIRECTORY and friends for its StateDirectory= (systemd.exec(5)), created as systemd
    would; none of this test run's own state or data directories."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HOME", "XDG_STATE_HOME", "STATE_DIRECTORY", "REGIONGUARD_DATA_DIR")}
    env.update(unit_environment(path, specifiers))
    for key, variable, spec in (("StateDirectory", "STATE_DIRECTORY", "%S"),
                                ("LogsDirectory", "LOGS_DIRECTORY", "%L")):
        for name in values(path, key):
            directory = Path(specifiers[spec]) / name
            directory.mkdir(parents=True, exist_ok=True)
            env[variable] = str(directory)
    return env


def test_the_data_update_unit_installs_data_where_the_other_units_read_it(tmp_path):
    """The timer's service, run as systemd would (its command line and environment, /var/lib
    and /var/log under tmp_path) against a mirror on 127.0.0.1, exits 0; then the proxy, the
    DNS filter and the kernel table's units, in their own environments, see that set in force."""
    specifiers = {"%S": str(tmp_path / "var/lib"), "%L": str(tmp_path / "var/log"), "%%": "%"}
    unit = UNITS / "regionguard-data-update.service"
    with Mirror(bundled_files()) as mirror:
        argv = exec_start(unit, {"REGIONGUARD_DATA_UPDATE_ARGS":
                                 f"--mirror-base {mirror.base} --progress never"}, specifiers)
        done = subprocess.run([str(BIN / "regionguard"), *argv[1:]], capture_output=True,
                              text=True, timeout=120, env=service_environment(unit, specifiers))
    assert done.returncode == 0, done.stdout + done.stderr
    sets = tmp_path / "var/lib/regionguard/data/sets"
    installed = [d for d in sets.iterdir() if not d.name.startswith(".")]
    assert len(installed) == 1
    for reader in ("regionguard-proxy.service", "regionguard-dns.service",
                   "regionguard-nft.service"):
        status = subprocess.run([str(BIN / "regionguard"), "data", "status"], capture_output=True,
                                text=True, timeout=60,
                                env=service_environment(UNITS / reader, specifiers))
        assert status.returncode == 0, status.stderr
        assert f"data: updated set {installed[0]}" in status.stdout, (reader, status.stdout)


def test_the_dns_unit_command_line_serves_with_the_policy(tmp_path):
    argv = exec_start(UNITS / "regionguard-dns.service")
    assert argv[0] == INSTALLED
    assert argv[argv.index("--listen") + 1] == "127.0.0.1:53"
    check_dns_serves(argv[1:], tmp_path, DEPLOY.parent / "config" / "policy.yaml")


def test_the_proxy_unit_command_line_serves_with_the_policy(tmp_path):
    argv = exec_start(UNITS / "regionguard-proxy.service")
    assert argv[0] == INSTALLED
    check_proxy_serves(argv[1:], tmp_path, DEPLOY.parent / "config" / "policy.yaml")


def test_the_nft_unit_command_line_compiles_the_policy_it_watches(tmp_path):
    """The unit's command, with --print in place of --watch (which needs root and a kernel to
    load into), compiles the shipped policy: the same options, the same table; the hook comes
    from its Environment= line, and a workstation's drop-in makes it `output`."""
    argv = exec_start(UNITS / "regionguard-nft.service")
    assert argv[:3] == [INSTALLED, "nft", "--watch"]
    assert argv[argv.index("--hook") + 1] == "forward"
    assert argv[argv.index("--state-dir") + 1] == "/var/lib/regionguard"
    for hook in ("forward", "output"):
        argv = exec_start(UNITS / "regionguard-nft.service", {"REGIONGUARD_NFT_HOOK": hook})
        printed = map_paths(["nft", "--print", *argv[3:]], tmp_path,
                            DEPLOY.parent / "config" / "policy.yaml")
        done = subprocess.run([str(BIN / "regionguard"), *printed], capture_output=True,
                              text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        hooks = [chain["hook"] for command in json.loads(done.stdout)["nftables"]
                 for chain in [command.get("add", {}).get("chain", {})] if "hook" in chain]
        assert hooks == [hook]
    # An invalid policy does not stop the unit: --watch blocks every Zoom range until an edit
    # loads (tests/test_nft_netns.py). Only bad options (exit 2) do; the rest restart slowly.
    path = UNITS / "regionguard-nft.service"
    assert one(path, "Restart") == "on-failure" and one(path, "RestartPreventExitStatus") == "2"
    assert float(one(path, "RestartSec").removesuffix("s")) * 5 > 10


def test_extra_arguments_from_a_drop_in_reach_the_command():
    """The README's gateway drop-in sets REGIONGUARD_*_ARGS: each word becomes an argument."""
    argv = exec_start(UNITS / "regionguard-proxy.service",
                      {"REGIONGUARD_PROXY_ARGS": "--mode wireguard --set regionguard_pac_proxy=10.0.0.5:8080"})
    assert argv[-4:] == ["--mode", "wireguard", "--set", "regionguard_pac_proxy=10.0.0.5:8080"]


@pytest.mark.parametrize("unit", ["regionguard-proxy.service", "regionguard-dns.service"])
def test_an_invalid_policy_stops_the_unit_for_good_and_other_failures_restart(tmp_path, unit):
    """The unit's command line exits 2 on an invalid policy, the one code the unit does not
    restart on (only an edit fixes it); other failures restart slowly enough to stay under
    systemd's default start limit (5 starts in 10 s)."""
    path = UNITS / unit
    assert one(path, "Restart") == "on-failure"
    assert one(path, "RestartPreventExitStatus") == "2"
    assert float(one(path, "RestartSec").removesuffix("s")) * 5 > 10
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: 1\nactions: {disallowed: maybe}\n")
    argv = map_paths(exec_start(path)[1:], tmp_path, broken)
    done = subprocess.run([str(BIN / "regionguard"), *argv], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "policy.yaml" in done.stdout + done.stderr   # the message names the file
