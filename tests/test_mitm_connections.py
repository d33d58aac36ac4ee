"""ConnectionEnforcer (regionguard.mitm.connections), hook by hook, in process (taddons, tflow):
what a verdict reached at the HTTP level leaves on mitmproxy's connection objects, and how the
later hooks of the same connection use it. The failure paths are in test_proxy_hooks.py."""

from __future__ import annotations

import asyncio

from mitmproxy.proxy import mode_specs, server_hooks
from mitmproxy.test import tflow, tutils

from regionguard.mitm.connection_state import client_state, peek_client_state, server_verdict
from tests.proxy_support import LAB_DE, LAB_IN, LAB_OTHER, audit_lines, enforcing_addons, lab_policy_text

DE, IN, OTHER = LAB_DE, LAB_IN, LAB_OTHER


def write_policy(tmp_path, more: str = ""):
    path = tmp_path / "policy.yaml"
    path.write_text(lab_policy_text(more))
    return path


def request_flow(host: str, port: int = 80, mode: str = "regular", client=None):
    f = tflow.tflow(req=tutils.treq(host=host, port=port, scheme=b"http", authority=b""))
    if client is not None:
        f.client_conn = client
    f.request.headers["Host"] = host
    f.client_conn.proxy_mode = mode_specs.ProxyMode.parse(mode)
    return f


def connect_flow(host: str, port: int = 443):
    f = tflow.tflow()
    f.request.method, f.request.host, f.request.port = "CONNECT", host, port
    f.client_conn.proxy_mode = mode_specs.ProxyMode.parse("regular")
    return f


def server_data(f, address=None):
    """The server connection mitmproxy opens for flow `f` (to `address`, default: its request's)."""
    f.server_conn.address = (address or f.request.host, f.request.port)
    f.server_conn.error = None
    return server_hooks.ServerConnectionHookData(server=f.server_conn, client=f.client_conn)


def decisions(audit):
    return [x for x in audit_lines(audit) if "action" in x]


# --- http_connect → server_connect → tcp_start: one tunnel, decided once -----------------------


def test_a_connect_is_decided_once_and_its_server_connection_pinned_and_marked(tmp_path):
    audit = tmp_path / "audit.jsonl"

    async def check():
        with enforcing_addons(write_policy(tmp_path), audit) as (addons, _):
            enforcer = addons.connections
            f = connect_flow("de.zoom.us")
            await enforcer.http_connect(f)
            assert f.response is None and f.request.host == DE
            assert (DE, 443) in client_state(f.client_conn).decided   # waits on the client connection
            data = server_data(f)
            await enforcer.server_connect(data)
            assert data.server.error is None and data.server.address == (DE, 443)
            assert server_verdict(data.server).address == DE
            assert not client_state(f.client_conn).decided              # used up
            tcp = tflow.ttcpflow(client_conn=f.client_conn, server_conn=f.server_conn)
            tcp.marked, tcp.comment = "", ""
            enforcer.tcp_start(tcp)
            assert tcp.marked == ":white_check_mark:" and "region DE" in tcp.comment
            enforcer.server_disconnected(data)
            assert server_verdict(data.server) is None
        assert [(d["host"], d["hook"]) for d in decisions(audit)] == [("de.zoom.us", "http_connect")]

    asyncio.run(check())


def test_a_server_connection_nobody_decided_is_decided_by_its_own_address(tmp_path):
    audit = tmp_path / "audit.jsonl"

    async def check():
        with enforcing_addons(write_policy(tmp_path), audit) as (addons, _):
            f = tflow.tflow()
            f.client_conn.proxy_mode = mode_specs.ProxyMode.parse("wireguard")
            data = server_data(f, IN)
            await addons.connections.server_connect(data)
            assert "rule region-disallowed" in data.server.error
            assert server_verdict(data.server) is None
        assert [(d["address"], d["hook"]) for d in decisions(audit)] == [(IN, "server_connect")]

    asyncio.run(check())


# --- requestheaders: plain HTTP over keep-alive client connections -----------------------------


def test_keep_alive_requests_are_decided_once_per_client_connection_and_policy(tmp_path):
    audit = tmp_path / "audit.jsonl"
    policy = write_policy(tmp_path)

    async def check():
        with enforcing_addons(policy, audit) as (addons, _):
            enforcer = addons.connections
            first = request_flow("de.zoom.us")
            await enforcer.requestheaders(first)
            again = request_flow("de.zoom.us", client=first.client_conn)   # same connection
            await enforcer.requestheaders(again)
            assert again.request.host == DE and again.marked == ":white_check_mark:"
            assert len(decisions(audit)) == 1
            other_client = request_flow("de.zoom.us")                     # a new connection
            await enforcer.requestheaders(other_client)
            assert len(decisions(audit)) == 2
            enforcer.client_disconnected(first.client_conn)
            assert peek_client_state(first.client_conn) is None
            policy.write_text(lab_policy_text(", IN"))   # a new policy ...
            await addons.policy.check_policy()
            later = request_flow("de.zoom.us", client=other_client.client_conn)
            await enforcer.requestheaders(later)
            assert len(decisions(audit)) == 3                             # ... decides again

    asyncio.run(check())


def test_requestheaders_leaves_what_other_hooks_decide(tmp_path):
    """Not the explicit proxy (decided in server_connect), a CONNECT (http_connect), a request
    already answered, plain HTTP inside a decided tunnel: none is decided or audited here."""
    audit = tmp_path / "audit.jsonl"

    async def check():
        with enforcing_addons(write_policy(tmp_path), audit) as (addons, _):
            enforcer = addons.connections
            transparent = request_flow("in.zoom.us", mode="wireguard")
            connect = connect_flow("in.zoom.us")
            answered = request_flow("in.zoom.us")
            answered.response = tutils.tresp()
            tunnel = connect_flow("de.zoom.us", 80)
            await enforcer.http_connect(tunnel)
            await enforcer.server_connect(server_data(tunnel))
            inside = request_flow(DE, client=tunnel.client_conn)
            inside.server_conn = tunnel.server_conn
            for f in (transparent, connect, answered, inside):
                await enforcer.requestheaders(f)
                assert f.response is None or f is answered
            assert answered.response.status_code == 200
        assert len(decisions(audit)) == 1                                 # the tunnel's CONNECT

    asyncio.run(check())


def test_a_name_that_is_not_zoom_and_does_not_resolve_gets_a_502(tmp_path):
    async def check():
        with enforcing_addons(write_policy(tmp_path)) as (addons, _):
            f = request_flow("nowhere.invalid")
            await addons.connections.requestheaders(f)
            assert f.response.status_code == 502
            assert f.response.text.startswith("regionguard: cannot resolve nowhere.invalid")

    asyncio.run(check())


def test_audit_pass_follows_the_accepted_option(tmp_path):
    audit = tmp_path / "audit.jsonl"

    async def check():
        with enforcing_addons(write_policy(tmp_path), audit) as (addons, tctx):
            await addons.connections.http_connect(connect_flow("plain.example"))
            assert decisions(audit) == []                                 # pass: not audited
            tctx.options.update(regionguard_audit_pass=True)
            await addons.connections.http_connect(connect_flow("plain.example"))
            assert [d["action"] for d in decisions(audit)] == ["pass"]

    asyncio.run(check())
