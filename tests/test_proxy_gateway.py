"""Issue 12 item 4, the proxy as a gateway: only the policy's `gateway.clients` may use it, a
remote client never reaches the proxy host's own loopback or link-local services (unless
`gateway.allow_proxy_host`), and listening beyond loopback with no client list is said at
start-up. Real processes in network namespaces this test creates (tests/test_proxy_netns.py's
lab: client ns 10.200.0.2 ── router ns 10.200.0.1, where the proxy runs)."""

from __future__ import annotations

import textwrap

import pytest

from tests.proxy_support import Origin, Proxy, run_in_netns, sh, status_of
from tests.test_proxy_netns import CLIENT_IP, DE, ROUTER_IP, _curl_in, _missing
from tests.test_proxy_netns import lab as lab  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")

SECOND_CLIENT = "10.202.0.6"     # on the client's veth too; not in gateway.clients
LINK_LOCAL = "169.254.10.1"      # on the router's loopback: the proxy host's own link-local


def _policy(lab, gateway: str) -> None:
    lab["policy"].write_text(textwrap.dedent(f"""
        version: 1
        account: {{type: paid, default_region: US}}
        regions: {{opt_in: [US, DE]}}
        overrides:
          - {{match: 10.201.1.0/24, region: DE, zoom: true}}
        resolver:
          nameservers: ["127.0.0.1:9"]
          timeout: 1
          hosts: {{de.zoom.us: {DE}, own.example: 127.0.0.1, mapped.example: "::ffff:127.0.0.1"}}
        {gateway}
    """))


def _proxy(lab, *extra: str, command: str = "run", listen: str = ROUTER_IP) -> Proxy:
    proxy = Proxy(lab["policy"], lab["tmp"], *extra, listen_host=listen, command=command,
                  prefix=("ip", "netns", "exec", lab["router"]))
    lab["cleanup"].append(proxy.stop)
    return proxy


def _origins(lab, *addresses: str) -> dict[str, Origin]:
    """Plain HTTP origins in the router namespace (the proxy's host)."""
    started = {a: run_in_netns(lab["router"], lambda a=a: Origin(a, 0)) for a in addresses}
    lab["cleanup"].append(lambda: [o.stop() for o in started.values()])
    return started


def test_clients_outside_gateway_clients_are_refused_and_reported(lab):
    _policy(lab, f"gateway: {{clients: [{CLIENT_IP}/32]}}")
    sh("ip", "-n", lab["client"], "addr", "add", f"{SECOND_CLIENT}/32", "dev", lab["client_dev"])
    sh("ip", "-n", lab["router"], "route", "add", f"{SECOND_CLIENT}/32", "dev", lab["router_dev"])
    origin = _origins(lab, DE)[DE]
    proxy = _proxy(lab)
    url = f"http://{DE}:{origin.port}/"
    ok = _curl_in(lab["client"], "--interface", CLIENT_IP, "-x", f"http://{ROUTER_IP}:{proxy.port}", url)
    assert status_of(ok) == 200, ok.stderr + proxy.output()
    before = origin.connections
    for _ in range(5):   # refused every time; reported once (bounded)
        refused = _curl_in(lab["client"], "--interface", SECOND_CLIENT, "-x",
                           f"http://{ROUTER_IP}:{proxy.port}", url)
        assert refused.returncode != 0 and status_of(refused) is None, proxy.output()
    # Not Zoom's either: a refused client gets nothing at all, not even a non-Zoom site.
    other = _curl_in(lab["client"], "--interface", SECOND_CLIENT, "-x",
                     f"http://{ROUTER_IP}:{proxy.port}", f"http://{ROUTER_IP}:1/")
    assert other.returncode != 0 and status_of(other) is None
    assert origin.connections == before
    lines = proxy.wait_for_audit(lambda r: r.get("event") == "client-refused")
    refusals = [r for r in lines if r.get("event") == "client-refused"]
    assert [r["client"] for r in refusals] == [SECOND_CLIENT]
    assert proxy.output().count(f"refused client {SECOND_CLIENT}") == 1


