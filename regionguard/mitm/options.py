"""The proxy addon's options (`--set regionguard_*=VALUE`): their table, and the one place they
are parsed and checked.

Both front doors use it: `regionguard run` checks the values on its command line before
mitmproxy starts (exit 2, nothing listening), and the addon checks them when mitmproxy hands
them over (at start-up, and on a live change from mitmweb or the console). A value mitmproxy
could not parse itself would make it drop the whole addon silently, so the raw strings are
parsed here first, with mitmproxy's own rules plus ranges, and every message names the option,
the bad value and the fix. This module never imports mitmproxy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from regionguard.core.paths import default_policy_path
from regionguard.core.policy import parse_hostport
from regionguard.metrics.address import parse_metrics_address

PREFIX = "regionguard_"
INTERCEPT_CHOICES = ("none", "non-zoom", "all")


class OptionProblem(ValueError):
    """A regionguard_* option is missing, given twice, malformed or out of range."""


def _int_range(low: int, high: int, fix: str) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        assert isinstance(value, int)
        if not low <= value <= high:
            return f"{value} is out of range; {fix}"
        return None
    return check


def _check_intercept(value: object) -> str | None:
    if value not in INTERCEPT_CHOICES:
        return f"{value!r} is not valid; use one of {', '.join(INTERCEPT_CHOICES)}"
    return None


def _check_pac_path(value: object) -> str | None:
    text = str(value)
    if text and (not text.startswith("/") or any(c.isspace() or ord(c) < 32 for c in text)):
        return (f"{text!r} must start with '/' and hold no spaces, e.g. /proxy.pac "
                "(or be empty to turn the PAC file off)")
    return None


def _check_pac_proxy(value: object) -> str | None:
    text = str(value)
    if text and parse_hostport(text, 0) is None:
        return f"{text!r} is not HOST:PORT, e.g. 127.0.0.1:8080"
    return None


def _check_metrics(value: object) -> str | None:
    text = str(value)
    if not text:
        return None
    _address, problem = parse_metrics_address(text, "regionguard_metrics")
    return f"{problem.message}; {problem.fix}" if problem is not None else None


def _check_path(value: object) -> str | None:
    text = str(value)
    if "\x00" in text:
        return "a path cannot hold a NUL character"
    return None


@dataclass(frozen=True)
class ProxyOption:
    name: str
    kind: type                      # str, int or bool: what mitmproxy stores
    default: object
    help: str
    check: Callable[[object], str | None] = _check_path   # problem with a parsed value, or None
    choices: tuple[str, ...] | None = None


OPTIONS: tuple[ProxyOption, ...] = (
    ProxyOption("regionguard_policy", str, "",
                f"Region policy YAML file (default: {default_policy_path()})."),
    ProxyOption("regionguard_audit", str, "",
                "Audit log: one JSON line per decision appended here (empty: off)."),
    ProxyOption("regionguard_audit_max_bytes", int, 50 * 1024 * 1024,
                "Rotate the audit log when it would grow beyond this many bytes.",
                _int_range(1024, 2**50, "give 1024 bytes or more")),
    ProxyOption("regionguard_audit_backups", int, 5,
                "Rotated audit logs to keep (FILE.1 … FILE.N).",
                _int_range(0, 1000, "give 0 to 1000 files")),
    ProxyOption("regionguard_audit_flush_ms", int, 250,
                "Write queued audit lines every this many milliseconds, from a thread (written at "
                "exit too); 0: write each line before the connection goes on.",
                _int_range(0, 60_000, "give 0 (write every line at once) to 60000 milliseconds")),
    ProxyOption("regionguard_audit_pass", bool, False,
                "Also audit connections that are not Zoom's (action pass).", lambda _: None),
    ProxyOption("regionguard_intercept", str, "none",
                "TLS interception: none (pass every TLS connection through; no CA needed), "
                "non-zoom (mitmproxy's own behaviour for non-Zoom traffic; Zoom always passes "
                "through), all. Enforcement never needs interception.",
                _check_intercept, INTERCEPT_CHOICES),
    ProxyOption("regionguard_reload", int, 1,
                "Check the policy file for changes every this many seconds (0: never).",
                _int_range(0, 86_400, "give seconds from 1 to 86400, or 0 to never reload")),
    ProxyOption("regionguard_summary", int, 10,
                "Every this many seconds, one console line counting the decisions since the last "
                "(allowed, blocked, ...), when there were any (0: never; BLOCK lines come anyway).",
                _int_range(0, 86_400, "give seconds from 1 to 86400, or 0 for no summary")),
    ProxyOption("regionguard_pac_path", str, "/proxy.pac",
                "Serve a PAC file (Zoom's domains through this proxy) at this path on the "
                "proxy's own address (empty: off).", _check_pac_path),
    ProxyOption("regionguard_pac_proxy", str, "",
                "HOST:PORT the PAC file names (default: the address the client reached).",
                _check_pac_proxy),
    ProxyOption("regionguard_state_dir", str, "",
                "Where learned evidence (site-coded Zoom names the proxy resolved, and the DNS "
                "filter's) is kept (default: $XDG_STATE_HOME/regionguard; 'off': learn nothing)."),
    ProxyOption("regionguard_metrics", str, "",
                "Serve Prometheus /metrics, /healthz and /readyz on HOST:PORT, a port of their own "
                "(empty: off; PORT alone: 127.0.0.1).", _check_metrics),
)
BY_NAME: dict[str, ProxyOption] = {o.name: o for o in OPTIONS}


def _problem(name: str, message: str) -> OptionProblem:
    return OptionProblem(f"{name}: {message}")


def parse_value(name: str, raw: object) -> object:
    """One option's value from what was given: a list of `--set` strings (as mitmproxy collects
    them: [] for `--set NAME` with no value, two for an option given twice), or an already typed
    value (a config.yaml entry, a live change). Raises OptionProblem with the fix."""
    option = BY_NAME.get(name)
    if option is None:
        known = ", ".join(o.name for o in OPTIONS)
        raise _problem(name, f"unknown option; regionguard's options are {known}")
    if isinstance(raw, (list, tuple)):
        if len(raw) > 1:
            given = ", ".join("(no value)" if r is None else repr(r) for r in raw)
            raise _problem(name, f"given {len(raw)} times ({given}); give it once")
        text = raw[0] if raw else None
        value = _from_text(option, text)
    else:
        value = _typed(option, raw)
    problem = option.check(value)
    if problem:
        raise _problem(name, problem)
    return value


def _from_text(option: ProxyOption, text: str | None) -> object:
    if option.kind is bool:
        # mitmproxy's rule: omitted means true; anything but true/false is refused.
        if text is None or text == "" or text == "true":
            return True
        if text == "false":
            return False
        raise _problem(option.name, f"{text!r} is not a boolean; give true or false")
    if text is None:
        raise _problem(option.name, f"needs a value: --set {option.name}=VALUE")
    if option.kind is int:
        stripped = text.strip()
        if not stripped or not stripped.lstrip("+-").isdigit() or not stripped.isascii():
            raise _problem(option.name, f"{text!r} is not a whole number")
        return int(stripped)
    return text


def _typed(option: ProxyOption, value: object) -> object:
    if option.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise _problem(option.name, f"{value!r} is not a whole number")
    if option.kind is bool and not isinstance(value, bool):
        raise _problem(option.name, f"{value!r} is not a boolean; give true or false")
    if option.kind is str and not isinstance(value, str):
        raise _problem(option.name, f"{value!r} is not text")
    return value


def check_values(values: Mapping[str, object]) -> list[str]:
    """Every problem with these typed values (all of regionguard's options, as mitmproxy holds
    them); empty when all are good."""
    problems = []
    for option in OPTIONS:
        if option.name not in values:
            continue
        try:
            parse_value(option.name, values[option.name])
        except OptionProblem as e:
            problems.append(str(e))
    return problems


def group_sets(specs: Iterable[str]) -> dict[str, list[str | None]]:
    """`--set` specifications (NAME=VALUE, or NAME alone: None) grouped by name, every
    occurrence kept, so an option given twice is seen even when one has no value."""
    grouped: dict[str, list[str | None]] = {}
    for spec in specs:
        name, eq, value = spec.partition("=")
        grouped.setdefault(name, []).append(value if eq else None)
    return grouped


def parse_sets(specs: Iterable[str]) -> tuple[dict[str, object], list[str]]:
    """The regionguard_* options among `--set` specifications: (parsed values, problems)."""
    values: dict[str, object] = {}
    problems: list[str] = []
    for name, raw in group_sets(specs).items():
        if not name.startswith(PREFIX):
            continue
        try:
            values[name] = parse_value(name, raw)
        except OptionProblem as e:
            problems.append(str(e))
    return values, problems
