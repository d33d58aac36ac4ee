"""The audit log: one JSON line per decision, size-capped with rotation, never a reason to open
the gate. Shared by every front end (proxy addon, DNS filter) so their lines have one format.

Two ways to write, chosen by `flush_interval`:
- 0 (the default): each line is written before `record()` returns.
- > 0 (the proxy addon): `record()` only queues the decision with its time; a writer thread
  encodes and appends the queued lines every `flush_interval` seconds (sooner when many are
  queued), one write per batch. A connection no longer waits for JSON encoding and a write(2),
  and a busy proxy makes one system call per batch instead of one per line. `close()` (the
  front end's shutdown), `flush()` and an exit handler write whatever is queued, so a normal
  exit, SIGTERM or an unhandled exception loses nothing; only a hard kill loses at most
  `flush_interval` seconds of lines. The queue is bounded: a log that cannot keep up (a hung
  disk) loses lines, counted and reported, never memory or a decision.

Either way a line that cannot be written is lost, never a decision: the decision it records
stands. Lost lines are counted (`Counters.audit_failures`, for status output and metrics) and
logged at the first loss, then at most once a minute with the running count, and once more when
writing works again. Lines are lost when
- a write fails (full file system, unwritable path, I/O error);
- the open file is deleted, or its directory removed: writes to it still "succeed", into a file
  no one can read. Before each write (a batch, or a line when unbuffered) the path is compared
  with the open file (one stat); when the file has gone, the lines written to it are counted
  lost and a new file is started at the path (its directory created again). A file renamed
  away (rotated by another program) is not a loss: the log just reopens the path.
`check_audit_path()` tells a front end at start-up, before it listens, that a path cannot be
written at all. The size cap with rotation holds line by line. Counters keep totals by action,
rule, region and service for the front ends' status output.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

from regionguard.audit.line import LineEncoder, audit_record, encode, timestamp
from regionguard.core.decision import Decision
from regionguard.core.errors import Problem

__all__ = ["AuditLog", "Counters", "audit_record", "check_audit_path",   # the line's, here for users
           "timestamp"]

log = logging.getLogger(__name__)


class Counters:
    """Totals of decisions by action, rule, region, service, scope and client group, and of
    audit lines written and lost (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # One count per (action, rule, region, service, scope, group): a single increment per
        # decision on the hot path; the totals by each are summed when asked for (status output,
        # metrics at scrape time). Every field is from a bounded set: no host or address.
        self._by_key: Counter[tuple[str, str, str, str, str, str]] = Counter()
        self.audit_failures = 0     # audit lines lost (not written, or written to a deleted file)
        self.audit_written = 0      # audit lines appended to the file (under the log's file lock)

    def count(self, decision: Decision) -> None:
        key = (decision.action, decision.rule, decision.region or "none", decision.service or "none",
               decision.scope or "none", decision.group or "none")
        with self._lock:
            self._by_key[key] += 1

    def by_key(self) -> dict[tuple[str, str, str, str, str, str], int]:
        """A copy of the counts by (action, rule, region, service, scope, group)."""
        with self._lock:
            return dict(self._by_key)

    def lost(self, lines: int) -> None:
        """Count audit lines lost (called from the writer thread and the event loop alike)."""
        with self._lock:
            self.audit_failures += lines

    def _totals(self, index: int) -> Counter[str]:
        with self._lock:
            items = list(self._by_key.items())
        totals: Counter[str] = Counter()
        for key, n in items:
            totals[str(key[index])] += n
        return totals

    @property
    def by_action(self) -> Counter[str]:
        return self._totals(0)

    @property
    def by_rule(self) -> Counter[str]:
        return self._totals(1)

    @property
    def by_region(self) -> Counter[str]:
        return self._totals(2)

    @property
    def by_service(self) -> Counter[str]:
        return self._totals(3)

    def snapshot(self) -> dict:
        return {"action": dict(self.by_action), "rule": dict(self.by_rule),
                "region": dict(self.by_region), "service": dict(self.by_service),
                "audit_failures": self.audit_failures}


# A queued line: (time, decision, context) for record(), (None, None, record) for write_raw().
_Entry = tuple[float | None, Decision | None, dict]

# Buffered logs still open, written out by the exit handler below.
_buffered_logs: weakref.WeakSet[AuditLog] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    # The writer is a daemon thread (it must not keep a finished process alive), so whatever it
    # has not written yet is written here, before the interpreter stops it.
    for audit in list(_buffered_logs):
        audit.flush()


def check_audit_path(path: str | Path, option: str = "--audit") -> Problem | None:
    """Can the audit log at `path` be written? None if so, else the problem, for a front end to
    report at start-up, before it listens (exit 2), rather than at its first decision. Creates
    the directory and the (empty) file, as the first line would."""
    path = Path(path)
    try:
        if path.is_dir():
            raise IsADirectoryError(21, "is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
    except OSError as e:
        reason = e.strerror or str(e)
        if isinstance(e, (FileExistsError, NotADirectoryError)):   # a file where a directory is
            reason = f"{e.filename or path.parent} is not a directory"
        return Problem(str(path), option, f"the audit log cannot be written: {reason}",
                       "give a file in a writable directory (the directory is created if missing)")
    return None


class AuditLog:
    """Appends JSON lines to `path`; rotates to path.1 … path.N when it would exceed max_bytes.

    flush_interval > 0 queues lines for a writer thread (see the module docstring); max_pending
    bounds that queue, batch_lines is the queue length that wakes the writer early. Lost lines
    are reported at the first loss, then at most every `report_every` seconds."""

    def __init__(self, path: str | Path | None, max_bytes: int = 50 * 1024 * 1024,
                 backups: int = 5, counters: Counters | None = None, *,
                 flush_interval: float = 0.0, max_pending: int = 65_536,
                 batch_lines: int = 1024, report_every: float = 60.0) -> None:
        self.path = Path(path) if path else None
        self.max_bytes = max_bytes
        self.backups = backups
        self.counters = counters or Counters()
        self.flush_interval = flush_interval if self.path is not None else 0.0
        self.max_pending = max_pending
        self.batch_lines = batch_lines
        self.report_every = report_every
        self._lock = threading.Lock()           # the file and its size
        self._file: BinaryIO | None = None
        self._size = 0
        self._last_complaint: float | None = None   # when lost lines were last reported
        self._failing = False          # the last write failed: say so when one succeeds again
        self._file_id: tuple[int, int] | None = None   # (device, inode) of the open file
        self._file_lines = 0           # lines written to the open file
        self._lines = LineEncoder()   # keeps each decision's encoded fields between lines
        # Buffered mode. _pending is replaced, never emptied in place, under _pending_lock.
        self._pending: list[_Entry] = []
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()          # something is queued
        self._hurry = threading.Event()         # write now: the queue is long, or closing
        self._writer: threading.Thread | None = None
        self._closing = False
        if self.flush_interval > 0:
            _buffered_logs.add(self)

    # --- recording ------------------------------------------------------------------------------

    def record(self, decision: Decision, **context: Any) -> None:
        """Count the decision and append (or queue) its audit line. Never raises."""
        self.counters.count(decision)
        if self.path is None:
            return
        try:
            if self.flush_interval > 0:
                self._enqueue((time.time(), decision, context))
                return
            line = self._lines.line(time.time(), decision, context)
        except Exception as e:  # noqa: BLE001 - the audit log must never open the gate
            self._failed(e)
            return
        self._write_lines([line])

    def write_raw(self, record: dict) -> None:
        """Append an arbitrary event (e.g. a policy reload) in the same file. Never raises."""
        if self.path is None:
            return
        try:
            if self.flush_interval > 0:
                self._enqueue((None, None, record))
                return
            line = encode(record)
        except Exception as e:  # noqa: BLE001
            self._failed(e)
            return
        self._write_lines([line])

    @property
    def queued(self) -> int:
        """Lines queued for the writer thread and not yet written (buffered mode)."""
        return len(self._pending)

    # --- buffered mode -----------------------------------------------------------------------

    def _enqueue(self, entry: _Entry) -> None:
        with self._pending_lock:
            pending = self._pending
            if len(pending) >= self.max_pending:
                lost = True
            else:
                lost = False
                pending.append(entry)
                queued = len(pending)
                if self._writer is None and not self._closing:
                    self._writer = threading.Thread(target=self._run, daemon=True,
                                                    name=f"audit-writer {self.path.name}")
                    self._writer.start()
        if lost:
            # Not _failed(): that waits for the file lock, which a write stuck on a hung disk
            # holds; the caller is a proxy's event loop and must not wait.
            self.counters.lost(1)
            self._complain(f"{self.max_pending} lines queued and not yet written")
            return
        if queued == 1:
            self._wake.set()
        elif queued == self.batch_lines:
            self._hurry.set()
        if self._closing:   # queued after close(): no writer any more
            self.flush()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            # Gather a batch: one write per interval, not one per line.
            self._hurry.wait(self.flush_interval)
            self._wake.clear()    # before taking the batch: a line queued after it wakes us
            self._hurry.clear()
            self.flush()
            if self._closing:
                return

    def flush(self) -> None:
        """Write every queued line now (buffered mode; a no-op otherwise). Never raises."""
        with self._lock:
            with self._pending_lock:
                batch, self._pending = self._pending, []
            if not batch:
                return
            lines = []
            for now, decision, context in batch:
                try:
                    lines.append(self._lines.line(now, decision, context))
                except Exception as e:  # noqa: BLE001 - one bad line must not cost the batch
                    self._failed_locked(e, 1)
            self._write_lines_locked(lines)

    # --- the file -----------------------------------------------------------------------------

    def _write_lines(self, lines: list[str]) -> None:
        with self._lock:
            self._write_lines_locked(lines)

    def _write_lines_locked(self, lines: list[str]) -> None:
        """Append lines, rotating before any line that would take the file past max_bytes.
        Never raises: the lines an error keeps out of the file are counted as lost."""
        chunk: list[str] = []
        chunk_size = 0
        written = 0
        try:
            if self._file is not None:
                self._watch_file()
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._open()
                self._size = self._file.seek(0, os.SEEK_END)
            for line in lines:
                n = len(line)   # ASCII (the encoder escapes everything else): bytes = characters
                if self._size + chunk_size and self._size + chunk_size + n > self.max_bytes:
                    if chunk:
                        self._append("".join(chunk).encode(), chunk_size, len(chunk))
                        written += len(chunk)
                        chunk, chunk_size = [], 0
                    self._rotate()
                chunk.append(line)
                chunk_size += n
            if chunk:
                self._append("".join(chunk).encode(), chunk_size, len(chunk))
        except Exception as e:  # noqa: BLE001 - the audit log must never open the gate
            self._failed_locked(e, len(lines) - written)
            return
        if self._failing and lines:
            self._failing = False
            log.warning("regionguard: audit log %s is written again (%d line(s) lost in all)",
                        self.path, self.counters.audit_failures)

    def _open(self) -> None:
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115
        st = os.fstat(self._file.fileno())
        self._file_id = (st.st_dev, st.st_ino)
        self._file_lines = 0

    def _watch_file(self) -> None:
        """Is the open file still the one at the path? If it was deleted (its directory removed,
        say), the lines written to it are lost: count them, say so, and let the next write start
        a new file. If it was renamed away (rotated by another program), just reopen the path."""
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._file_id:
                return
        except OSError:
            pass
        deleted = os.fstat(self._file.fileno()).st_nlink == 0
        lost = self._file_lines
        self._file.close()
        self._file = None
        if not deleted:
            log.info("regionguard: audit log %s was moved away; starting a new one", self.path)
            return
        self.counters.lost(lost)
        self._failing = True
        self._complain(f"the open file was deleted or its directory removed, with the {lost} "
                       "line(s) written to it since it was opened; a new file is started there")

    def _append(self, data: bytes, size: int, lines: int) -> None:
        view = memoryview(data)
        while view:   # an unbuffered file may write less than asked
            view = view[self._file.write(view):]
        self._size += size
        self._file_lines += lines
        self.counters.audit_written += lines

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
        self._open()
        self._size = 0

    def _failed(self, error: Exception) -> None:
        with self._lock:
            self._failed_locked(error, 1)

    def _failed_locked(self, error: Exception, lost: int) -> None:
        """Count `lost` lines, drop the file (the next write opens it again), say so."""
        self.counters.lost(lost)
        self._failing = True
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        self._complain(error)

    def _complain(self, error: object) -> None:
        """Say that lines are lost: at once the first time, then at most every report_every s."""
        now = time.monotonic()
        if self._last_complaint is None or now - self._last_complaint >= self.report_every:
            self._last_complaint = now
            log.error("regionguard: cannot write audit log %s: %s (decisions still enforced; "
                      "%d line(s) lost so far)", self.path, error, self.counters.audit_failures)

    def close(self) -> None:
        """Write what is queued, stop the writer, close the file. The log stays usable: a line
        recorded later is written at once."""
        self._closing = True
        writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            self._hurry.set()
            self._wake.set()
            writer.join(timeout=10)
        self.flush()
        self.flush_interval = 0.0   # anything later is written synchronously
        _buffered_logs.discard(self)
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