@pytest.mark.parametrize("target", [
    "http://127.0.0.1:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://own.example:{port}/",
    "http://mapped.example:{port}/",
    "http://0.0.0.0:{port}/",
    "http://" + LINK_LOCAL + ":{link_port}/",
    "https://127.0.0.1:{port}/",           # a CONNECT
], ids=["loopback", "v4-mapped", "name-to-loopback", "name-to-mapped", "unspecified",
        "link-local", "connect"])
def test_remote_clients_never_reach_the_proxy_hosts_own_services(lab, target):
    _policy(lab, "")
    sh("ip", "-n", lab["router"], "addr", "add", f"{LINK_LOCAL}/32", "dev", "lo")
    own = _origins(lab, "127.0.0.1", LINK_LOCAL)
    proxy = _proxy(lab)
    url = target.format(port=own["127.0.0.1"].port, link_port=own[LINK_LOCAL].port)
    r = _curl_in(lab["client"], "-x", f"http://{ROUTER_IP}:{proxy.port}", url)
    assert status_of(r) == 403, r.stdout + r.stderr + proxy.output()
    assert "X-Regionguard-Rule: proxy-host" in r.stdout
    assert sum(o.connections for o in own.values()) == 0
    [line] = proxy.decisions(1)
    assert (line["action"], line["rule"], line["client"]) == ("block", "proxy-host", CLIENT_IP)


@pytest.mark.parametrize("mode, scheme", [("socks5", "socks5h"), ("socks5", "socks5")])
def test_socks5_remote_clients_never_reach_the_proxy_host_either(lab, mode, scheme):
    """Decided by address in `server_connect` (SOCKS5 by name or by address)."""
    _policy(lab, "")
    own = _origins(lab, "127.0.0.1")["127.0.0.1"]
    proxy = _proxy(lab, "--mode", mode)
    r = _curl_in(lab["client"], "--proxy", f"{scheme}://{ROUTER_IP}:{proxy.port}",
                 f"http://own.example:{own.port}/" if scheme == "socks5h" else
                 f"http://127.0.0.1:{own.port}/")
    assert r.returncode != 0 and own.connections == 0, r.stdout + proxy.output()
    [line] = proxy.decisions(1)
    assert (line["action"], line["rule"], line["hook"]) == ("block", "proxy-host", "server_connect")


def test_allow_proxy_host_is_the_switch_that_lets_remote_clients_reach_it(lab):
    own = _origins(lab, "127.0.0.1")["127.0.0.1"]
    url = f"http://127.0.0.1:{own.port}/"
    _policy(lab, "")
    closed = _proxy(lab)
    assert status_of(_curl_in(lab["client"], "-x", f"http://{ROUTER_IP}:{closed.port}", url)) == 403
    _policy(lab, "gateway: {allow_proxy_host: true}")
    opened = _proxy(lab)
    r = _curl_in(lab["client"], "-x", f"http://{ROUTER_IP}:{opened.port}", url)
    assert status_of(r) == 200 and own.connections == 1


WARNING = "beyond loopback, and the policy has no gateway.clients"


@pytest.mark.parametrize("command", ["run", "mitmdump"])
def test_listening_beyond_loopback_without_a_client_list_warns_at_start_up(lab, command):
    _policy(lab, "")
    open_proxy = _proxy(lab, command=command, listen="0.0.0.0")
    open_proxy.wait_for_output(WARNING)
    open_proxy.stop()
    _policy(lab, f"gateway: {{clients: [{CLIENT_IP}/32]}}")
    listed = _proxy(lab, command=command, listen="0.0.0.0")
    loopback = _proxy(lab, command=command, listen="127.0.0.1")
    for quiet in (listed, loopback):
        quiet.wait_for_output("in force")
        assert WARNING not in quiet.output()
