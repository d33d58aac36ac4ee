"""regionguard/cli.py: every command is declared there, and a front end whose dependency is
missing is named and left out while the other commands keep working."""

import argparse
import os
import subprocess
import sys

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
