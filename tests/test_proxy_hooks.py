"""The addon's hooks one by one, in process, through mitmproxy's own test harness (taddons,
tflow, tutils): the paths the end-to-end tests (test_proxy.py) cannot aim at. The addon is loaded
as `regionguard run` loads them (make_addons, through proxy_support.AddonSet), with a real policy
and the real engine;
where a path is about a failing dependency, the dependency is broken on purpose (the enforcer, the
Zoom check, the gateway check, the reload) and the test asserts that Zoom stays blocked.

One group of tests per hook: tls_clienthello, http_connect, requestheaders,
http_connect_upstream, server_connect, client_connected, configure (live option changes), and
running (the reload loop), and the guard that blocks Zoom while nothing enforces."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

import pytest
from mitmproxy import exceptions
from mitmproxy.proxy import context, mode_specs, server_hooks
from mitmproxy.test import taddons, tflow, tutils
from mitmproxy.tls import ClientHello, ClientHelloData

from regionguard.core.decision import Engine
from regionguard.core.zoom import ZoomCatalogue
from regionguard.mitm.enforce import Enforcer
from tests.proxy_support import LAB_DE, LAB_IN, LAB_OTHER, AddonSet, lab_policy_text

DE, IN, OTHER = LAB_DE, LAB_IN, LAB_OTHER
policy_text = lab_policy_text


@pytest.fixture
def policy(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text())
    return path


@contextlib.asynccontextmanager
async def enforcing(policy, tmp_path, **options):
    """The addons in a mitmproxy master, configured with the policy, audit log and options."""
    addons = AddonSet()
    with taddons.context(*addons.all) as tctx:
        tctx.configure(addons.policy, regionguard_policy=str(policy),
                       regionguard_audit=str(tmp_path / "audit.jsonl"),
                       regionguard_audit_flush_ms=0, **options)
        assert addons.policy.not_enforcing() is None
        try:
            yield addons, tctx
        finally:
            addons.policy.done()


def broken(what: str):
    """A stand-in that raises, for the dependency a test breaks on purpose."""
    def fail(*args, **kwargs):
        raise RuntimeError(f"simulated failure: {what}")

    async def afail(*args, **kwargs):
        fail()

    return fail, afail


def connect_flow(host: str, port: int = 443, mode: str = "regular"):
    f = tflow.tflow()
    f.request.method, f.request.host, f.request.port = "CONNECT", host, port
    f.client_conn.proxy_mode = mode_specs.ProxyMode.parse(mode)
    return f


def request_flow(host: str, port: int = 80, mode: str = "regular"):
    f = tflow.tflow(req=tutils.treq(host=host, port=port, scheme=b"http", authority=b""))
    f.request.headers["Host"] = host
    f.client_conn.proxy_mode = mode_specs.ProxyMode.parse(mode)
    return f


def server_data(address: str, port: int = 8801, sni: str | None = None, transport: str = "udp"):
    f = tflow.tflow()
    f.server_conn.address, f.server_conn.sni, f.server_conn.error = (address, port), sni, None
    f.server_conn.transport_protocol = transport
    f.client_conn.proxy_mode = mode_specs.ProxyMode.parse("wireguard")
    return server_hooks.ServerConnectionHookData(server=f.server_conn, client=f.client_conn)


# --- tls_clienthello: which TLS connections are intercepted ------------------------------------


def raw_client_hello(sni: str | None) -> ClientHello:
    """A real ClientHello, as Python's ssl module sends it (with this SNI, or none)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    record = outgoing.read()
    assert record[0] == 0x16 and record[5] == 0x01      # a handshake record holding a ClientHello
    length = int.from_bytes(record[6:9])
    return ClientHello(record[9:9 + length])


def hello(tctx, sni: str | None, server_address: str | None) -> ClientHelloData:
    ctx = context.Context(tflow.tclient_conn(), tctx.options)
    ctx.server.address = (server_address, 443) if server_address else None
    data = ClientHelloData(ctx, raw_client_hello(sni))
    assert data.client_hello.sni == sni
    return data


# (SNI, server address): Zoom's by name, by a name as the server address (explicit proxy), by
# address alone; not Zoom's.
ZOOM_HELLOS = [("de.zoom.us", DE), ("in.zoom.us", None), (None, "de.zoom.us"), (None, IN),
               (None, "::ffff:127.0.2.1")]
OTHER_HELLOS = [("plain.example", OTHER), (None, OTHER), ("plain.example", None)]


