"""PacServer (regionguard.mitm.pac_server), in process (taddons, tflow): which requests get the
PAC file, what it names, and that a new policy gives a new file."""

from __future__ import annotations

import asyncio
import logging
import textwrap

import pytest
from mitmproxy.test import tflow, tutils

from tests.conftest import free_port
from tests.proxy_support import enforcing_addons

POLICY = textwrap.dedent("""
    version: 1
    account: {type: paid, default_region: US}
    regions: {opt_in: [US]}
    resolver: {nameservers: ["127.0.0.1:%d"], timeout: 1}
""")


@pytest.fixture
def policy(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY % free_port())
    return path


def pac_request(host: str = "127.0.0.1", port: int = 8080, path: str = "/proxy.pac",
                method: str = "GET", sockname=("127.0.0.1", 8080)):
    f = tflow.tflow(req=tutils.treq(host=host, port=port, path=path.encode(), method=method.encode(),
                                    scheme=b"http", authority=b""))
    f.request.headers["Host"] = f"{host}:{port}"
    f.client_conn.sockname = sockname
    return f


def test_the_pac_file_is_served_at_its_path_on_the_proxys_own_address(policy):
    async def check():
        with enforcing_addons(policy) as (addons, _):
            for f in (pac_request(), pac_request(path="/proxy.pac?v=2"), pac_request("localhost")):
                addons.pac.requestheaders(f)
                assert f.response.status_code == 200, f.request.url
                assert f.response.headers["Content-Type"] == "application/x-ns-proxy-autoconfig"
                assert 'var REGIONGUARD_PROXY = "PROXY ' in f.response.text
            for f in (pac_request(path="/other.pac"), pac_request(method="POST"),
                      pac_request(port=9090), pac_request("192.0.2.7")):
                addons.pac.requestheaders(f)
                assert f.response is None, f.request.url

    asyncio.run(check())


def test_the_pac_file_names_the_address_the_client_reached_or_the_option(policy):
    async def check():
        with enforcing_addons(policy) as (addons, tctx):
            f = pac_request()
            addons.pac.requestheaders(f)
            assert 'REGIONGUARD_PROXY = "PROXY 127.0.0.1:8080"' in f.response.text
            tctx.options.update(regionguard_pac_proxy="10.0.0.1:3128")
            g = pac_request()
            addons.pac.requestheaders(g)
            assert 'REGIONGUARD_PROXY = "PROXY 10.0.0.1:3128"' in g.response.text

    asyncio.run(check())


def test_a_new_policy_gives_a_new_pac_file(policy):
    async def check():
        with enforcing_addons(policy) as (addons, _):
            before = pac_request()
            addons.pac.requestheaders(before)
            assert "meet.customer.example" not in before.response.text
            policy.write_text(policy.read_text() + "overrides:\n"
                              "  - {match: meet.customer.example, region: US, zoom: true}\n")
            await addons.policy.check_policy()
            after = pac_request()
            addons.pac.requestheaders(after)
            assert '"meet.customer.example"' in after.response.text

    asyncio.run(check())


def test_an_empty_path_turns_the_pac_file_off_and_a_rejected_path_is_not_taken(policy):
    async def check():
        with enforcing_addons(policy) as (addons, tctx):
            tctx.options.update(regionguard_pac_path="")
            f = pac_request()
            addons.pac.requestheaders(f)
            assert f.response is None
            # Refused by the policy addon before running (logged, not raised): not enforcing,
            # and the PAC addon keeps the path it had.
            tctx.options.update(regionguard_pac_path="/p.pac", regionguard_reload=-1)
            assert addons.policy.not_enforcing() is not None
            g = pac_request(path="/p.pac")
            addons.pac.requestheaders(g)
            assert g.response is None

    asyncio.run(check())


def test_running_announces_the_pac_url_of_each_regular_proxy(policy, caplog):
    async def check():
        with enforcing_addons(policy) as (addons, tctx):
            tctx.options.update(mode=["regular@8765"])
            with caplog.at_level(logging.INFO, logger="regionguard"):
                addons.pac.running()
            assert "PAC file (only Zoom through this proxy): http://127.0.0.1:8765/proxy.pac" in caplog.text

    asyncio.run(check())
