"""DNS over TCP under a connection flood: `regionguard dns` as a subprocess, clients on
127.0.0.0/8 (many source addresses, so the per-client bound alone does not stop them).

Item 5 of issue 12: 400 idle connections, or 260 clients dripping one query each, locked every
new TCP client out. Every flood here is bounded in count, and every wait in time."""

from __future__ import annotations

import resource
import select
import socket
import struct
import subprocess
import time

import dns.message
import dns.rcode
import pytest
from dns_support import BIN, POLICY, DnsProcess, ZoneServer, addresses, ask


@pytest.fixture(scope="module")
def zone():
    server = ZoneServer()
    yield server
    server.close()


@pytest.fixture
def policy(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def start(policy, zone):
    started: list[DnsProcess] = []

    def run(*extra: str, upstream: ZoneServer | None = None) -> DnsProcess:
        server = DnsProcess(policy, [(upstream or zone).address], *extra)
        started.append(server)
        return server

    yield run
    for server in started:
        server.close()


def connect(port: int, source: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # no TIME_WAIT pile
    s.settimeout(5)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def send_query(s: socket.socket, name: str = "de.zoom.us") -> None:
    wire = dns.message.make_query(name, "A").to_wire()
    s.sendall(struct.pack("!H", len(wire)) + wire)


def read_answer(s: socket.socket, timeout: float = 5.0) -> dns.message.Message | None:
    """The next answer on the connection; None when it is closed first."""
    s.settimeout(timeout)
    try:
        head = _exactly(s, 2)
        return dns.message.from_wire(_exactly(s, struct.unpack("!H", head)[0]))
    except (EOFError, ConnectionError):
        return None


def _exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def closed_within(s: socket.socket, seconds: float) -> bool:
    """Does the server close the connection (EOF or reset) within `seconds`? Data sent by the
    server first counts as not closed."""
    ready, _, _ = select.select([s], [], [], seconds)
    if not ready:
        return False
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except ConnectionError:
        return True


def is_open(s: socket.socket) -> bool:
    return not closed_within(s, 0)


def test_flood_of_idle_and_dripping_connections_leaves_room_for_new_clients(start):
    """The issue's flood, at the default bounds (512 connections, 32 per client): 400 idle
    connections and 260 that each drip a query, from 33 source addresses. A new TCP client is
    still answered, and UDP clients too, within a deadline."""
    server = start()
    port = server.port
    idle, drip = [], []
    try:
        for i in range(400):
            idle.append(connect(port, f"127.0.1.{1 + i // 20}"))
        for i in range(260):
            s = connect(port, f"127.0.2.{1 + i // 20}")
            send_query(s, f"drip{i}.wild.zoom.us")
            drip.append(s)
        # the dripping: each answered, then each asks once more while the flood is at its height
        for round_ in range(2):
            answered = 0
            for i, s in enumerate(drip):
                if round_:
                    try:
                        send_query(s, f"drip{i}.wild.zoom.us")
                    except OSError:
                        continue
                answered += read_answer(s, timeout=5) is not None
            assert answered > 0
        t0 = time.monotonic()
        r = ask(port, "de.zoom.us", tcp=True, timeout=5)
        assert addresses(r) == {"198.51.100.10"}
        assert time.monotonic() - t0 < 5
        for source in ("127.0.0.1", "127.0.1.1", "127.0.2.1"):   # UDP: flooders' addresses too
            assert addresses(ask(port, "de.zoom.us", source=source, timeout=5)) == {"198.51.100.10"}
        # the bound held: the server kept at most 512 of the 660 (the probe's own is closed)
        time.sleep(0.3)
        still = sum(is_open(s) for s in idle + drip)
        assert 0 < still <= 512
        # and it made room by closing the oldest idle connections first
        assert not any(is_open(s) for s in idle[:100])
        # a second new client is answered too: the flood does not lock the door again
        r = ask(port, "www.example.org", source="127.0.0.7", tcp=True, timeout=5)
        assert addresses(r) == {"192.0.2.80"}
    finally:
        for s in idle + drip:
            s.close()
    assert server.proc.poll() is None


def test_per_client_bound_closes_that_clients_own_oldest_idle_connection(start):
    server = start("--tcp-max-per-client", "4")
    port = server.port
    mine = [connect(port, "127.0.3.1") for _ in range(4)]
    other = connect(port, "127.0.3.2")
    try:
        time.sleep(0.2)
        fifth = connect(port, "127.0.3.1")
        send_query(fifth)
        answer = read_answer(fifth, timeout=3)
        assert answer is not None and addresses(answer) == {"198.51.100.10"}
        assert closed_within(mine[0], 2)                       # the client's oldest idle one
        assert all(is_open(s) for s in mine[1:])               # its others stay
        assert is_open(other)                                  # nobody else's is touched
        send_query(other)
        assert read_answer(other, timeout=3) is not None
        fifth.close()
    finally:
        for s in [*mine, other]:
            s.close()


def test_per_client_bound_refuses_when_all_that_clients_connections_are_busy(start):
    """Connections whose queries are being answered are never closed to make room: the new
    one is refused instead (closed at once, unanswered). Other clients still get in."""
    dead = ZoneServer(mode="dead")
    try:
        server = start("--tcp-max-per-client", "2", "--timeout", "4", upstream=dead)
        port = server.port
        busy = [connect(port, "127.0.4.1") for _ in range(2)]
        for i, s in enumerate(busy):
            send_query(s, f"busy{i}.zoom.us")
        # both busy only once the server has read their queries: wait until they reach upstream
        deadline = time.monotonic() + 10
        while not all(dead.count(f"busy{i}.zoom.us") for i in range(2)):
            assert time.monotonic() < deadline, "the two queries never reached the upstream"
            time.sleep(0.02)
        third = connect(port, "127.0.4.1")
        t0 = time.monotonic()
        assert closed_within(third, 2) and time.monotonic() - t0 < 2
        other = connect(port, "127.0.4.2")
        assert not closed_within(other, 0.5)
        for s in busy:   # the busy ones were kept: they get their (SERVFAIL) answer
            answer = read_answer(s, timeout=8)
            assert answer is not None and answer.rcode() == dns.rcode.SERVFAIL
        for s in [*busy, third, other]:
            s.close()
    finally:
        dead.close()


def test_idle_timeout_closes_a_silent_connection(start):
    server = start("--tcp-idle-timeout", "1")
    silent = connect(server.port, "127.0.0.1")
    after_one = connect(server.port, "127.0.0.1")
    send_query(after_one)
    assert read_answer(after_one) is not None
    t0 = time.monotonic()
    assert closed_within(silent, 4)
    assert closed_within(after_one, 4)
    assert time.monotonic() - t0 > 0.5       # closed for being idle, not at once
    silent.close()
    after_one.close()


def test_partial_message_is_closed_after_the_read_timeout(start):
    """A length prefix then nothing, or half a prefix, or half a message: not idle (a query has
    begun), closed after the read timeout, well before the idle timeout."""
    server = start("--tcp-read-timeout", "1", "--tcp-idle-timeout", "30")
    port = server.port
    wire = dns.message.make_query("de.zoom.us", "A").to_wire()
    starts = [struct.pack("!H", 64), b"\x00", struct.pack("!H", len(wire)) + wire[:5]]
    conns = []
    for data in starts:
        s = connect(port, "127.0.0.1")
        s.sendall(data)
        conns.append(s)
    t0 = time.monotonic()
    for s in conns:
        assert closed_within(s, 5)
        s.close()
    took = time.monotonic() - t0
    assert 0.5 < took < 5
    # a whole query on a fresh connection is still answered
    assert addresses(ask(port, "de.zoom.us", tcp=True, timeout=3)) == {"198.51.100.10"}


def test_tcp_bounds_are_checked_at_start_up(policy, zone):
    def run(*extra: str, preexec=None) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "regionguard"), "dns", "--policy", str(policy),
                               "--listen", "127.0.0.1:0", "--upstream", zone.address, *extra],
                              capture_output=True, text=True, timeout=60, preexec_fn=preexec)

    for flag, value in (("--tcp-max-connections", "0"), ("--tcp-max-per-client", "-1"),
                        ("--tcp-idle-timeout", "0"), ("--tcp-read-timeout", "nan")):
        r = run(flag, value)
        assert r.returncode == 2, r.stderr
        assert flag in r.stderr and "fix" in r.stderr.lower()

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    r = run("--tcp-max-connections", "5000", preexec=low_fd_limit)
    assert r.returncode == 2, r.stderr
    assert "--tcp-max-connections" in r.stderr and "file descriptors" in r.stderr