@pytest.mark.parametrize(("intercept", "zoom_ignored", "other_ignored"), [
    ("none", True, True),          # the default: nothing intercepted, no CA on clients
    ("non-zoom", True, False),     # mitmproxy's own behaviour for others; Zoom passes through
    ("all", False, False),         # the operator asked for everything, Zoom included
])
def test_tls_clienthello_intercepts_what_regionguard_intercept_chooses(
        policy, tmp_path, intercept, zoom_ignored, other_ignored):
    async def check():
        async with enforcing(policy, tmp_path, regionguard_intercept=intercept) as (addon, tctx):
            for sni, address in ZOOM_HELLOS:
                data = hello(tctx, sni, address)
                addon.tls.tls_clienthello(data)
                assert data.ignore_connection is zoom_ignored, (sni, address)
            for sni, address in OTHER_HELLOS:
                data = hello(tctx, sni, address)
                addon.tls.tls_clienthello(data)
                assert data.ignore_connection is other_ignored, (sni, address)

    asyncio.run(check())


def test_tls_clienthello_never_intercepts_when_the_zoom_check_raises(policy, tmp_path,
                                                                      monkeypatch):
    async def check():
        async with enforcing(policy, tmp_path, regionguard_intercept="non-zoom") as (addon, tctx):
            monkeypatch.setattr(Engine, "is_zoom", broken("is_zoom")[0])
            for sni, address in OTHER_HELLOS + ZOOM_HELLOS:
                data = hello(tctx, sni, address)
                addon.tls.tls_clienthello(data)
                assert data.ignore_connection is True, (sni, address)

    asyncio.run(check())


def test_tls_clienthello_is_never_intercepted_while_nothing_enforces(policy, tmp_path):
    async def check():
        addons = AddonSet()
        with taddons.context(*addons.all) as tctx:
            tctx.configure(addons.policy, regionguard_policy=str(policy), regionguard_intercept="all",
                           regionguard_reload=-1)                     # bad: not enforcing
            guard = tctx.master.addons.get("regionguard_guard")
            for sni, address in OTHER_HELLOS + ZOOM_HELLOS:
                data = hello(tctx, sni, address)
                guard.tls_clienthello(data)
                assert data.ignore_connection is True, (sni, address)

    asyncio.run(check())


# --- http_connect and requestheaders: the explicit proxy ---------------------------------------


@pytest.mark.parametrize("hook", ["http_connect", "requestheaders"])
def test_explicit_proxy_decides_by_policy(policy, tmp_path, hook):
    make = connect_flow if hook == "http_connect" else request_flow

    async def check():
        async with enforcing(policy, tmp_path) as (addon, _):
            blocked, allowed, other = make("in.zoom.us"), make("de.zoom.us"), make("plain.example")
            for f in (blocked, allowed, other):
                await getattr(addon.connections, hook)(f)
            assert blocked.response.status_code == 403
            assert blocked.response.headers["X-Regionguard-Rule"] == "region-disallowed"
            assert allowed.response is None and other.response is None
            if hook == "requestheaders":      # plain HTTP is pinned to the checked address
                assert (allowed.request.host, other.request.host) == (DE, OTHER)
                assert allowed.request.host_header == "de.zoom.us"

    asyncio.run(check())


@pytest.mark.parametrize("hook", ["http_connect", "requestheaders"])
def test_explicit_proxy_blocks_everything_when_even_the_zoom_check_raises(
        policy, tmp_path, monkeypatch, hook):
    """The enforcer fails, and so does the check that would tell Zoom from the rest: nothing
    can be told apart, so nothing goes through (not even the non-Zoom name)."""
    make = connect_flow if hook == "http_connect" else request_flow

    async def check():
        async with enforcing(policy, tmp_path) as (addon, _):
            monkeypatch.setattr(Enforcer, "verdict", broken("verdict")[1])
            monkeypatch.setattr(Engine, "is_zoom", broken("is_zoom")[0])
            for host in ("in.zoom.us", "de.zoom.us", "plain.example", OTHER):
                f = make(host)
                await getattr(addon.connections, hook)(f)
                assert f.response is not None and f.response.status_code == 403, host
                assert f.response.headers["X-Regionguard-Rule"] == "internal-error"
                assert "RuntimeError('simulated failure: verdict')" in \
                    f.response.headers["X-Regionguard-Reason"]

    asyncio.run(check())


def test_requestheaders_fails_closed_for_zoom_only_when_the_enforcer_raises(policy, tmp_path, monkeypatch):
    async def check():
        async with enforcing(policy, tmp_path) as (addon, _):
            monkeypatch.setattr(Enforcer, "verdict", broken("verdict")[1])
            zoom, by_address, other = (request_flow("de.zoom.us"), request_flow(DE),
                                       request_flow("plain.example"))
            for f in (zoom, by_address, other):
                await addon.connections.requestheaders(f)
            assert zoom.response.status_code == 403 and by_address.response.status_code == 403
            assert zoom.response.headers["X-Regionguard-Rule"] == "internal-error"
            assert other.response is None and other.request.host == "plain.example"
        lines = (tmp_path / "audit.jsonl").read_text().splitlines()
        assert len(lines) == 2 and all('"rule":"internal-error"' in x for x in lines)

    asyncio.run(check())


