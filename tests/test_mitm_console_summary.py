"""ConsoleSummary (regionguard.mitm.console_summary), hook by hook, in process (taddons, tflow):
`running` starts one periodic task and `done` ends it; each period the decisions taken since the
last line (real CONNECTs decided by the connections addon) make one console line, and an idle
period or `regionguard_summary=0` none. The line's wording is test_first_minute.py's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

from regionguard.mitm.console_summary import ConsoleSummary
from tests.proxy_support import enforcing_addons, lab_policy_text
from tests.test_proxy_hooks import connect_flow

LINE = re.compile(r"regionguard: last 1 s: (.*)")


@contextlib.contextmanager
def summary(tmp_path, seconds: int):
    policy = tmp_path / "policy.yaml"
    policy.write_text(lab_policy_text())   # DE allowed, IN not; names from the policy's hosts
    with enforcing_addons(policy, regionguard_summary=seconds) as (addons, tctx):
        yield next(a for a in addons.all if isinstance(a, ConsoleSummary)), addons, tctx


async def decide(addons, *names: str) -> None:
    for name in names:
        await addons.connections.http_connect(connect_flow(name))


def lines(caplog) -> list[str]:
    return [m.group(1) for r in caplog.records if (m := LINE.fullmatch(r.getMessage()))]


async def until_lines(caplog, count: int, timeout: float = 10.0) -> list[str]:
    """The summary lines once there are `count` of them (periods drift on a busy machine)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while len(lines(caplog)) < count:
        assert asyncio.get_running_loop().time() < deadline, f"no summary line {count}: {lines(caplog)}"
        await asyncio.sleep(0.05)
    return lines(caplog)


def test_running_starts_one_task_and_done_ends_it(tmp_path):
    async def check():
        with summary(tmp_path, 1) as (addon, _, _):
            addon.done()                            # before running: nothing to end
            addon.running()
            task = addon._task
            addon.running()                         # mitmproxy's running again: still one
            assert addon._task is task and not task.done()
            addon.done()
            await asyncio.sleep(0)
            assert addon._task is None and task.cancelled()

    asyncio.run(check())


def test_each_period_says_what_was_decided_since_the_last_line_and_an_idle_one_nothing(tmp_path,
                                                                                      caplog):
    async def check():
        with summary(tmp_path, 1) as (addon, addons, _), \
                caplog.at_level(logging.INFO, logger="regionguard"):
            addon.running()
            await asyncio.sleep(0)                  # the task starts: its first count taken
            await decide(addons, "de.zoom.us", "de.zoom.us", "in.zoom.us")
            assert await until_lines(caplog, 1) == ["allowed 2, blocked 1"]   # one period's
            await asyncio.sleep(1.5)                # an idle period went by: no line
            assert lines(caplog) == ["allowed 2, blocked 1"]
            await decide(addons, "in.zoom.us")      # only what is new since the last line
            assert await until_lines(caplog, 2) == ["allowed 2, blocked 1", "allowed 0, blocked 1"]
            addon.done()

    asyncio.run(check())


def test_a_summary_of_0_prints_nothing_until_turned_on_live(tmp_path, caplog):
    async def check():
        with summary(tmp_path, 0) as (addon, addons, tctx), \
                caplog.at_level(logging.INFO, logger="regionguard"):
            addon.running()
            await asyncio.sleep(0)
            await decide(addons, "de.zoom.us")
            await asyncio.sleep(1.3)
            assert lines(caplog) == []
            tctx.options.update(regionguard_summary=1)
            await asyncio.sleep(1.5)                # the off loop's next look: on, counting anew
            await decide(addons, "in.zoom.us")
            assert await until_lines(caplog, 1) == ["allowed 0, blocked 1"]   # not the one while off
            addon.done()

    asyncio.run(check())
