"""The audit log: one JSON line per decision, size-capped with rotation, never a reason to open
the gate. Shared by every front end (proxy addon, DNS filter) so their lines have one format.

A write that fails (full disk, unwritable path) is counted and logged once per minute; the
decision it records stands. Counters keep totals by action, rule, region and service for the
front ends' status output.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .decision import Decision

log = logging.getLogger(__name__)


# json.dumps(..., separators=(",", ":"), default=str), without building an encoder per line
# (an encoder keeps no state between calls: safe to share between threads)
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
_second: tuple[int, str] = (-1, "")


def _timestamp(now: float) -> str:
    global _second
    whole = int(now)
    second, text = _second   # one (immutable) pair: safe to read and replace from threads
    if second != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        _second = (whole, text)
    return text + f".{int(now * 1000) % 1000:03d}Z"


def audit_record(decision: Decision, *, mode: str = "", front_end: str = "", **extra: Any) -> dict:
    """The audit line for a decision: time, client, mode, transport, host/SNI, address, port,
    service, region, evidence source and dataset date, action, rule, policy version."""
    now = time.time()
    record = {
        "time": _timestamp(now),
        "front_end": front_end,
        "mode": mode,
        **decision.to_dict(),
    }
    record.update(extra)
    return record


class Counters:
    """Totals of decisions by action, rule, region and service (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_action: Counter[str] = Counter()
        self.by_rule: Counter[str] = Counter()
        self.by_region: Counter[str] = Counter()
        self.by_service: Counter[str] = Counter()
        self.audit_failures = 0

    def count(self, decision: Decision) -> None:
        with self._lock:
            self.by_action[str(decision.action)] += 1
            self.by_rule[decision.rule] += 1
            self.by_region[decision.region or "none"] += 1
            self.by_service[decision.service or "none"] += 1

    def snapshot(self) -> dict:
        with self._lock:
            return {"action": dict(self.by_action), "rule": dict(self.by_rule),
                    "region": dict(self.by_region), "service": dict(self.by_service),
                    "audit_failures": self.audit_failures}


class AuditLog:
    """Appends JSON lines to `path`; rotates to path.1 … path.N when it would exceed max_bytes."""

    def __init__(self, path: str | Path | None, max_bytes: int = 50 * 1024 * 1024,
                 backups: int = 5, counters: Counters | None = None) -> None:
        self.path = Path(path) if path else None
        self.max_bytes = max_bytes
        self.backups = backups
        self.counters = counters or Counters()
        self._lock = threading.Lock()
        self._file = None
        self._size = 0
        self._last_complaint = 0.0

    def record(self, decision: Decision, **context: Any) -> None:
        """Count the decision and append its audit line. Never raises."""
        self.counters.count(decision)
        if self.path is None:
            return
        try:
            line = _ENCODER.encode(audit_record(decision, **context)) + "\n"
            self._write(line.encode())
        except Exception as e:  # noqa: BLE001 - the audit log must never open the gate
            self._failed(e)

    def write_raw(self, record: dict) -> None:
        """Append an arbitrary event (e.g. a policy reload) in the same file. Never raises."""
        if self.path is None:
            return
        try:
            self._write((_ENCODER.encode(record) + "\n").encode())
        except Exception as e:  # noqa: BLE001
            self._failed(e)

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115
                self._size = self._file.seek(0, os.SEEK_END)
            if self._size and self._size + len(data) > self.max_bytes:
                self._rotate()
            self._file.write(data)
            self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        self._file = None
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115
        self._size = 0

    def _failed(self, error: Exception) -> None:
        self.counters.audit_failures += 1
        with self._lock:
            if self._file is not None:
                try:
                    self._file.close()
                except OSError:
                    pass
                self._file = None
        now = time.monotonic()
        if now - self._last_complaint > 60:
            self._last_complaint = now
            log.error("regionguard: cannot write audit log %s: %s (decisions still enforced; "
                      "%d line(s) lost so far)", self.path, error, self.counters.audit_failures)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