# --- http_connect_upstream: the CONNECT sent on to an upstream proxy ---------------------------


def test_http_connect_upstream_sends_the_checked_address_or_an_unconnectable_target(
        policy, tmp_path, monkeypatch):
    async def check():
        async with enforcing(policy, tmp_path) as (addon, _):
            upstream = "upstream:http://127.0.0.1:3128"
            allowed, blocked = connect_flow("de.zoom.us", mode=upstream), connect_flow(
                "in.zoom.us", mode=upstream)
            for f in (allowed, blocked):
                await addon.connections.http_connect_upstream(f)
            assert (allowed.request.host, allowed.request.authority) == (DE, f"{DE}:443")
            assert (blocked.request.host, blocked.request.port) == ("blocked.regionguard.invalid", 9)
            # The enforcer fails: Zoom's CONNECT goes nowhere, another one is left alone; when the
            # Zoom check fails too, every CONNECT goes nowhere.
            monkeypatch.setattr(Enforcer, "verdict", broken("verdict")[1])
            zoom, other = connect_flow("de.zoom.us", mode=upstream), connect_flow(
                "plain.example", mode=upstream)
            for f in (zoom, other):
                await addon.connections.http_connect_upstream(f)
            assert zoom.request.host == "blocked.regionguard.invalid"
            assert (other.request.host, other.request.port) == ("plain.example", 443)
            monkeypatch.setattr(Engine, "is_zoom", broken("is_zoom")[0])
            unknown = connect_flow("plain.example", mode=upstream)
            await addon.connections.http_connect_upstream(unknown)
            assert (unknown.request.host, unknown.request.port) == ("blocked.regionguard.invalid", 9)

    asyncio.run(check())


# --- server_connect: every other mode, by address ---------------------------------------------


def test_server_connect_blocks_every_address_when_even_the_zoom_check_raises(policy, tmp_path, monkeypatch):
    async def check():
        async with enforcing(policy, tmp_path) as (addon, _):
            monkeypatch.setattr(Enforcer, "verdict", broken("verdict")[1])
            other = server_data(OTHER)
            await addon.connections.server_connect(other)
            assert other.server.error is None            # the Zoom check works: not Zoom's
            monkeypatch.setattr(Engine, "is_zoom", broken("is_zoom")[0])
            for address, sni in ((OTHER, None), (OTHER, "plain.example"), (DE, None)):
                data = server_data(address, sni=sni)
                await addon.connections.server_connect(data)
                assert "rule internal-error" in data.server.error, address

    asyncio.run(check())


def test_server_connect_pins_an_allowed_name_and_blocks_a_disallowed_address(policy, tmp_path):
    async def check():
        async with enforcing(policy, tmp_path) as (addon, _):
            by_name = server_data("de.zoom.us", 443, transport="tcp")
            await addon.connections.server_connect(by_name)
            assert by_name.server.error is None
            assert (by_name.server.address, by_name.server.sni) == ((DE, 443), "de.zoom.us")
            fronted = server_data(IN, 443, sni="de.zoom.us", transport="tcp")
            await addon.connections.server_connect(fronted)
            assert "region IN, rule region-disallowed" in fronted.server.error

    asyncio.run(check())


# --- client_connected: the gateway ------------------------------------------------------------


def test_client_connected_refuses_when_the_gateway_check_raises(policy, tmp_path, monkeypatch):
    async def check():
        async with enforcing(policy, tmp_path) as (addon, _):
            ok = tflow.tclient_conn()
            addon.gateway.client_connected(ok)
            assert ok.error is None                      # no gateway.clients: loopback may use it
            gateway = type(addon.policy.holder.engine.policy.gateway)
            monkeypatch.setattr(gateway, "client_allowed", broken("client_allowed")[0])
            client = tflow.tclient_conn()
            addon.gateway.client_connected(client)
            assert client.error == ("regionguard: client 127.0.0.1 is not in the policy's "
                                    "gateway.clients")
        assert '"event":"client-refused"' in (tmp_path / "audit.jsonl").read_text()

    asyncio.run(check())


# --- configure: a live option change (mitmweb, the console) -----------------------------------


