"""The addon's failure paths, in process: an internal error must block Zoom and pass the rest.

These drive the real addon object through mitmproxy's own test harness (taddons/tflow); the
end-to-end behaviour is in test_proxy.py."""

from __future__ import annotations

import asyncio
import textwrap

import pytest
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow

from regionguard.mitm.connections import ConnectionEnforcer
from regionguard.mitm.enforce import Enforcer
from tests.proxy_support import AddonSet

POLICY = textwrap.dedent("""
    version: 1
    account: {type: paid, default_region: US}
    regions: {opt_in: [US]}
    overrides:
      - {match: 127.0.2.0/24, region: IN, zoom: true}
    resolver: {hosts: {in.zoom.us: 127.0.2.1, plain.example: 127.0.3.1}}
""")


@pytest.fixture
def addon(tmp_path, monkeypatch):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    addons = AddonSet()

    async def broken(*args, **kwargs):
        raise RuntimeError("simulated failure inside the decision path")

    async def run(check):
        with taddons.context(*addons.all) as tctx:
            tctx.configure(addons.policy, regionguard_policy=str(policy),
                           regionguard_audit=str(tmp_path / "audit.jsonl"))
            monkeypatch.setattr(Enforcer, "verdict", broken)
            await check(addons.connections)
            addons.policy.done()   # as mitmproxy does at shutdown: writes the queued audit lines

    return run, tmp_path


def _connect_flow(host: str, port: int = 443):
    f = tflow.tflow()
    f.request.method = "CONNECT"
    f.request.host, f.request.port = host, port
    return f


def test_internal_error_blocks_a_zoom_connect_and_passes_other_traffic(addon):
    run, tmp_path = addon

    async def check(guard):
        zoom = _connect_flow("in.zoom.us")
        await guard.http_connect(zoom)
        assert zoom.response is not None and zoom.response.status_code == 403
        assert zoom.response.headers["X-Regionguard-Rule"] == "internal-error"
        other = _connect_flow("plain.example")
        await guard.http_connect(other)
        assert other.response is None

    asyncio.run(run(check))
    assert '"rule":"internal-error"' in (tmp_path / "audit.jsonl").read_text()


def test_internal_error_kills_a_zoom_server_connection_by_address(addon):
    run, _ = addon

    async def check(guard):
        for address, blocked in (("127.0.2.1", True), ("127.0.3.1", False)):
            f = tflow.tflow()
            f.server_conn.address = (address, 8801)
            f.server_conn.transport_protocol = "udp"
            f.server_conn.error = None
            data = server_hooks.ServerConnectionHookData(server=f.server_conn, client=f.client_conn)
            await guard.server_connect(data)
            assert bool(data.server.error) is blocked, address

    asyncio.run(run(check))


def test_flows_are_marked_and_commented_for_mitmweb(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    addons = AddonSet()
    guard = addons.connections

    async def run():
        with taddons.context(*addons.all) as tctx:
            tctx.configure(addons.policy, regionguard_policy=str(policy))
            f = _connect_flow("in.zoom.us")
            await guard.http_connect(f)
            assert f.response.status_code == 403
            assert f.marked == ":no_entry:"
            assert "block" in f.comment and "region IN" in f.comment

    asyncio.run(run())


def test_an_error_anywhere_in_a_hook_fails_closed_for_zoom(tmp_path, monkeypatch):
    """Not only the decision: a failure after it (here, recording) must not let Zoom through."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    addons = AddonSet()
    guard = addons.connections

    def broken_record(*args, **kwargs):
        raise OSError("simulated failure while recording")

    async def run():
        with taddons.context(*addons.all) as tctx:
            tctx.configure(addons.policy, regionguard_policy=str(policy))
            monkeypatch.setattr(ConnectionEnforcer, "_record", broken_record)
            zoom = _connect_flow("in.zoom.us")
            await guard.http_connect(zoom)
            assert zoom.response is not None and zoom.response.status_code == 403
            assert zoom.response.headers["X-Regionguard-Rule"] == "internal-error"
            f = tflow.tflow()
            f.server_conn.address = ("127.0.2.1", 8801)
            f.server_conn.error = None
            data = server_hooks.ServerConnectionHookData(server=f.server_conn, client=f.client_conn)
            await guard.server_connect(data)
            assert data.server.error and "fail closed" in data.server.error

    asyncio.run(run())


def test_an_unconfigured_addon_leaves_zoom_blocked_by_the_guard(tmp_path):
    """A bad option the proxy could not stop for: the guard (in mitmproxy's chain, not the
    script's) refuses Zoom and nothing else until the options are good."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    addon = AddonSet().policy

    async def run():
        with taddons.context(addon) as tctx:
            guard = tctx.master.addons.get("regionguard_guard")
            assert guard is not None
            tctx.configure(addon, regionguard_policy=str(policy), regionguard_reload=-1)
            assert "regionguard_reload: -1 is out of range" in addon.not_enforcing()
            zoom, by_address, other = (_connect_flow("de.zoom.us"), _connect_flow("170.114.0.1"),
                                       _connect_flow("plain.example"))
            for f in (zoom, by_address, other):
                guard.http_connect(f)
            assert zoom.response.status_code == 403 and by_address.response.status_code == 403
            assert zoom.response.headers["X-Regionguard-Rule"] == "not-enforcing"
            assert other.response is None
            f = tflow.tflow()
            f.server_conn.address, f.server_conn.error = ("170.114.0.1", 8801), None
            data = server_hooks.ServerConnectionHookData(server=f.server_conn, client=f.client_conn)
            guard.server_connect(data)
            assert data.server.error and "not enforcing" in data.server.error
            tctx.configure(addon, regionguard_reload=1)          # good again: enforcing
            assert addon.not_enforcing() is None
            later = _connect_flow("de.zoom.us")
            guard.http_connect(later)
            assert later.response is None                        # the addon decides now
            addon.done()

    asyncio.run(run())
