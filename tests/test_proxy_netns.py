"""Gateway modes in network namespaces this test creates: transparent mode behind an nftables
redirect, and WireGuard mode (wireguard-go client) carrying TCP and Zoom media on UDP 8801.

Topology (all inside namespaces made here; nothing touches the host's own interfaces):
  client ns  veth 10.200.0.2/30  ──  veth 10.200.0.1/30  router ns
                                                          lo: 10.201.1.1 (DE), 10.201.2.1 (IN)
                                                          origins + regionguard run
Skips, saying why, when not root or a tool is missing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
import time
from itertools import count

import pytest

from regionguard.mitm.run import stop
from tests.netns import netns_missing
from tests.proxy_support import (
    Proxy,
    UdpEcho,
    body_json,
    make_cert,
    origins_on_one_port,
    run_in_netns,
    sh,
    status_of,
    tear_down_lab,
)

DE, IN = "10.201.1.1", "10.201.2.1"
ROUTER_IP, CLIENT_IP = "10.200.0.1", "10.200.0.2"
_seq = count()


def _missing() -> str | None:
    return netns_missing("nft", "curl", "wg", "wireguard-go")


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")

POLICY = textwrap.dedent("""
    version: 1
    name: gateway-test
    account: {type: paid, default_region: US}
    regions: {opt_in: [US, DE]}
    overrides:
      - {match: 10.201.1.0/24, region: DE, zoom: true}
      - {match: 10.201.2.0/24, region: IN, zoom: true}
""")


@pytest.fixture
def lab(tmp_path):
    """Two namespaces joined by a veth pair; origin addresses on the router's loopback."""
    n = f"{os.getpid() % 10000}{next(_seq)}"
    router, client = f"rg-r{n}", f"rg-c{n}"
    sh("ip", "netns", "add", router)
    sh("ip", "netns", "add", client)
    cleanup = []
    try:
        sh("ip", "link", "add", f"rgr{n}", "netns", router, "type", "veth",
           "peer", "name", f"rgc{n}", "netns", client)
        sh("ip", "-n", router, "addr", "add", f"{ROUTER_IP}/30", "dev", f"rgr{n}")
        sh("ip", "-n", client, "addr", "add", f"{CLIENT_IP}/30", "dev", f"rgc{n}")
        for ns, dev in ((router, f"rgr{n}"), (client, f"rgc{n}")):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for a in (DE, IN):
            sh("ip", "-n", router, "addr", "add", f"{a}/32", "dev", "lo")
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY)
        cert = make_cert(tmp_path, ["de.zoom.us", "in.zoom.us"], [DE, IN])
        yield {"router": router, "client": client, "router_dev": f"rgr{n}",
               "client_dev": f"rgc{n}", "policy": policy, "cert": cert, "tmp": tmp_path,
               "cleanup": cleanup}
    finally:
        tear_down_lab(cleanup, client, router)


def _curl_in(ns: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "-S", "-i", "--max-time", "20",
                           *args], capture_output=True, text=True, timeout=60)


def _start_origins(lab):
    origins = run_in_netns(lab["router"], lambda: origins_on_one_port([DE, IN], tls=lab["cert"]))
    lab["cleanup"].append(lambda: [o.stop() for o in origins.values()])
    return origins


def _start_proxy(lab, *extra: str) -> Proxy:
    proxy = Proxy(lab["policy"], lab["tmp"], *extra, listen_host=ROUTER_IP,
                  prefix=("ip", "netns", "exec", lab["router"]))
    lab["cleanup"].append(proxy.stop)
    return proxy


def test_transparent_mode_behind_an_nftables_redirect(lab):
    origins = _start_origins(lab)
    port = origins[DE].port
    proxy = _start_proxy(lab, "--mode", "transparent")
    ruleset = textwrap.dedent(f"""
        table ip regionguard_test {{
            chain prerouting {{
                type nat hook prerouting priority dstnat;
                iifname "{lab['router_dev']}" tcp dport {port} redirect to :{proxy.port}
            }}
        }}
    """)
    rules = lab["tmp"] / "redirect.nft"
    rules.write_text(ruleset)
    sh("ip", "netns", "exec", lab["router"], "nft", "-f", str(rules))
    sh("ip", "-n", lab["client"], "route", "add", "10.201.0.0/16", "via", ROUTER_IP)

    cafile = str(lab["cert"][0])
    ok = _curl_in(lab["client"], "--cacert", cafile, "--resolve", f"de.zoom.us:{port}:{DE}",
                  f"https://de.zoom.us:{port}/")
    assert status_of(ok) == 200, ok.stderr + proxy.output()
    assert body_json(ok)["origin"] == DE
    before = origins[IN].connections
    # Domain fronting: SNI and Host name the allowed host, the address is IN's.
    fronted = _curl_in(lab["client"], "--cacert", cafile, "--resolve", f"de.zoom.us:{port}:{IN}",
                       f"https://de.zoom.us:{port}/")
    assert fronted.returncode != 0
    assert origins[IN].connections == before
    lines = proxy.decisions(2)
    assert [(d["action"], d["address"], d["mode"], d["client"]) for d in lines] == \
        [("allow", DE, "transparent", CLIENT_IP), ("block", IN, "transparent", CLIENT_IP)]


