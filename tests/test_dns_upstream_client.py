"""The upstream client (regionguard.dns.upstream) alone, behind a fake transport: what it promises
about answers, IDs, failover, the shared timeout, truncation and cancellation, with no socket.
(tests/test_dns_upstream.py drives the same client through the whole server on loopback.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import dns.flags
import dns.message
import dns.rrset
import pytest

from regionguard.dns.upstream import UpstreamError, Upstreams, UpstreamSocket

A, B = ("192.0.2.1", 53), ("192.0.2.2", 53)
Responder = Callable[[bytes], list[bytes]]


def query(name: str = "de.zoom.us") -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = 0
    return q.to_wire()


def answer(packet: bytes, address: str = "198.51.100.10", tc: bool = False) -> bytes:
    r = dns.message.make_response(dns.message.from_wire(packet))
    r.answer.append(dns.rrset.from_text(r.question[0].name, 60, "IN", "A", address))
    if tc:
        r.flags |= dns.flags.TC
        r.answer = []
    return r.to_wire()


def with_id(data: bytes, qid: int) -> bytes:
    return qid.to_bytes(2, "big") + data[2:]


class FakeDatagram:
    """A connected UDP socket that hands each packet to the server's responder."""

    def __init__(self, net: FakeNet, server: tuple[str, int], protocol: UpstreamSocket) -> None:
        self.net, self.server, self.protocol = net, server, protocol

    def sendto(self, packet: bytes, addr=None) -> None:
        if self.server in self.net.failing_sends:
            raise OSError(105, "No buffer space available")
        self.net.sent.append((self.server, packet))
        loop = asyncio.get_running_loop()
        for reply in self.net.responders.get(self.server, lambda p: [])(packet):
            loop.call_soon(self.protocol.datagram_received, reply, self.server)

    def close(self) -> None:
        self.protocol.connection_lost(None)


class FakeNet:
    """The transport seam: servers that answer (or not) as each test says."""

    def __init__(self) -> None:
        self.responders: dict[tuple[str, int], Responder] = {}
        self.tcp: dict[tuple[str, int], Responder] = {}
        self.sent: list[tuple[tuple[str, int], bytes]] = []
        self.tcp_asked: list[tuple[str, int]] = []
        self.failing_sends: set[tuple[str, int]] = set()
        self.unreachable: set[tuple[str, int]] = set()

    async def open_udp(self, server: tuple[str, int], protocol: UpstreamSocket) -> None:
        if server in self.unreachable:
            raise OSError(101, "Network is unreachable")
        protocol.connection_made(FakeDatagram(self, server, protocol))

    async def ask_tcp(self, server: tuple[str, int], packet: bytes) -> bytes:
        self.tcp_asked.append(server)
        replies = self.tcp.get(server, lambda p: [])(packet)
        if not replies:
            raise UpstreamError("TCP connection closed mid-answer")
        return replies[0]

    def asked(self, server: tuple[str, int]) -> int:
        return sum(1 for s, _ in self.sent if s == server)


def run(coro):
    return asyncio.run(coro)


def client(net: FakeNet, *servers: tuple[str, int], timeout: float = 1.0) -> Upstreams:
    return Upstreams(servers, timeout, transport=net)


def test_the_answer_to_our_id_and_question_is_returned():
    net = FakeNet()
    net.responders[A] = lambda p: [answer(p)]

    async def main():
        ups = client(net, A)
        data = await ups.query(query())
        ups.close()
        return data

    data = run(main())
    sent = net.sent[0][1]
    assert data[:2] == sent[:2]                       # the random ID we sent, not the caller's 0
    assert dns.message.from_wire(data).answer[0][0].address == "198.51.100.10"


def test_a_reply_with_an_id_nobody_waits_for_is_ignored():
    net = FakeNet()
    net.responders[A] = lambda p: [with_id(answer(p, "203.0.113.66"), (p[0] << 8 | p[1]) ^ 1),
                                   answer(p)]

    async def main():
        ups = client(net, A)
        try:
            return await ups.query(query())
        finally:
            ups.close()

    assert dns.message.from_wire(run(main())).answer[0][0].address == "198.51.100.10"


def test_only_a_reply_with_another_id_is_a_timeout():
    net = FakeNet()
    net.responders[A] = lambda p: [with_id(answer(p), (p[0] << 8 | p[1]) ^ 1)]

    async def main():
        ups = client(net, A, timeout=0.2)
        try:
            with pytest.raises(UpstreamError, match="192.0.2.1:53: TimeoutError"):
                await ups.query(query())
            assert not ups._sockets[A].pending
        finally:
            ups.close()

    run(main())