@pytest.mark.parametrize(("option", "bad", "message"), [
    ("regionguard_reload", -1, "regionguard_reload: -1 is out of range"),
    ("regionguard_audit_max_bytes", 10, "regionguard_audit_max_bytes: 10 is out of range"),
    ("regionguard_pac_path", "proxy.pac", "must start with '/'"),
    ("regionguard_policy", "/nonexistent/policy.yaml", "/nonexistent/policy.yaml"),
    ("regionguard_intercept", "everything", "everything"),
])
def test_a_bad_live_option_change_is_rejected_and_enforcement_stays(policy, tmp_path, option, bad, message):
    async def check():
        async with enforcing(policy, tmp_path, regionguard_reload=0) as (addon, tctx):
            addon.policy.running()
            before, version = getattr(tctx.options, option), addon.policy.holder.engine.policy.version_id
            with pytest.raises(exceptions.OptionsError, match=message.replace("(", r"\(")):
                tctx.options.update(**{option: bad})
            assert getattr(tctx.options, option) == before       # mitmproxy kept the old value
            assert addon.policy.not_enforcing() is None
            holder = addon.policy.holder
            assert (holder.path, holder.engine.policy.version_id) == (policy, version)
            f = connect_flow("in.zoom.us")
            await addon.connections.http_connect(f)
            assert f.response.status_code == 403
            assert f.response.headers["X-Regionguard-Rule"] == "region-disallowed"
            tctx.options.update(regionguard_reload=5)             # a good change still applies
            assert tctx.options.regionguard_reload == 5

    asyncio.run(check())


# --- running: the policy reload loop ----------------------------------------------------------


async def _until(predicate, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def test_the_reload_loop_survives_a_failing_check_and_keeps_the_policy(policy, tmp_path, monkeypatch, caplog):
    """Each check fails (the reload machinery raises, not the policy file): the loop logs it,
    goes on checking, keeps the policy in force; once checks work, a change is picked up."""
    calls = []

    async def check():
        async with enforcing(policy, tmp_path, regionguard_reload=1) as (addon, _):
            holder_class = type(addon.policy.holder)
            real = holder_class.check_async

            async def failing(self):
                calls.append("failed")
                raise RuntimeError("simulated failure: reload check")

            monkeypatch.setattr(holder_class, "check_async", failing)
            with caplog.at_level(logging.ERROR, logger="regionguard"):
                addon.policy.running()
                await _until(lambda: len(calls) >= 2)    # it kept checking after a failure
            assert "regionguard: policy reload check failed" in caplog.text
            assert "simulated failure: reload check" in caplog.text
            f = connect_flow("in.zoom.us")
            await addon.connections.http_connect(f)
            assert f.response.status_code == 403           # the policy stays in force
            monkeypatch.setattr(holder_class, "check_async", real)
            policy.write_text(policy_text(", IN"))        # now IN is allowed
            await _until(lambda: '"ok":true' in (tmp_path / "audit.jsonl").read_text()
                         if (tmp_path / "audit.jsonl").exists() else False)
            g = connect_flow("in.zoom.us")
            await addon.connections.http_connect(g)
            assert g.response is None                      # the change was picked up

    asyncio.run(check())


def test_the_reload_loop_keeps_the_policy_when_the_new_file_is_invalid(policy, tmp_path):
    async def check():
        async with enforcing(policy, tmp_path, regionguard_reload=1) as (addon, _):
            addon.policy.running()
            policy.write_text(policy_text(", Atlantis"))
            audit = tmp_path / "audit.jsonl"
            await _until(lambda: audit.exists() and '"ok":false' in audit.read_text())
            assert "Atlantis" in audit.read_text()
            f = connect_flow("in.zoom.us")
            await addon.connections.http_connect(f)
            assert f.response.status_code == 403

    asyncio.run(check())


# --- the guard: what blocks Zoom while no addon enforces ---------------------------------------


@pytest.mark.parametrize("armed", [True, False], ids=["last-policy", "bundled-catalogue"])
def test_the_guard_blocks_everything_when_its_zoom_check_raises(policy, tmp_path,
                                                                monkeypatch, armed):
    """Not enforcing (the addon was unloaded), and the Zoom check the guard relies on (the last
    good policy's, or the bundled catalogue's) raises: nothing can be told apart, so every
    CONNECT, request, server connection and DNS query is refused."""
    async def check():
        addon = AddonSet()
        with taddons.context(*addon.all) as tctx:
            guard = tctx.master.addons.get("regionguard_guard")
            if armed:
                tctx.configure(addon.policy, regionguard_policy=str(policy))
                addon.policy.done()                                   # unloaded: not enforcing
                monkeypatch.setattr(Engine, "is_zoom", broken("is_zoom")[0])
            else:
                monkeypatch.setattr(ZoomCatalogue, "load", broken("catalogue")[0])
            assert addon.policy.not_enforcing() is not None
            for f in (connect_flow("plain.example"), request_flow("plain.example")):
                guard.http_connect(f)
                assert f.response.status_code == 403
                assert f.response.headers["X-Regionguard-Rule"] == "not-enforcing"
            data = server_data(OTHER)
            guard.server_connect(data)
            assert "not enforcing" in data.server.error
            dns = tflow.tdnsflow()
            guard.dns_request(dns)
            assert dns.response is not None and dns.response.response_code == 5   # REFUSED

    asyncio.run(check())