def _wg_keys() -> tuple[str, str]:
    key = sh("wg", "genkey").stdout.strip()
    pub = subprocess.run(["wg", "pubkey"], input=key, capture_output=True, text=True,
                         check=True).stdout.strip()
    return key, pub


def _udp_exchange(address: str, port: int, payload: bytes, tries: int) -> bytes | None:
    """Send a datagram up to `tries` times (the first may wait on the WireGuard handshake)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        for _ in range(tries):
            s.sendto(payload, (address, port))
            try:
                data, _ = s.recvfrom(65535)
                return data
            except TimeoutError:
                continue
        return None
    finally:
        s.close()


def test_wireguard_mode_covers_tcp_and_udp_8801_media(lab):
    origins = _start_origins(lab)
    media = {a: run_in_netns(lab["router"], lambda a=a: UdpEcho(a, 8801)) for a in (DE, IN)}
    for m in media.values():
        lab["cleanup"].append(m.stop)
    server_key, server_pub = _wg_keys()
    client_key, client_pub = _wg_keys()
    conf = lab["tmp"] / "wireguard.conf"
    conf.write_text(json.dumps({"server_key": server_key, "client_key": client_key}))
    wg_port = 51820   # the router namespace is new: nothing else listens there
    proxy = _start_proxy(lab, "--mode", f"wireguard:{conf}@{wg_port}")

    client, dev = lab["client"], f"rgwg{os.getpid() % 100000}"   # its UAPI socket is not per namespace
    env = {**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
    wg = subprocess.Popen(["ip", "netns", "exec", client, "wireguard-go", "-f", dev],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)

    lab["cleanup"].append(lambda: stop(wg))
    deadline = time.monotonic() + 30
    while sh("ip", "-n", client, "link", "show", dev, check=False).returncode != 0:
        assert time.monotonic() < deadline and wg.poll() is None, "wireguard-go did not start"
        time.sleep(0.1)
    keyfile = lab["tmp"] / "client.key"
    keyfile.write_text(client_key + "\n")
    sh("ip", "netns", "exec", client, "wg", "set", dev, "private-key", str(keyfile),
       "peer", server_pub, "endpoint", f"{ROUTER_IP}:{wg_port}", "allowed-ips", "10.201.0.0/16")
    sh("ip", "-n", client, "addr", "add", "10.0.0.1/32", "dev", dev)
    sh("ip", "-n", client, "link", "set", dev, "up")
    sh("ip", "-n", client, "route", "add", "10.201.0.0/16", "dev", dev)

    echo = run_in_netns(client, lambda: _udp_exchange(DE, 8801, b"media-de", tries=15))
    assert echo == b"echo:media-de", proxy.output()
    blocked = run_in_netns(client, lambda: _udp_exchange(IN, 8801, b"media-in", tries=3))
    assert blocked is None and media[IN].received == 0

    port = origins[DE].port
    ok = _curl_in(client, "--cacert", str(lab["cert"][0]), f"https://{DE}:{port}/")
    assert status_of(ok) == 200 and body_json(ok)["origin"] == DE
    before = origins[IN].connections
    denied = _curl_in(client, "--cacert", str(lab["cert"][0]), f"https://{IN}:{port}/")
    assert denied.returncode != 0 and origins[IN].connections == before

    expected = {("udp", DE, "allow"), ("udp", IN, "block"), ("tcp", DE, "allow"), ("tcp", IN, "block")}
    assert expected <= proxy.seen(("transport", "address", "action"), expected)  # the count varies
    lines = proxy.decisions(len(expected))
    assert all(d["mode"] == "wireguard" for d in lines)
    udp_de = next(d for d in lines if d["transport"] == "udp" and d["address"] == DE)
    assert udp_de["service"] == "meeting" and udp_de["port"] == 8801
