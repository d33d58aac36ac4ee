"""A changed policy file is picked up; an invalid one never replaces the running policy."""

import os

from regionguard.core import reload
from regionguard.core.reload import EngineHolder


def test_reload_on_change_and_keep_old_on_error(write_policy):
    path = write_policy("version: 1\naccount: {type: paid, default_region: US}\nregions: {opt_in: [US]}\n")
    holder = EngineHolder(path)
    first = holder.engine
    assert holder.check() is None and holder.engine is first  # unchanged: nothing done
    assert holder.engine.decide(None, None, "159.124.47.249", 8801, "udp").action == "block"

    path.write_text("version: 1\naccount: {type: paid, default_region: US}\nregions: {opt_in: [US, DE]}\n")
    os.utime(path, ns=(1, 1))  # make sure the stamp changes even within one clock tick
    assert holder.check() is None and holder.engine is not first
    assert holder.engine.decide(None, None, "159.124.47.249", 8801, "udp").action == "allow"
    good = holder.engine

    path.write_text("version: 1\naccount: {type: paid, default_region: US}\nregions: {opt_out: [US]}\n")
    os.utime(path, ns=(2, 2))
    error = holder.check()
    assert error is not None and "regions.opt_out" in str(error) and str(path) in str(error)
    assert holder.engine is good  # the old policy keeps running


def test_a_deleted_policy_is_reported_once_and_the_old_one_keeps_running(write_policy):
    text = "version: 1\naccount: {type: paid, default_region: US}\nregions: {opt_in: [US]}\n"
    path = write_policy(text)
    holder = EngineHolder(path)
    running = holder.engine
    path.unlink()
    error = holder.check()
    assert error is not None and "gone" in str(error) and str(path) in str(error)
    assert holder.check() is None            # said once, not on every check
    assert holder.engine is running
    path.write_text(text.replace("[US]", "[US, DE]"))
    assert holder.check() is None and holder.engine is not running   # back: loaded
    assert holder.last_error is None


POLICY = "version: 1\naccount: {type: paid, default_region: US}\nregions: {opt_in: [US]}\n"


def _change(path, text: str, stamp: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(stamp, stamp))   # a new stamp even within one clock tick


def test_a_crash_while_loading_keeps_the_old_policy_and_the_watching(write_policy, monkeypatch):
    path = write_policy(POLICY)
    holder = EngineHolder(path)
    running = holder.engine

    def crash(policy, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")   # what deep YAML once did

    monkeypatch.setattr(reload, "Engine", crash)
    _change(path, POLICY.replace("[US]", "[US, DE]"), 1)
    error = holder.check()                      # returns the failure, never raises it
    assert error is not None and "RecursionError" in str(error) and str(path) in str(error)
    assert holder.engine is running and holder.last_error is error
    monkeypatch.undo()
    _change(path, POLICY.replace("[US]", "[US, NL]"), 2)
    assert holder.check() is None and holder.engine is not running    # still watching
    assert "NL" in holder.engine.policy.rules.allowed
