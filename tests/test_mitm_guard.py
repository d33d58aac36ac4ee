"""ZoomGuard (regionguard.mitm.zoom_guard), hook by hook, in process (taddons, tflow): while no
policy addon enforces, Zoom is blocked in every hook and other traffic left alone; while one
does, the guard does nothing. Its failure paths are in test_proxy_hooks.py."""

from __future__ import annotations

import asyncio
import textwrap

import pytest
from mitmproxy import dns as mdns
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow

from regionguard.mitm.policy_loader import PolicyLoader
from regionguard.mitm.zoom_guard import GUARD_NAME, ZoomGuard
from tests.conftest import free_port

POLICY = textwrap.dedent("""
    version: 1
    account: {type: paid, default_region: US}
    regions: {opt_in: [US]}
    resolver: {nameservers: ["127.0.0.1:%d"], timeout: 1}
""")

ZOOM, OTHER = ("de.zoom.us", "170.114.0.1"), ("www.example.org", "192.0.2.80")


def dns_flow(name: str):
    f = tflow.tdnsflow()
    f.request.questions = [mdns.Question(name, mdns.types.A, mdns.classes.IN)]
    return f


def connect_flow(host: str):
    f = tflow.tflow()
    f.request.method, f.request.host, f.request.port = "CONNECT", host, 443
    return f


def server_data(address: str, sni: str | None = None):
    f = tflow.tflow()
    f.server_conn.address, f.server_conn.sni, f.server_conn.error = (address, 443), sni, None
    return server_hooks.ServerConnectionHookData(server=f.server_conn, client=f.client_conn)


def blocked_by(guard: ZoomGuard, name: str, address: str) -> dict[str, bool]:
    """What each of the guard's hooks does to a connection or query for this name and address."""
    out = {}
    for hook in ("http_connect", "requestheaders"):
        for target in (name, address):
            f = connect_flow(target)
            getattr(guard, hook)(f)
            out[f"{hook} {target}"] = f.response is not None and f.response.status_code == 403
    for sni, address_ in ((name, address), (None, address), (None, name)):
        data = server_data(address_, sni)
        guard.server_connect(data)
        out[f"server_connect {sni} {address_}"] = bool(data.server.error)
    f = dns_flow(name)
    guard.dns_request(f)
    refused = f.response is not None and f.response.response_code == mdns.response_codes.REFUSED
    out[f"dns_request {name}"] = refused
    return out


@pytest.mark.parametrize("configured", [False, True], ids=["bundled-catalogue", "last-policy"])
def test_while_nothing_enforces_zoom_is_blocked_in_every_hook_and_nothing_else(tmp_path, configured):
    async def check():
        policy = PolicyLoader()
        with taddons.context(policy) as tctx:
            guard = tctx.master.addons.get(GUARD_NAME)
            if configured:
                path = tmp_path / "policy.yaml"
                path.write_text(POLICY % free_port())
                tctx.configure(policy, regionguard_policy=str(path))
                policy.done()                                  # unloaded: the last policy's is_zoom
            assert policy.not_enforcing() is not None
            assert all(blocked_by(guard, *ZOOM).values()), blocked_by(guard, *ZOOM)
            assert not any(blocked_by(guard, *OTHER).values()), blocked_by(guard, *OTHER)
            by_sni = server_data(OTHER[1], sni=ZOOM[0])          # a Zoom name to another address
            guard.server_connect(by_sni)
            assert by_sni.server.error
            f = connect_flow(ZOOM[0])
            f.response = tflow.tflow(resp=True).response        # answered already: left as it is
            guard.http_connect(f)
            assert f.response.status_code == 200

    asyncio.run(check())


def test_while_a_policy_addon_enforces_the_guard_does_nothing(tmp_path):
    async def check():
        policy = PolicyLoader()
        with taddons.context(policy) as tctx:
            path = tmp_path / "policy.yaml"
            path.write_text(POLICY % free_port())
            tctx.configure(policy, regionguard_policy=str(path))
            guard = tctx.master.addons.get(GUARD_NAME)
            assert not any(blocked_by(guard, *ZOOM).values())
            policy.done()

    asyncio.run(check())


def test_a_late_done_of_a_replaced_addon_does_not_disarm_its_successor():
    """A script reload may load the new set before the old one's done(): the guard stays armed
    by the new policy addon."""
    guard, old, new = ZoomGuard(), object(), object()
    guard.arm(old, lambda h, a: True)
    guard.arm(new, lambda h, a: True)
    guard.disarm(old, "regionguard was unloaded")
    assert guard.enforcing is new
    guard.disarm(new, "regionguard was unloaded")
    assert guard.enforcing is None and guard.problem == "regionguard was unloaded"


def test_tls_clienthello_is_never_intercepted_while_nothing_enforces():
    guard = ZoomGuard()
    data = type("Hello", (), {"ignore_connection": False})()
    guard.tls_clienthello(data)
    assert data.ignore_connection is True
    guard.arm(object(), lambda h, a: False)
    other = type("Hello", (), {"ignore_connection": False})()
    guard.tls_clienthello(other)
    assert other.ignore_connection is False
