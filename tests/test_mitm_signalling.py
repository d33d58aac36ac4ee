"""RoomConnectorSignalling (regionguard.mitm.signalling), its one hook, in process (taddons): which
connections `next_layer` relays as raw TCP (a SIP or H.323 opening on the room-connector ports,
which mitmproxy would take for HTTP) and which it leaves to mitmproxy's choice. Calls through a
real proxy are test_proxy_crc.py's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

import pytest
from mitmproxy.connection import Server
from mitmproxy.proxy import context, events, layer, layers
from mitmproxy.proxy.layers.http import HttpLayer, HTTPMode
from mitmproxy.test import taddons, tflow

from regionguard.mitm.policy_loader import PolicyLoader
from regionguard.mitm.signalling import RoomConnectorSignalling
from tests.proxy_support import LAB_DE, enforcing_addons, lab_policy_text

INVITE = b"INVITE sip:85746382910@zoomcrc.com SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.9\r\n\r\n"
SETUP = b"\x03\x00\x00\x30\x08\x02\x00\x01\x05"   # TPKT + Q.931 SETUP: how H.323 opens on 1720


def tls_record() -> bytes:
    """A real ClientHello record, as Python's ssl module sends it (SIP over TLS opens so)."""
    tls = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(),
                                                server_hostname="zoomcrc.com")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def next_layer(tctx, port: int | None, data: bytes, *, transport: str = "tcp",
               chosen: str | None = None) -> layer.NextLayer:
    """A connection to LAB_DE:port whose client sent `data`, with mitmproxy's guess so far:
    None, "http" (what it makes of a SIP request line) or "tcp"."""
    ctx = context.Context(tflow.tclient_conn(), tctx.options)
    ctx.client.transport_protocol = transport
    ctx.server = Server(address=(LAB_DE, port) if port else None)
    nextlayer = layer.NextLayer(ctx)
    nextlayer.events.append(events.DataReceived(ctx.client, data))
    if chosen == "http":
        nextlayer.layer = HttpLayer(ctx, HTTPMode.regular)
    elif chosen == "tcp":
        nextlayer.layer = layers.TCPLayer(ctx)
    return nextlayer


@contextlib.contextmanager
def signalling(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(lab_policy_text())
    with enforcing_addons(policy) as (addons, tctx):
        yield next(a for a in addons.all if isinstance(a, RoomConnectorSignalling)), tctx


def relayed(nextlayer: layer.NextLayer) -> bool:
    return type(nextlayer.layer) is layers.TCPLayer


@pytest.mark.parametrize(("port", "data", "chosen"), [
    (5060, INVITE, None), (5060, INVITE, "http"), (5061, INVITE, "http"), (1720, SETUP, None)])
def test_next_layer_relays_signalling_on_the_room_connector_ports_as_raw_tcp(tmp_path, port,
                                                                             data, chosen):
    async def check():
        with signalling(tmp_path) as (addon, tctx):
            nextlayer = next_layer(tctx, port, data, chosen=chosen)
            addon.next_layer(nextlayer)
            assert relayed(nextlayer)

    asyncio.run(check())


def test_next_layer_leaves_mitmproxy_s_choice_everywhere_else(tmp_path):
    async def check():
        with signalling(tmp_path) as (addon, tctx):
            cases = {
                "an HTTP port": next_layer(tctx, 443, INVITE, chosen="http"),
                "TLS on a SIP port": next_layer(tctx, 5061, tls_record()),
                "UDP": next_layer(tctx, 5060, INVITE, transport="udp"),
                "no server address": next_layer(tctx, None, INVITE),
                "a layer other than HTTP chosen": next_layer(tctx, 5060, INVITE, chosen="tcp"),
            }
            before = {name: nextlayer.layer for name, nextlayer in cases.items()}
            for nextlayer in cases.values():
                addon.next_layer(nextlayer)
            changed = [name for name, nextlayer in cases.items() if nextlayer.layer is not before[name]]
            assert changed == []

    asyncio.run(check())


def test_next_layer_with_no_policy_in_force_leaves_the_connection_to_the_guard():
    async def check():
        policy = PolicyLoader()
        addon = RoomConnectorSignalling(policy)
        with taddons.context(policy, addon) as tctx:
            assert policy.holder is None
            nextlayer = next_layer(tctx, 5060, INVITE)
            addon.next_layer(nextlayer)
            assert nextlayer.layer is None

    asyncio.run(check())


def test_next_layer_that_fails_to_class_the_port_logs_it_and_leaves_the_connection(tmp_path,
                                                                                   caplog,
                                                                                   monkeypatch):
    async def check():
        with signalling(tmp_path) as (addon, tctx):
            def broken(self, transport, port):
                raise RuntimeError("simulated failure: port_service")

            monkeypatch.setattr(type(addon.policy.holder.engine.zoom), "port_service", broken)
            nextlayer = next_layer(tctx, 5060, INVITE)
            with caplog.at_level(logging.ERROR, logger="regionguard"):
                addon.next_layer(nextlayer)
            assert nextlayer.layer is None
            assert "simulated failure: port_service" in caplog.text

    asyncio.run(check())
