"""The addon that owns regionguard's options and policy: declares every `regionguard_*` option,
checks the values, loads the policy, the audit log and the learned evidence, reloads the policy
when its file changes, and arms the guard (regionguard.mitm.zoom_guard) while all of that is good.

The other addons read what this one loaded (`holder`, `audit`) and take their options only from
a configuration it accepted. It is the addon named "regionguard": `regionguard run` and the DNS
addon look it up by that name.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions

from regionguard.async_reload import AsyncEngineHolder
from regionguard.audit.line import reload_record
from regionguard.audit.log import AuditLog, check_audit_path
from regionguard.core.errors import ConfigError
from regionguard.core.learned import open_state
from regionguard.core.paths import default_policy_path
from regionguard.mitm.options import OPTIONS, PREFIX, OptionProblem, check_values, parse_value
from regionguard.mitm.zoom_guard import GUARD_NAME, ZoomGuard

log = logging.getLogger("regionguard")

_AUDIT_OPTIONS = frozenset({"regionguard_audit", "regionguard_audit_max_bytes",
                            "regionguard_audit_backups", "regionguard_audit_flush_ms"})


def audit_line(path: str) -> str:
    """The start-up line saying where decisions are logged, or that they are not and how to."""
    if path:
        return f"regionguard: audit: decisions logged to {Path(path).resolve()} (one JSON line each)"
    return ("regionguard: audit: off, decisions are not logged to a file; to keep them: "
            "regionguard run --audit FILE (mitmdump: --set regionguard_audit=FILE)")


class PolicyLoader:
    name = "regionguard"

    def __init__(self) -> None:
        self.holder: AsyncEngineHolder | None = None
        self.audit = AuditLog(None)
        self.configured_once = False
        self._running = False
        self._reload_task: asyncio.Task | None = None
        self._bad_options: dict[str, str] = {}
        self._guard = ZoomGuard()   # replaced by the one in mitmproxy's chain in load()
        self._learned: Any = None   # the LearnedStore; False: learning is off

    # --- hooks --------------------------------------------------------------------------------

    def load(self, loader: Any) -> None:
        for option in OPTIONS:
            loader.add_option(option.name, option.kind, option.default, option.help,
                              choices=option.choices)
        # Reported by configure(), which mitmproxy calls next: at start-up its error makes
        # mitmproxy exit; where it cannot (a script reload), the guard keeps Zoom blocked.
        self._bad_options = self._take_bad_options(loader.master.options)
        guard = loader.master.addons.get(GUARD_NAME)
        if guard is None:
            guard = ZoomGuard()
            loader.master.addons.add(guard)
        self._guard = guard
        guard.disarm(self, "regionguard is loaded but not configured yet")

    def configure(self, updated: set[str]) -> None:
        self.configured_once = True
        try:
            self._configure(updated)
        except exceptions.OptionsError as e:
            if self._running:
                raise   # a live change (mitmweb, console): mitmproxy rejects it and says why
            # At startup an error log makes mitmproxy exit (code 1) with this message alone,
            # instead of a traceback around it. Until it does, the guard blocks Zoom.
            self._guard.disarm(self, str(e))
            log.error("regionguard: %s\nZoom traffic is blocked until this is fixed", e)

    def running(self) -> None:
        self._running = True
        problem = self.not_enforcing()
        if problem is not None:
            log.error("regionguard: not enforcing (%s); Zoom traffic is blocked", problem)
            return
        log.info("%s", audit_line(ctx.options.regionguard_audit))
        if self._reload_task is None and ctx.options.regionguard_reload > 0:
            self._reload_task = asyncio.get_running_loop().create_task(self._reload_loop())

    def done(self) -> None:
        self._guard.disarm(self, "regionguard was unloaded")
        if self._reload_task is not None:
            self._reload_task.cancel()
            self._reload_task = None
        self.audit.close()
        if self._learned:
            self._learned.close()   # writes what is still pending

    # --- what the other addons ask ------------------------------------------------------------

    def not_enforcing(self) -> str | None:
        """Why no policy is enforced, or None when this addon's policy and options are in force
        (so, inside a configure round, whether this round's options were accepted)."""
        return None if self._guard.enforcing is self else self._guard.problem

    async def check_policy(self) -> None:
        """Reload the policy if its file changed; audit the outcome either way."""
        holder = self.holder
        if holder is None:
            return
        before = holder.engine
        error = await holder.check_async()   # parsed off the event loop
        after = holder.engine.policy.version_id if holder.engine is not before else None
        record = reload_record(holder.path, before.policy.version_id, after, error)
        if record is not None:
            self.audit.write_raw(record)

    # --- inside ---------------------------------------------------------------------------------

    @staticmethod
    def _take_bad_options(options: Any) -> dict[str, str]:
        """Check the values waiting for our options (`--set`, config.yaml) before mitmproxy
        converts them: a value it cannot convert makes it drop this whole script without a word,
        leaving a proxy with no policy. Bad ones are taken out and returned, name → problem."""
        bad = {}
        for name, raw in list(options.deferred.items()):
            if not name.startswith(PREFIX):
                continue
            try:
                parse_value(name, getattr(raw, "val", raw))
            except OptionProblem as e:
                bad[name] = str(e)
                del options.deferred[name]
        return bad

    def _configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if self._running:   # a live change sets these options again: checked below
            for name in updated & self._bad_options.keys():
                del self._bad_options[name]
        if self._bad_options:
            raise exceptions.OptionsError("\n".join(self._bad_options.values()))
        problems = check_values({o.name: getattr(opts, o.name) for o in OPTIONS})
        if problems:
            raise exceptions.OptionsError("\n".join(problems))
        if "regionguard_policy" in updated or "regionguard_state_dir" in updated \
                or self.holder is None:
            self._load_policy(opts, "regionguard_state_dir" in updated)
        if updated & _AUDIT_OPTIONS or self.audit.path is None and opts.regionguard_audit:
            self._open_audit(opts)
        holder = self.holder
        self._guard.arm(self, lambda host, address: holder.engine.is_zoom(host, address))

    def _load_policy(self, opts: Any, state_dir_changed: bool) -> None:
        path = Path(opts.regionguard_policy) if opts.regionguard_policy else default_policy_path()
        if self._learned is None or state_dir_changed:
            if self._learned not in (None, False):
                self._learned.close()
            self._learned = open_state(opts.regionguard_state_dir or None) or False
        try:
            holder = AsyncEngineHolder(path, self._learned or None)
        except ConfigError as e:
            raise exceptions.OptionsError(f"regionguard_policy: invalid policy:\n{e}") from None
        except OSError as e:
            raise exceptions.OptionsError(f"regionguard_policy: {path}: {e}") from None
        self.holder = holder
        for w in holder.engine.policy.warnings:
            log.warning("regionguard: policy warning: %s", w)
        log.info("regionguard: policy %s (%s) in force", path, holder.engine.policy.version_id)

    def _open_audit(self, opts: Any) -> None:
        unwritable = check_audit_path(opts.regionguard_audit, "regionguard_audit") \
            if opts.regionguard_audit else None
        if unwritable is not None:   # at start-up, not at the first lost line
            raise exceptions.OptionsError(str(unwritable))
        old = self.audit
        self.audit = AuditLog(opts.regionguard_audit or None, opts.regionguard_audit_max_bytes,
                              opts.regionguard_audit_backups, counters=old.counters,
                              flush_interval=opts.regionguard_audit_flush_ms / 1000)
        old.close()
        if self._running:   # a live change; the start-up line is running()'s
            log.info("%s", audit_line(opts.regionguard_audit))

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(ctx.options.regionguard_reload or 1)
            try:
                await self.check_policy()
            except Exception:  # noqa: BLE001 - a reload problem must not stop future reloads
                log.exception("regionguard: policy reload check failed")
