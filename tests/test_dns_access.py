"""`regionguard dns` as a gateway: the policy's gateway.clients decides who may use it (issue 12,
item 4). Loopback clients are always let in, so the refused ones need an address of their own:
network namespaces this test creates, joined by a veth pair.

  client ns  veth 10.200.0.2/29, 10.200.0.3/29  ──  veth 10.200.0.1/29  server ns
                                                     upstream zone on 127.0.0.1, regionguard dns

Skips, saying why, when not root or `ip` is missing."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import time
from itertools import count

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest
from dns_support import POLICY, DnsProcess, ZoneServer, addresses, ask

from tests.netns import netns_missing
from tests.proxy_support import run_in_netns, sh

SERVER_IP, ALLOWED, OTHER = "10.200.0.1", "10.200.0.2", "10.200.0.3"
_seq = count()


pytestmark = pytest.mark.skipif(netns_missing() is not None, reason=netns_missing() or "")


@pytest.fixture
def lab(tmp_path):
    n = f"{os.getpid() % 10000}{next(_seq)}"
    server_ns, client_ns = f"rgd-s{n}", f"rgd-c{n}"
    sh("ip", "netns", "add", server_ns)
    sh("ip", "netns", "add", client_ns)
    started: list = []
    try:
        sh("ip", "link", "add", f"rgds{n}", "netns", server_ns, "type", "veth",
           "peer", "name", f"rgdc{n}", "netns", client_ns)
        sh("ip", "-n", server_ns, "addr", "add", f"{SERVER_IP}/29", "dev", f"rgds{n}")
        for a in (ALLOWED, OTHER):
            sh("ip", "-n", client_ns, "addr", "add", f"{a}/29", "dev", f"rgdc{n}")
        for ns, dev in ((server_ns, f"rgds{n}"), (client_ns, f"rgdc{n}")):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        zone = run_in_netns(server_ns, ZoneServer)   # its sockets live in the server ns
        started.append(zone)

        def start(policy_text: str, *extra: str) -> DnsProcess:
            policy = tmp_path / f"policy{len(started)}.yaml"
            policy.write_text(policy_text)
            server = DnsProcess(policy, [zone.address], *extra, listen_host=SERVER_IP,
                                prefix=("ip", "netns", "exec", server_ns))
            server.policy = policy
            started.append(server)
            return server

        yield {"server_ns": server_ns, "client_ns": client_ns, "start": start}
    finally:
        for thing in reversed(started):
            thing.close()
        subprocess.run(["ip", "netns", "del", client_ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", server_ns], capture_output=True)


def gateway_policy(*clients: str) -> str:
    return POLICY + f"gateway: {{clients: [{', '.join(clients)}]}}\n"


def from_client(lab, fn):
    return run_in_netns(lab["client_ns"], fn, timeout=60)


def query(lab, port: int, source: str, tcp: bool) -> dns.message.Message:
    return from_client(lab, lambda: ask(port, "de.zoom.us", source=source, tcp=tcp, timeout=5,
                                        server=SERVER_IP))


def raw_udp(lab, port: int, source: str, wire: bytes) -> bytes | None:
    """The raw reply to one datagram; None when nothing comes within 2 s."""
    def go() -> bytes | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((source, 0))
            s.settimeout(2)
            s.sendto(wire, (SERVER_IP, port))
            try:
                return s.recv(65535)
            except TimeoutError:
                return None
    return from_client(lab, go)


def raw_tcp(lab, port: int, source: str, wire: bytes) -> tuple[bytes | None, bool]:
    """(the reply to one query, whether the server closed the connection after it)."""
    def go() -> tuple[bytes | None, bool]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((source, 0))
            s.settimeout(5)
            s.connect((SERVER_IP, port))
            s.sendall(struct.pack("!H", len(wire)) + wire)
            data = b""
            while True:
                try:
                    chunk = s.recv(65535)
                except ConnectionError:
                    break
                if not chunk:
                    return _unframe(data), True
                data += chunk
                if len(data) >= 2 and len(data) >= 2 + struct.unpack("!H", data[:2])[0]:
                    s.settimeout(2)   # the whole reply: is the connection closed after it?
                    try:
                        return _unframe(data), s.recv(1) == b""
                    except TimeoutError:
                        return _unframe(data), False
            return _unframe(data), True
    return from_client(lab, go)


def _unframe(data: bytes) -> bytes | None:
    return data[2:2 + struct.unpack("!H", data[:2])[0]] if len(data) >= 2 else None


def assert_refused_header(reply: bytes | None, query: bytes) -> None:
    """REFUSED as unbound's access-control `refuse` gives it: the header only, never more bytes
    than the query, with its ID."""
    assert reply is not None
    assert len(reply) == 12 <= len(query)
    assert reply[:2] == query[:2]
    assert reply[2] & 0x80                                   # a response
    assert reply[3] & 0x0F == dns.rcode.REFUSED
    assert reply[4:12] == b"\x00" * 8


def test_clients_outside_gateway_clients_are_refused_over_udp_and_tcp(lab):
    server = lab["start"](gateway_policy(f"{ALLOWED}/32"))
    port = server.port
    for tcp in (False, True):
        assert addresses(query(lab, port, ALLOWED, tcp)) == {"198.51.100.10"}
    wire = dns.message.make_query("de.zoom.us", "A", use_edns=0).to_wire()
    allowed = raw_udp(lab, port, ALLOWED, wire)   # now in the hit cache: the same bytes...
    assert allowed is not None and addresses(dns.message.from_wire(allowed)) == {"198.51.100.10"}
    assert_refused_header(raw_udp(lab, port, OTHER, wire), wire)   # ...are refused to others
    reply, closed = raw_tcp(lab, port, OTHER, wire)
    assert_refused_header(reply, wire)
    assert closed                      # a refused client holds no TCP connection open
    # unusual queries (the general path) and names already cached are refused alike
    odd = dns.message.make_query("de.zoom.us", "A", use_edns=0)
    odd.flags |= dns.flags.CD
    odd.use_edns(0, options=[dns.edns.GenericOption(65001, b"x")])
    odd_wire = odd.to_wire()
    assert_refused_header(raw_udp(lab, port, OTHER, odd_wire), odd_wire)
    # a response sent to it gets nothing back (never reflect)
    response = dns.message.make_response(dns.message.from_wire(wire)).to_wire()
    assert raw_udp(lab, port, OTHER, response) is None
    assert "WARNING" not in "".join(server.log)


def test_reload_applies_the_new_client_list(lab):
    server = lab["start"](gateway_policy(f"{ALLOWED}/32"))
    port = server.port
    assert addresses(query(lab, port, ALLOWED, False)) == {"198.51.100.10"}
    assert query(lab, port, OTHER, False).rcode() == dns.rcode.REFUSED
    server.policy.write_text(gateway_policy(f"{OTHER}/32"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if query(lab, port, OTHER, False).rcode() == dns.rcode.NOERROR:
            break
        time.sleep(0.5)
    for tcp in (False, True):
        assert addresses(query(lab, port, OTHER, tcp)) == {"198.51.100.10"}
        assert query(lab, port, ALLOWED, tcp).rcode() == dns.rcode.REFUSED


def test_beyond_loopback_without_gateway_clients_warns_at_start_up(lab, tmp_path):
    open_server = lab["start"](POLICY)
    log = "".join(open_server.log)
    assert "WARNING" in log and "gateway" in log and SERVER_IP in log
    # it still serves everyone (the list is what restricts), warned or not
    assert addresses(query(lab, open_server.port, OTHER, False)) == {"198.51.100.10"}
    listed = lab["start"](gateway_policy("10.200.0.0/29"))
    assert "WARNING" not in "".join(listed.log)
    assert addresses(query(lab, listed.port, OTHER, True)) == {"198.51.100.10"}
    # on loopback only the host's own programs reach it: nothing to warn about
    policy = tmp_path / "loopback.yaml"
    policy.write_text(POLICY)
    zone = ZoneServer()
    local = DnsProcess(policy, [zone.address])
    try:
        assert addresses(ask(local.port, "de.zoom.us")) == {"198.51.100.10"}
        assert "WARNING" not in "".join(local.log)
    finally:
        local.close()
        zone.close()

