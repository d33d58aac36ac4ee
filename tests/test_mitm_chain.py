"""The addon set (regionguard.mitm.addon.make_addons) and the policy addon's life cycle, in
process (taddons): one addon per concern, in an order that matters, fresh on every load; the
guard in mitmproxy's own chain; load, configure, running and done of the policy addon."""

from __future__ import annotations

import ast
import asyncio
import logging
import textwrap

from mitmproxy import hooks
from mitmproxy.test import taddons, tflow

from regionguard.mitm.addon import make_addons
from regionguard.mitm.policy_loader import PolicyLoader
from regionguard.mitm.zoom_guard import GUARD_NAME, ZoomGuard
from tests.conftest import ROOT, free_port
from tests.proxy_support import AddonSet, audit_lines, enforcing_addons

POLICY = textwrap.dedent("""
    version: 1
    account: {type: paid, default_region: US}
    regions: {opt_in: [US]}
    resolver: {nameservers: ["127.0.0.1:%d"], timeout: 1}
""")


def write_policy(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY % free_port())
    return path


def test_make_addons_gives_one_fresh_addon_per_concern_in_chain_order():
    first, second = make_addons(), make_addons()
    names = [getattr(a, "name", type(a).__name__.lower()) for a in first]
    assert names == ["regionguard", "regionguard_gateway", "regionguard_tls",
                     "regionguard_signalling", "regionguard_pac", "regionguard_connections",
                     "dnsfilter", "regionguard_metrics", "regionguard_summary",
                     "regionguard_relay_memory"]
    assert not {id(a) for a in first} & {id(a) for a in second}
    policy = first[0]
    assert all(a.policy is policy for a in (*first[1:6], *first[-3:-1]))   # one policy addon per set


def test_a_relayed_flow_keeps_only_its_last_message_unless_flows_are_saved(tmp_path):
    """A gateway relays hours of media: mitmproxy would keep every datagram of a flow until it
    ends. After each message only the last stays (what mitmproxy's display reads), unless flows
    are being saved (-w), which needs them all."""
    from mitmproxy.addons.save import Save
    from mitmproxy.tcp import TCPMessage
    from mitmproxy.test import taddons, tflow
    from mitmproxy.udp import UDPMessage

    from regionguard.mitm.relay_memory import RelayMemory

    trim = RelayMemory()
    with taddons.context(trim, Save()) as tctx:
        for make, message, hook in ((tflow.ttcpflow, TCPMessage, trim.tcp_message),
                                    (tflow.tudpflow, UDPMessage, trim.udp_message)):
            flow = make()
            for i in range(1000):
                flow.messages.append(message(i % 2 == 0, b"x" * 1200))
                hook(flow)
                assert len(flow.messages) == 1
            assert flow.messages[0].content == b"x" * 1200 and not flow.messages[0].from_client
        tctx.configure(trim, save_stream_file=str(tmp_path / "flows.mitm"))
        flow = tflow.ttcpflow()
        before = len(flow.messages)
        flow.messages.append(TCPMessage(True, b"kept"))
        trim.tcp_message(flow)
        assert len(flow.messages) == before + 1


def test_the_script_imports_the_packages_addons_and_edits_no_sys_path():
    text = (ROOT / "addons" / "regionguard_addon.py").read_text()
    code = [x for x in text.split('"""')[-1].splitlines() if x.strip()]
    assert code == ["from regionguard.mitm.addon import make_addons", "addons = make_addons()"]
    for path in [*ROOT.joinpath("addons").glob("*.py"), *ROOT.joinpath("regionguard", "mitm").glob("*.py")]:
        uses = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Attribute)
                and n.attr == "path" and isinstance(n.value, ast.Name) and n.value.id == "sys"]
        assert not uses, path


def test_load_puts_one_guard_in_mitmproxys_chain_and_a_reload_reuses_it(tmp_path):
    async def check():
        old, new = PolicyLoader(), PolicyLoader()
        with taddons.context(old) as tctx:
            guard = tctx.master.addons.get(GUARD_NAME)
            assert isinstance(guard, ZoomGuard) and guard in tctx.master.addons.chain
            assert old.not_enforcing() == "regionguard is loaded but not configured yet"
            tctx.configure(old, regionguard_policy=str(write_policy(tmp_path)))
            assert old.not_enforcing() is None and guard.enforcing is old
            # A script reload: the old set is done, the new one loaded beside the same guard.
            tctx.master.addons.remove(old)
            assert guard.enforcing is None and guard.problem == "regionguard was unloaded"
            tctx.master.addons.add(new)
            assert tctx.master.addons.get(GUARD_NAME) is guard
            tctx.configure(new)
            assert new.not_enforcing() is None and guard.enforcing is new

    asyncio.run(check())


def test_bad_deferred_options_are_taken_out_before_mitmproxy_converts_them(tmp_path):
    """`--set regionguard_reload=soon` would make mitmproxy drop the whole script: the policy
    addon takes it out at load and reports it at configure, leaving Zoom blocked."""
    async def check():
        addons = AddonSet()
        with taddons.context() as tctx:
            tctx.options.set("regionguard_reload=soon", "regionguard_policy=" + str(write_policy(tmp_path)),
                             defer=True)
            tctx.master.addons.add(*addons.all)
            assert "regionguard_reload" not in tctx.options.deferred
            tctx.master.addons.invoke_addon_sync(addons.policy, hooks.ConfigureHook(set()))
            assert addons.policy.not_enforcing() == "regionguard_reload: 'soon' is not a whole number"

    asyncio.run(check())


def test_running_starts_the_reload_loop_and_done_stops_it_and_closes_the_audit_log(tmp_path, caplog):
    audit = tmp_path / "audit.jsonl"

    async def check():
        with enforcing_addons(write_policy(tmp_path), audit, regionguard_audit_flush_ms=1000) as (addons, _):
            addons.policy.running()
            task = addons.policy._reload_task
            assert task is not None and not task.done()
            addons.policy.audit.write_raw({"event": "test"})
            addons.policy.done()
            assert addons.policy._reload_task is None
            await asyncio.sleep(0)
            assert task.cancelled()
            assert audit_lines(audit) == [{"event": "test"}]   # queued, then written at done()

    asyncio.run(check())


def test_running_while_not_enforcing_says_so_and_starts_nothing(tmp_path, caplog):
    """A policy loaded, then an option refused before running: nothing starts, no addon speaks
    of a proxy it is not enforcing (no PAC URL, no open-gateway warning), the guard blocks Zoom."""
    async def check():
        addons = AddonSet()
        with taddons.context(*addons.all) as tctx:
            tctx.configure(addons.policy, regionguard_policy=str(write_policy(tmp_path)))
            tctx.options.update(listen_host="0.0.0.0", mode=["regular@8765"], regionguard_reload=-1)
            with caplog.at_level(logging.INFO, logger="regionguard"):
                tctx.master.addons.trigger(hooks.RunningHook())
            assert "regionguard: not enforcing (regionguard_reload: -1 is out of range" in caplog.text
            assert "PAC file" not in caplog.text and "beyond loopback" not in caplog.text
            assert addons.policy._reload_task is None
            f = tflow.tflow()
            tctx.master.addons.get(GUARD_NAME).requestheaders(f)
            assert f.response is None                          # not Zoom's: the guard lets it be

    asyncio.run(check())
