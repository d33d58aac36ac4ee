"""The `ConsoleSummary` addon: every `regionguard_summary` seconds, one console line with the
decisions taken since the last one ("allowed 12, blocked 1"), when there were any.

Why a summary and not an ALLOW line per connection: a busy proxy decides hundreds of Zoom
connections a minute, nearly all allowed; a line each would bury the BLOCK lines (one per
decision, at warning level) that a user must see, and a log record per connection costs more
than the decision. The summary shows that allowed traffic flows at a fixed, small cost. It reads
the audit log's Counters, kept whether or not an audit file is written: nothing per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Mapping

from mitmproxy import ctx

from regionguard.core.decision import Action
from regionguard.mitm.policy_loader import PolicyLoader

log = logging.getLogger("regionguard")

# In the order a reader looks for them; PASS (not Zoom's) only when audited (regionguard_audit_pass).
_WORDS = ((Action.ALLOW, "allowed"), (Action.BLOCK, "blocked"), (Action.REROUTE, "rerouted"),
          (Action.MONITOR, "monitored"), (Action.PASS, "not Zoom's"))


def summary_line(before: Mapping[str, int], after: Mapping[str, int], seconds: float) -> str | None:
    """The console line for the decisions counted between two snapshots by action, or None when
    nothing was decided (an idle proxy stays quiet)."""
    delta = {action: after.get(action, 0) - before.get(action, 0) for action, _ in _WORDS}
    if not any(delta.values()):
        return None
    # allowed and blocked always, so "blocked 0" says as much as "allowed 0"; the rest when seen
    parts = [f"{word} {delta[action]}" for action, word in _WORDS
             if delta[action] or action in (Action.ALLOW, Action.BLOCK)]
    return f"regionguard: last {seconds:g} s: " + ", ".join(parts)


class ConsoleSummary:
    name = "regionguard_summary"

    def __init__(self, policy: PolicyLoader) -> None:
        self.policy = policy
        self._task: asyncio.Task | None = None

    def running(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _loop(self) -> None:
        before: Counter[str] = self.policy.audit.counters.by_action
        while True:
            seconds = ctx.options.regionguard_summary
            if seconds <= 0:   # off; a live change may turn it on
                await asyncio.sleep(1)
                before = self.policy.audit.counters.by_action
                continue
            await asyncio.sleep(seconds)
            after = self.policy.audit.counters.by_action
            with contextlib.suppress(Exception):   # a console line must never stop the proxy
                line = summary_line(before, after, seconds)
                if line:
                    log.info("%s", line)
            before = after
