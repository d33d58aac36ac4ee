"""regionguard/cli.py: every command is declared there, and a front end whose dependency is
missing is named and left out while the other commands keep working."""

import argparse
import os
import subprocess
import sys
import threading

import pytest

from regionguard.cli import build_parser
from regionguard.exits import EXIT_CONFIG

COMMANDS = ("explain", "validate", "regions", "probe", "policy", "run", "pac", "dns", "replay",
            "report", "coverage", "invite", "data", "nft")


def regionguard(*args: str, block: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`regionguard ARGS` in a fresh interpreter, with the modules in `block` unimportable."""
    script = ("import sys\n"
              f"for m in {block!r}: sys.modules[m] = None\n"
              "from regionguard.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))


def test_every_command_is_declared_in_order_with_its_help(capsys):
    parser = build_parser()
    assert capsys.readouterr().err == ""   # nothing unavailable here
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert tuple(commands.choices) == COMMANDS
    assert all(help_.help for help_ in commands._choices_actions)


def test_a_front_end_whose_dependency_is_missing_is_named_and_the_rest_still_work():
    # dpkt reads packet captures; replay and report (which reads audit logs through replay's
    # readers) need it, the region catalogue does not
    r = regionguard("regions", block=("dpkt",))
    assert r.returncode == 0, r.stderr
    assert "Zoom data-center regions" in r.stdout
    assert "replay unavailable" in r.stderr and "report unavailable" in r.stderr
    r = regionguard("replay", "x.har", block=("dpkt",))
    assert r.returncode == 2 and "invalid choice: 'replay'" in r.stderr


def test_the_help_lists_every_exit_code_of_exits_py_with_its_meaning():
    from regionguard import exits

    codes = {getattr(exits, name) for name in exits.__all__ if name.startswith("EXIT_")}
    text = build_parser().format_help()
    listed = text.split("Exit codes (all commands):\n", 1)[1].splitlines()
    assert {code for code, _ in exits.MEANINGS} == codes   # no code without a meaning
    for code, meaning in exits.MEANINGS:
        assert any(line.split(None, 1) == [str(code), meaning] for line in listed), (code, text)


@pytest.mark.parametrize(("option", "message"), [
    (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["--listen-port", "nonsense"], "invalid int value: 'nonsense'"),
    (["--mode", "nonsense"], "Invalid proxy mode specification: nonsense"),
])
def test_run_with_an_option_mitmproxy_cannot_read_is_a_usage_error(option, message):
    # mitmproxy's own entry point would end with 1; its message stays, the status is ours
    r = regionguard("run", "--listen-host", "127.0.0.1", "--listen-port", "0", *option)
    assert r.returncode == EXIT_CONFIG, r.stderr
    assert message in r.stderr


@pytest.mark.parametrize(("given", "used"), [
    ("127.0.0.1", "127.0.0.1:5353"), ("::1", "[::1]:5353"), ("[::1]", "[::1]:5353"),
    ("localhost", "localhost:5353"), ("127.0.0.1:53", "127.0.0.1:53"), ("127.0.0.1:0", "127.0.0.1:0"),
    ("nonsense", "nonsense"),   # passed on as given: `regionguard dns` names it in its error
])
def test_a_dns_address_without_a_port_gets_the_default_s_port(given, used):
    parser = build_parser()
    assert parser.parse_args(["dns"]).listen == "127.0.0.1:5353"
    assert parser.parse_args(["dns", "--listen", given]).listen == used
    assert parser.parse_args(["run", "--dns", given]).dns == used


def test_regionguard_dns_listen_with_an_address_alone_serves_on_5353_as_its_help_says(tmp_path):
    help_text = " ".join(regionguard("dns", "--help").stdout.split())
    assert "default 127.0.0.1:5353; an address alone: port 5353" in help_text
    script = "import sys\nfrom regionguard.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = subprocess.Popen([sys.executable, "-c", script, "dns", "--listen", "127.0.0.1",
                             "--upstream", "127.0.0.1:9", "--state-dir", "off"],
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    hung = threading.Timer(60, proc.kill)   # a server that never says where it listens
    hung.start()
    try:
        # listening, or not (5353 taken): either way the line names the address it used
        line = next((x for x in proc.stderr if "listening on" in x or "cannot listen" in x), "")
    finally:
        hung.cancel()
        proc.terminate()
        proc.wait(timeout=20)
    assert "127.0.0.1:5353" in line, line
