"""The event-loop half of the policy holder (regionguard.async_reload), shared by the proxy and
`regionguard dns`: the policy is read in a worker thread, swapped on the loop, and every reload,
good or bad, is reported even by a front end that shows warnings only."""

import asyncio
import logging
import threading

import pytest

from regionguard.async_reload import AsyncEngineHolder
from regionguard.core import reload
from tests.test_core_reload import POLICY, _change


def test_check_async_reads_the_policy_in_a_worker_thread_and_swaps_on_the_loop(write_policy, monkeypatch):
    path = write_policy(POLICY)
    holder = AsyncEngineHolder(path)
    threads = []
    real = reload.load_policy

    def recording(p):
        threads.append(threading.current_thread())
        return real(p)

    monkeypatch.setattr(reload, "load_policy", recording)

    async def main():
        running = holder.engine
        _change(path, POLICY.replace("[US]", "[US, DE]"), 1)
        pending = asyncio.ensure_future(holder.check_async())
        await asyncio.sleep(0)
        assert holder.engine is running          # the loop is free while the file is read
        assert await holder.check_async() is None   # a second check while one runs: no-op
        assert await pending is None
        assert holder.engine is not running and "DE" in holder.engine.policy.rules.allowed
        _change(path, "version: 1\n", 2)     # invalid: the error comes back, the engine stays
        kept = holder.engine
        error = await holder.check_async()
        assert error is not None and "default_region" in str(error) and holder.engine is kept
        # check_soon(), for hooks that cannot wait: started in the background
        _change(path, POLICY.replace("[US]", "[US, NL]"), 3)
        holder.check_soon()
        assert holder.engine is kept
        await holder._background
        assert "NL" in holder.engine.policy.rules.allowed

    asyncio.run(main())
    assert threads and threading.main_thread() not in threads


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def console_at_warning():
    """The root logger as `regionguard dns` sets it up without -v: warnings and worse."""
    root = logging.getLogger()
    handler, level = Collect(), root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_a_reload_good_or_bad_reaches_a_console_that_shows_warnings_only(write_policy,
                                                                        console_at_warning):
    path = write_policy(POLICY)
    holder = AsyncEngineHolder(path)
    first = holder.engine.policy.version_id

    async def main():
        _change(path, POLICY.replace("[US]", "[US, DE]"), 1)
        assert await holder.check_async() is None
        _change(path, "version: 1\n", 2)
        assert await holder.check_async() is not None

    asyncio.run(main())
    lines = [r.getMessage() for r in console_at_warning]
    swapped = [line for line in lines if "reloaded" in line and "not reloaded" not in line]
    assert len(swapped) == 1 and str(path) in swapped[0] and first in swapped[0], lines
    assert holder.engine.policy.version_id in swapped[0]
    assert any("not reloaded" in line and "default_region" in line for line in lines), lines
