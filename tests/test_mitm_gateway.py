"""GatewayAccess (regionguard.mitm.gateway), in process (taddons, tflow): who may use the proxy,
how refusals are reported, and the start-up warning for a proxy open beyond loopback."""

from __future__ import annotations

import asyncio
import logging
import textwrap

import pytest
from mitmproxy.test import tflow

from regionguard.mitm import gateway
from tests.conftest import free_port
from tests.proxy_support import audit_lines, enforcing_addons

POLICY = textwrap.dedent("""
    version: 1
    account: {type: paid, default_region: US}
    regions: {opt_in: [US]}
    resolver: {nameservers: ["127.0.0.1:%d"], timeout: 1}
""")


def write_policy(tmp_path, clients: str | None):
    path = tmp_path / "policy.yaml"
    text = POLICY % free_port()
    if clients is not None:
        text += f"gateway: {{clients: [{clients}]}}\n"
    path.write_text(text)
    return path


def client_from(address: str):
    """A client connection from this address (only data: nothing is sent anywhere)."""
    client = tflow.tclient_conn()
    client.peername = (address, 40000)
    return client


def refused(audit):
    return [x for x in audit_lines(audit) if x.get("event") == "client-refused"]


def test_client_connected_refuses_only_clients_outside_gateway_clients(tmp_path):
    audit = tmp_path / "audit.jsonl"

    async def check():
        with enforcing_addons(write_policy(tmp_path, "192.0.2.0/25"), audit) as (addons, _):
            inside, outside = client_from("192.0.2.9"), client_from("198.51.100.9")
            addons.gateway.client_connected(inside)
            addons.gateway.client_connected(outside)
            assert inside.error is None
            assert outside.error == "regionguard: client 198.51.100.9 is not in the policy's gateway.clients"
        reports = [(x["client"], x["refused_since_last_report"]) for x in refused(audit)]
        assert reports == [("198.51.100.9", 0)]

    asyncio.run(check())


def test_refusals_of_one_address_are_reported_once_a_minute_with_a_count(tmp_path, monkeypatch, caplog):
    audit = tmp_path / "audit.jsonl"
    now = [1000.0]
    monkeypatch.setattr(gateway.time, "monotonic", lambda: now[0])

    async def check():
        with enforcing_addons(write_policy(tmp_path, "192.0.2.0/25"), audit) as (addons, _):
            with caplog.at_level(logging.WARNING, logger="regionguard"):
                for _ in range(5):
                    addons.gateway.client_connected(client_from("198.51.100.9"))
                now[0] += gateway.REFUSED_REPORT_EVERY
                addons.gateway.client_connected(client_from("198.51.100.9"))
        assert [x["refused_since_last_report"] for x in refused(audit)] == [0, 4]
        assert "4 more refused since the last report" in caplog.text

    asyncio.run(check())


@pytest.mark.parametrize(("clients", "listen_host", "warned"), [
    (None, "0.0.0.0", True),             # open to the network, anyone may use it: said
    (None, "127.0.0.1", False),          # loopback only
    ("10.0.0.0/8", "0.0.0.0", False),    # the policy says who may
])
def test_running_warns_of_a_proxy_open_beyond_loopback(tmp_path, caplog, clients, listen_host, warned):
    async def check():
        with enforcing_addons(write_policy(tmp_path, clients)) as (addons, tctx):
            tctx.options.update(listen_host=listen_host, mode=["regular@8765"])
            with caplog.at_level(logging.WARNING, logger="regionguard"):
                addons.gateway.running()
        said = "regular listens on 0.0.0.0:8765, beyond loopback, and the policy has no gateway.clients"
        assert (said in caplog.text) is warned

    asyncio.run(check())


def test_nothing_is_refused_while_no_policy_is_loaded(tmp_path):
    """Not enforcing before any policy loaded: the guard blocks Zoom, and no one is refused."""
    async def check():
        with enforcing_addons(write_policy(tmp_path, "192.0.2.0/25")) as (addons, _):
            addons.policy.holder = None
            client = client_from("198.51.100.9")
            addons.gateway.client_connected(client)
            assert client.error is None

    asyncio.run(check())
