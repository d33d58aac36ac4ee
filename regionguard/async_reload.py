"""The event-loop half of core.reload's EngineHolder, for the front ends that run a loop.

The proxy addon (regionguard.mitm) and `regionguard dns` (regionguard.dns) serve from an asyncio
event loop. Reading a policy and building its Engine take from milliseconds to seconds (a big
policy, a slow disk, GeoIP databases); on the loop that would stall every connection and every
DNS answer meanwhile. So here the parse and build run in a worker thread, and the swap, one
attribute assignment, happens back on the loop. The core's holder stays free of asyncio
(tests/test_layout.py checks it): `check()` there is the same reload, done in the caller's thread.

Both front ends share this module, so both report a reload alike: a policy swapped in, as one
rejected (the running one stays), is a line on the console, whatever the front end's verbosity
(`regionguard dns` shows warnings only, unless -v; the proxy shows information too).
"""

from __future__ import annotations

import asyncio
import logging

from regionguard.core.errors import ConfigError
from regionguard.core.reload import EngineHolder

log = logging.getLogger(__name__)
# A policy swapped in is news to whoever runs the server, as one rejected is: shown even by a
# front end that shows warnings only, as the failures are.
log.setLevel(logging.INFO)


class AsyncEngineHolder(EngineHolder):
    """An EngineHolder whose checks read the policy off the event loop."""

    _log = log                                 # reloads reported at INFO, shown (see above)
    _background: asyncio.Task | None = None   # check_soon()'s, while one runs
    _busy = False                              # a check_async() is parsing

    async def check_async(self) -> ConfigError | None:
        """check(), with the parse and build in a worker thread so the event loop keeps serving.
        A call while one is in progress returns None at once; a change it would have seen is seen
        by the next call (two parses in flight could finish out of order)."""
        if self._busy:
            return None
        changed, stamp = self._changed()
        if not changed:
            return None
        if stamp is None:
            return self._gone()
        self._busy = True
        try:
            result = await asyncio.to_thread(self._build)
        finally:
            self._busy = False
        return self._apply(result)

    def check_soon(self) -> None:
        """Start check_async() in the background when called on an event loop (a hook that must
        not wait), else check() at once. At most one check runs at a time."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.check()
            return
        if self._background is None or self._background.done():
            self._background = loop.create_task(self._check_logged())

    async def _check_logged(self) -> None:
        try:
            await self.check_async()
        except Exception:  # noqa: BLE001 - _build() catches everything; belt and braces
            log.exception("regionguard: policy check of %s failed", self.path)
