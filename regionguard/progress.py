"""A progress bar on stderr for long reads (replay, report, data update): bytes read of the bytes
there are; when how many is not known (a download without Content-Length), the bytes read so far.

Shown only when asked, or when stderr is a terminal and the input is large; redrawn at most a few
times a second, so it costs nothing measurable on the hot path.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

AUTO_MIN_BYTES = 8 * 1024 * 1024   # smaller inputs finish before a bar would be read


def wanted(mode: str, total_bytes: int, stream: TextIO | None = None) -> bool:
    """mode: 'auto' (a terminal and a large input), 'always', 'never'."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    stream = stream or sys.stderr
    return stream.isatty() and total_bytes >= AUTO_MIN_BYTES


class ProgressBar:
    def __init__(self, total_bytes: int | None, label: str = "", stream: TextIO | None = None,
                 width: int = 30, interval: float = 0.2) -> None:
        """total_bytes None: unknown, only the bytes received are shown."""
        self.total = None if total_bytes is None else max(total_bytes, 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.interval = interval
        self.done_before = 0          # bytes of the files already finished
        self._last = 0.0
        self._done = 0                # bytes drawn or to draw last

    def start_file(self, label: str) -> None:
        self.label = label

    def finish_file(self, size: int) -> None:
        self.done_before += size

    def update(self, position: int) -> None:
        """Bytes read so far in the current file."""
        self._done = self.done_before + position
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        self._draw(self._done)

    def _draw(self, done: int) -> None:
        if self.total is None:
            self.stream.write(f"\r{self.label[-40:]:<40} {done / 1e6:8.1f} MB received")
            self.stream.flush()
            return
        frac = min(done / self.total, 1.0)
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r{self.label[-40:]:<40} [{bar}] {frac * 100:5.1f}% "
                          f"{done / 1e6:8.1f}/{self.total / 1e6:.1f} MB")
        self.stream.flush()

    def close(self) -> None:
        self._draw(self._done if self.total is None else self.total)
        self.stream.write("\n")
        self.stream.flush()
