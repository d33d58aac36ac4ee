"""The `regionguard` command line.

Exit codes (all commands):
  0  success (explain: every target allowed, monitored or not Zoom's)
  1  explain: at least one target would be blocked
  2  usage error, or an invalid policy/configuration (the message names file, field and fix)
  3  explain: a target could not be resolved
  4  replay, report, coverage: some input unreadable (the rest was processed)
Other commands (run, dns, replay, report, coverage, pac) register themselves from their own modules and
document their codes in `regionguard COMMAND --help`.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

from regionguard.core.errors import ConfigError
from regionguard.core.paths import default_policy_path

# Modules that add subcommands: each has `register(subparsers)`.
_COMMAND_MODULES: tuple[str, ...] = (
    "regionguard.explain",    # explain, validate, regions
    "regionguard.mitm.run",     # run, pac: the mitmproxy front end
    "regionguard.dns.cli",  # dns: the DNS front end
    "regionguard.replay.replay",     # replay: recorded flows, offline
    "regionguard.report.summary",     # report: audit logs for people
    "regionguard.coverage",   # coverage: how much of Zoom the evidence places
)

EXIT_OK, EXIT_BLOCKED, EXIT_CONFIG, EXIT_RESOLVE = 0, 1, 2, 3
EXIT_INPUT = 4   # replay, report: some input unreadable (the rest was processed)


def add_policy_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", "-p", metavar="FILE", default=None,
                        help=f"policy YAML file (default: {default_policy_path()})")


def policy_path(args: argparse.Namespace) -> Path:
    return Path(args.policy) if getattr(args, "policy", None) else default_policy_path()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="regionguard",
        description="Verify and enforce a Zoom data-center region policy.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2] if __doc__ else None,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as e:  # a front end whose dependency is missing: say so, keep the rest
            print(f"regionguard: {name} unavailable: {e}", file=sys.stderr)
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"regionguard: invalid configuration:\n{e}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":"), default=str) + "\n")