def test_an_answer_to_another_question_goes_to_the_next_upstream():
    net = FakeNet()
    net.responders[A] = lambda p: [with_id(answer(query("us.zoom.us")), p[0] << 8 | p[1])]
    net.responders[B] = lambda p: [answer(p, "198.51.100.11")]

    async def main():
        ups = client(net, A, B)
        try:
            return await ups.query(query())
        finally:
            ups.close()

    data = run(main())
    assert dns.message.from_wire(data).answer[0][0].address == "198.51.100.11"
    assert (net.asked(A), net.asked(B)) == (1, 1)


def test_the_timeout_is_shared_and_every_upstream_is_named_in_the_error():
    net = FakeNet()   # both silent

    async def main():
        ups = client(net, A, B, timeout=2)
        started = time.monotonic()
        try:
            with pytest.raises(UpstreamError) as failed:
                await ups.query(query())
        finally:
            ups.close()
        return time.monotonic() - started, str(failed.value)

    elapsed, error = run(main())
    assert 1.8 <= elapsed < 3.5                       # the whole timeout, not twice it (4 s)
    assert error == "192.0.2.1:53: TimeoutError; 192.0.2.2:53: TimeoutError"
    assert (net.asked(A), net.asked(B)) == (1, 1)


def test_a_failed_send_or_an_unreachable_server_goes_to_the_next_upstream_at_once():
    net = FakeNet()
    net.failing_sends.add(A)
    net.unreachable.add(B)
    C = ("192.0.2.3", 53)
    net.responders[C] = lambda p: [answer(p, "198.51.100.12")]

    async def main():
        ups = client(net, A, B, C, timeout=5)
        await ups.open()
        started = time.monotonic()
        try:
            data = await ups.query(query())
        finally:
            ups.close()
        return data, time.monotonic() - started

    data, elapsed = run(main())
    assert dns.message.from_wire(data).answer[0][0].address == "198.51.100.12"
    assert elapsed < 1.0      # at once: waiting on either would take a share of the 5 s


def test_an_icmp_error_fails_the_waiting_query_over_to_the_next_upstream():
    net = FakeNet()
    net.responders[B] = lambda p: [answer(p, "198.51.100.11")]

    async def main():
        ups = client(net, A, B, timeout=5)
        await ups.open()
        asking = asyncio.ensure_future(ups.query(query()))
        await asyncio.sleep(0.05)
        ups._sockets[A].error_received(ConnectionRefusedError(111, "Connection refused"))
        try:
            return await asyncio.wait_for(asking, 1)
        finally:
            ups.close()

    assert dns.message.from_wire(run(main())).answer[0][0].address == "198.51.100.11"


def test_a_truncated_answer_is_asked_again_over_tcp():
    net = FakeNet()
    net.responders[A] = lambda p: [answer(p, tc=True)]
    net.tcp[A] = lambda p: [answer(p, "198.51.100.13")]

    async def main():
        ups = client(net, A)
        try:
            return await ups.query(query())
        finally:
            ups.close()

    assert dns.message.from_wire(run(main())).answer[0][0].address == "198.51.100.13"
    assert net.tcp_asked == [A]


def test_a_failed_tcp_retry_goes_to_the_next_upstream():
    net = FakeNet()
    net.responders[A] = lambda p: [answer(p, tc=True)]
    net.responders[B] = lambda p: [answer(p, "198.51.100.11")]

    async def main():
        ups = client(net, A, B)
        try:
            return await ups.query(query())
        finally:
            ups.close()

    assert dns.message.from_wire(run(main())).answer[0][0].address == "198.51.100.11"
    assert net.tcp_asked == [A]


def test_done_is_called_once_whatever_arrives_after():
    net = FakeNet()
    net.responders[A] = lambda p: [answer(p), answer(p, "203.0.113.66")]
    calls: list[tuple[bytes | None, Exception | None]] = []

    async def main():
        ups = client(net, A)
        await ups.open()
        ups.start(query(), lambda data, error: calls.append((data, error)))
        await asyncio.sleep(0.1)
        ups.close()

    run(main())
    assert len(calls) == 1 and calls[0][1] is None
    assert dns.message.from_wire(calls[0][0]).answer[0][0].address == "198.51.100.10"


def test_a_cancelled_query_leaves_nothing_pending_and_its_late_answer_is_ignored():
    net = FakeNet()
    late: list[bytes] = []
    net.responders[A] = lambda p: late.append(answer(p)) or []

    async def main():
        ups = client(net, A, timeout=5)
        await ups.open()
        asking = asyncio.ensure_future(ups.query(query()))
        await asyncio.sleep(0.05)
        proto = ups._sockets[A]
        assert len(proto.pending) == 1
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        assert not proto.pending
        proto.datagram_received(late[0], A)           # nobody to tell: no error, no call
        ups.close()

    run(main())
