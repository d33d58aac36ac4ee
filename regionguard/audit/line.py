"""The audit line: the JSON text of one decision and its context, as the audit log writes it.

What a line holds is `audit_record()`; a line is that record encoded as
json.dumps(record, separators=(",", ":"), default=str) would, byte for byte. It is built without
that dict: a decision's own members are encoded once and kept (LineEncoder), a line adds only
its time and context. The DNS resolver writes one per filtered answer, so this module is on its
hot path (it runs as Python: compiled it saved nothing measurable).
"""

from __future__ import annotations

import json
import time
from typing import Any

from regionguard.core.decision import Action, Decision

# json.dumps(..., separators=(",", ":"), default=str), without building an encoder per line
# (an encoder keeps no state between calls: safe to share between threads)
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
_encode = _ENCODER.encode
_encode_str = json.encoder.encode_basestring_ascii   # what _encode does for a str, minus the call
_second: tuple[int, str] = (-1, "")
# The keys of Decision.to_dict(): a context key among them overrides the decision's field.
_DECISION_KEYS = frozenset(Decision(Action.PASS, "", "", False).to_dict())


def timestamp(now: float | None = None) -> str:
    """`now` (default: the current time) as UTC ISO 8601 with milliseconds, the audit lines' `time`.
    The date and time of day are formatted once per second; only the milliseconds change."""
    global _second
    if now is None:
        now = time.time()
    whole = int(now)
    second, text = _second   # one (immutable) pair: safe to read and replace from threads
    if second != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        _second = (whole, text)
    return text + f".{int(now * 1000) % 1000:03d}Z"


def _around_host(decision: Decision) -> tuple[str, str]:
    """The decision's encoded members (no braces) before its host's value, and after it."""
    fields = decision.to_dict()
    keys = list(fields)
    at = keys.index("host")
    before = _members({k: fields[k] for k in keys[:at]})
    after = _members({k: fields[k] for k in keys[at + 1:]})
    return (f'{before},"host":' if before else '"host":'), (f",{after}" if after else "")


def _members(fields: dict) -> str:
    """`_encode(fields)` without its braces."""
    return ",".join([f"{_encode_str(str(key))}:{_value(value)}" for key, value in fields.items()])


def _value(value: Any) -> str:
    """`_encode(value)`. Strings, None and lists of strings, what front ends pass as context
    (the DNS filter's kept and dropped addresses), skip the encoder's per-call setup (it builds
    its C encoder on every call for a container)."""
    if value is None:
        return "null"
    if type(value) is str:
        return _encode_str(value)
    if type(value) is list and all(type(v) is str for v in value):
        return "[" + ",".join([_encode_str(v) for v in value]) + "]"
    return _encode(value)


def audit_record(decision: Decision, *, mode: str = "", front_end: str = "", **extra: Any) -> dict:
    """The audit line for a decision: time, client, mode, transport, host/SNI, address, port,
    service, region, evidence source and dataset date, action, rule, policy version."""
    record = {"time": timestamp(), "front_end": front_end, "mode": mode}
    record.update(decision.to_dict())
    record.update(extra)
    return record


def reload_record(path: object, before_version: str, after_version: str | None,
                  error: object | None = None) -> dict | None:
    """The audit line of a policy reload check: the rejected file (error, the old policy kept),
    the new version in force, or None when nothing changed. Both front ends write it."""
    if error is not None:
        return {"time": timestamp(), "event": "policy-reload", "ok": False, "policy": str(path),
                "error": str(error), "policy_version": before_version}
    if after_version is None:
        return None
    return {"time": timestamp(), "event": "policy-reload", "ok": True, "policy": str(path),
            "policy_version": after_version, "previous_version": before_version}


def encode(record: dict) -> str:
    """A whole record (write_raw's events) as a line, newline included."""
    return _encode(record) + "\n"


class LineEncoder:
    """Lines for decisions, with each decision's encoded members kept between its lines."""

    def __init__(self) -> None:
        # Each: (decision, its members before the host's value, after it; see _around_host).
        # The engine memoises decisions, so a repeated connection encodes only its time and
        # context. (Plain dict operations, atomic under the GIL; an entry is used only for the
        # very decision object it holds.)
        self._fragments: dict[int, tuple[Decision, str, str]] = {}

    def line(self, now: float | None, decision: Decision | None, context: dict) -> str:
        """The JSON line: `audit_record()` encoded (same keys, same order), from the decision's
        encoded fields (cached per decision) and the context's, without merging them in a dict.
        A `host` in the context replaces the decision's own cheaply: the DNS filter shares one
        decision between the names that tell the engine the same things."""
        if decision is None:
            return _encode(context) + "\n"
        head = (f'{{"time":"{timestamp(now)}","front_end":{_value(context.pop("front_end", ""))},'
                f'"mode":{_value(context.pop("mode", ""))},')
        host = decision.host
        if context and not context.keys().isdisjoint(_DECISION_KEYS):
            if len(context.keys() & _DECISION_KEYS) == 1 and "host" in context:
                host = context.pop("host")
            else:
                fields = decision.to_dict()   # rare: the context overrides a decision field
                fields.update(context)
                return head + _encode(fields)[1:] + "\n"
        cached = self._fragments.get(id(decision))
        if cached is None or cached[0] is not decision:
            if len(self._fragments) >= 4096:
                self._fragments.clear()
            cached = self._fragments[id(decision)] = (decision, *_around_host(decision))
        if not context:
            return f"{head}{cached[1]}{_value(host)}{cached[2]}}}\n"
        return f"{head}{cached[1]}{_value(host)}{cached[2]},{_members(context)}}}\n"
