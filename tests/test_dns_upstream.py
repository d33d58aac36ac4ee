"""`regionguard dns` against upstreams that misbehave, and the answers it gives of its own.

The resolver runs in-process (regionguard.dns.server.DnsServer on 127.0.0.1, its own event loop)
so a test can cancel a query, read what is in flight and lower the in-flight limit; the upstreams
are tests/dns_support.py's name servers on loopback: silent, slow, truncating, refusing or
dropping TCP. Queries go over real sockets with dnspython.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time

import dns.asyncquery
import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from dns_support import POLICY, ZoneServer, addresses, zone_answer

from regionguard.async_reload import AsyncEngineHolder as EngineHolder
from regionguard.dns import server as dnsserver
from regionguard.dns.cli import Config
from regionguard.dns.server import DnsServer

LOG = "regionguard.dns.server"


@contextlib.asynccontextmanager
async def resolver(tmp_path, upstreams: list[str], timeout: float = 3.0):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    servers = tuple((a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in upstreams)
    server = DnsServer(EngineHolder(policy), Config(listen=("127.0.0.1", 0), upstreams=servers,
                                                    timeout=timeout, cache_bytes=1 << 20))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@contextlib.contextmanager
def zones(*made: ZoneServer):
    try:
        yield made
    finally:
        for z in made:
            z.close()


async def ask(server: DnsServer, name: str, rdtype: str = "A", tcp: bool = False,
              timeout: float = 10.0, **make) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **make)
    port = server.address[1]
    if tcp:
        return await dns.asyncquery.tcp(q, "127.0.0.1", port=port, timeout=timeout)
    return await dns.asyncquery.udp(q, "127.0.0.1", port=port, timeout=timeout)


def held(zone: ZoneServer) -> threading.Event:
    """The zone's answers wait (at most 30 s) until the returned event is set: the test says when
    its queries are in flight, instead of a delay a busy machine may outlast."""
    release = threading.Event()

    def answer(query: dns.message.Message, transport: str) -> bytes:
        release.wait(30)
        return zone_answer(query).to_wire()
    zone.answer = answer
    return release


async def until(condition, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


def servfails(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if "SERVFAIL" in r.getMessage())


def assert_servfail(r: dns.message.Message, name: str) -> None:
    """SERVFAIL as a resolver gives it: the question echoed, no record of any kind."""
    assert r.rcode() == dns.rcode.SERVFAIL and r.flags & dns.flags.QR and r.flags & dns.flags.RA
    assert r.question[0].name.to_text() == name + "."
    assert not r.answer and not r.authority


# --- truncated over UDP: the TCP retry and its failures -----------------------------------------


def test_truncated_answer_is_fetched_again_over_tcp(tmp_path):
    with zones(ZoneServer("truncate")) as (zone,):
        async def main():
            async with resolver(tmp_path, [zone.address]) as server:
                r = await ask(server, "multi.zoom.us")
                assert addresses(r) == {"198.51.100.11"}           # the DE one, filtered as usual
                assert [t for t, n, _ in zone.queries if n == "multi.zoom.us"] == ["udp", "tcp"]
        asyncio.run(main())


@pytest.mark.parametrize("tcp, says", [("refuse", "ConnectionRefusedError"),
                                       ("close", "TCP connection closed mid-answer"),
                                       ("half", "TCP connection closed mid-answer"),
                                       ("reset", "ConnectionResetError")])
def test_tcp_retry_failing_goes_to_the_next_upstream_or_servfail(tmp_path, caplog, tcp, says):
    """A truncated UDP answer whose TCP retry is refused, closed, cut or reset: the next upstream
    is asked; with none left, SERVFAIL at once (not at the deadline), saying why."""
    caplog.set_level(logging.WARNING, LOG)
    with zones(ZoneServer("truncate", tcp=tcp), ZoneServer()) as (bad, good):
        async def main():
            async with resolver(tmp_path, [bad.address, good.address], timeout=20) as both:
                assert addresses(await ask(both, "multi.zoom.us")) == {"198.51.100.11"}
                # the retry reached the TCP side (unless nothing listens there)
                assert (("tcp", "multi.zoom.us", "A") in bad.queries) == (tcp != "refuse")
                assert good.count("multi.zoom.us") == 1
            async with resolver(tmp_path, [bad.address], timeout=20) as alone:
                started = time.monotonic()
                r = await ask(alone, "de.zoom.us", timeout=15)
                assert_servfail(r, "de.zoom.us")
                assert time.monotonic() - started < 10, "waited for the deadline, not the failure"
        asyncio.run(main())
    assert f"de.zoom.us: SERVFAIL: {bad.address}: " in servfails(caplog)
    assert says in servfails(caplog)


# --- connect and send failures ------------------------------------------------------------------


def test_an_upstream_the_socket_cannot_send_to_is_skipped(tmp_path, caplog):
    """127.0.0.1:0: every send to it fails (EINVAL, reported by the socket as an error): the next
    upstream answers; alone, SERVFAIL naming it, over UDP and TCP alike."""
    caplog.set_level(logging.WARNING, LOG)
    with zones(ZoneServer()) as (good,):
        async def main():
            async with resolver(tmp_path, ["127.0.0.1:0", good.address]) as both:
                assert addresses(await ask(both, "multi.zoom.us")) == {"198.51.100.11"}
                assert addresses(await ask(both, "de.zoom.us", tcp=True)) == {"198.51.100.10"}
            async with resolver(tmp_path, ["127.0.0.1:0"]) as alone:
                for tcp in (False, True):
                    assert_servfail(await ask(alone, "de.zoom.us", tcp=tcp), "de.zoom.us")
        asyncio.run(main())
    assert "SERVFAIL: 127.0.0.1:0: UpstreamError [Errno 22] Invalid argument" in servfails(caplog)


def test_an_upstream_socket_that_cannot_be_made_is_skipped_then_made_later(tmp_path, caplog):
    """The socket to the first upstream cannot be made (out of file descriptors: EMFILE, at start
    and at the first query): the second upstream answers; once sockets can be made again, the
    first is connected and asked."""
    caplog.set_level(logging.WARNING, LOG)
    with zones(ZoneServer(), ZoneServer()) as (first, second):
        async def main():
            loop = asyncio.get_running_loop()
            real = loop.create_datagram_endpoint
            broken = True

            async def endpoint(factory, *args, remote_addr=None, **kw):
                if broken and remote_addr == ("127.0.0.1", first.port):
                    raise OSError(24, "Too many open files")
                return await real(factory, *args, remote_addr=remote_addr, **kw)

            loop.create_datagram_endpoint = endpoint
            try:
                async with resolver(tmp_path, [first.address, second.address]) as server:
                    assert addresses(await ask(server, "multi.zoom.us")) == {"198.51.100.11"}
                    assert first.queries == [] and second.count("multi.zoom.us") == 1
                    broken = False
                    assert addresses(await ask(server, "de.zoom.us")) == {"198.51.100.10"}
                    assert first.count("de.zoom.us") == 1 and second.count("de.zoom.us") == 0
                broken = True
                async with resolver(tmp_path, [first.address]) as alone:
                    assert_servfail(await ask(alone, "in.zoom.us"), "in.zoom.us")
            finally:
                del loop.create_datagram_endpoint
        asyncio.run(main())
    assert f"SERVFAIL: {first.address}: OSError [Errno 24] Too many open files" in servfails(caplog)


class _FailingSends:
    """An upstream socket's transport whose sends fail as a full socket buffer makes them."""

    def __init__(self, transport) -> None:
        self._transport = transport
        self.tried = 0

    def sendto(self, data, addr=None) -> None:
        self.tried += 1
        raise OSError(105, "No buffer space available")

    def __getattr__(self, name):
        return getattr(self._transport, name)


def test_a_failed_send_goes_to_the_next_upstream_or_servfail(tmp_path, caplog):
    caplog.set_level(logging.WARNING, LOG)
    with zones(ZoneServer(), ZoneServer()) as (first, second):
        async def main():
            async with resolver(tmp_path, [first.address, second.address]) as server:
                proto = server.upstreams._sockets[("127.0.0.1", first.port)]
                failing = proto.transport = _FailingSends(proto.transport)
                assert addresses(await ask(server, "multi.zoom.us")) == {"198.51.100.11"}
                assert failing.tried == 1 and first.queries == [] and second.count("multi.zoom.us") == 1
                assert not proto.pending                     # nothing left waiting on it
            async with resolver(tmp_path, [first.address]) as alone:
                proto = alone.upstreams._sockets[("127.0.0.1", first.port)]
                proto.transport = _FailingSends(proto.transport)
                assert_servfail(await ask(alone, "de.zoom.us"), "de.zoom.us")
                assert not proto.pending
        asyncio.run(main())
    assert "OSError [Errno 105] No buffer space available" in servfails(caplog)


# --- deadlines ----------------------------------------------------------------------------------


def test_the_timeout_is_shared_between_upstreams(tmp_path):
    """Timeout 4 s, two upstreams: the first gets 2 s. A first one that answers after 3 s is given
    up on, the second asked, and its answer used; the late answer changes nothing."""
    with zones(ZoneServer(delay=3), ZoneServer()) as (slow, fast):
        async def main():
            async with resolver(tmp_path, [slow.address, fast.address], timeout=4) as server:
                assert addresses(await ask(server, "multi.zoom.us")) == {"198.51.100.11"}
                assert slow.count("multi.zoom.us") == 1 and fast.count("multi.zoom.us") == 1
                await asyncio.sleep(1.5)                     # the slow answer arrives, unwanted
                assert addresses(await ask(server, "de.zoom.us")) == {"198.51.100.10"}
        asyncio.run(main())


@pytest.mark.parametrize("mode, delay", [("dead", 0.0), ("normal", 2.5)])
def test_no_answer_within_the_timeout_is_servfail_and_never_cached(tmp_path, caplog, mode, delay):
    """A silent upstream, or one slower than the timeout: SERVFAIL once the timeout has passed
    (not before, not never); an answer arriving after it is not used for the next query."""
    caplog.set_level(logging.WARNING, LOG)
    with zones(ZoneServer(mode, delay=delay)) as (zone,):
        async def main():
            async with resolver(tmp_path, [zone.address], timeout=1.5) as server:
                started = time.monotonic()
                assert_servfail(await ask(server, "de.zoom.us", timeout=10), "de.zoom.us")
                assert time.monotonic() - started >= 1.4
                await asyncio.sleep(2)                       # a late answer has come and gone
                assert_servfail(await ask(server, "de.zoom.us", timeout=10), "de.zoom.us")
                assert zone.count("de.zoom.us") == 2         # asked again: nothing was cached
                proto = server.upstreams._sockets[("127.0.0.1", zone.port)]
                assert not proto.pending
        asyncio.run(main())
    assert f"de.zoom.us: SERVFAIL: {zone.address}: TimeoutError" in servfails(caplog)


# --- cancellation -------------------------------------------------------------------------------


def test_a_cancelled_query_leaves_nothing_behind(tmp_path):
    """The asker goes away (its task cancelled, as at shutdown) while the upstream is slow: a query
    waiting for the same answer gets SERVFAIL rather than hanging, nothing stays in flight or
    pending upstream, and the name can be asked again."""
    with zones(ZoneServer()) as (zone,):
        release = held(zone)

        async def main():
            async with resolver(tmp_path, [zone.address], timeout=20) as server:
                wire = dns.message.make_query("de.zoom.us", "A").to_wire()
                first = asyncio.create_task(server.answer(wire, "127.0.0.1", udp=False))
                await until(lambda: zone.count("de.zoom.us") == 1, "the first never went upstream")
                second = asyncio.create_task(server.answer(wire, "127.0.0.1", udp=False))
                miss = next(iter(server._inflight.values()))
                await until(lambda: len(miss.waiters) == 2, "the second never joined the first")
                assert len(server._inflight) == 1            # the second waits for the first
                first.cancel()
                reply = await asyncio.wait_for(second, 5.0)   # SERVFAIL, not a hang
                assert_servfail(dns.message.from_wire(reply), "de.zoom.us")
                assert first.cancelled()
                assert not server._inflight
                proto = server.upstreams._sockets[("127.0.0.1", zone.port)]
                assert not proto.pending
                arrived = asyncio.Event()                    # set once the resolver reads an answer
                heard = proto.datagram_received

                def hear(data, addr):
                    heard(data, addr)
                    arrived.set()
                proto.datagram_received = hear
                release.set()
                await asyncio.wait_for(arrived.wait(), 10)   # the abandoned answer arrives: ignored
                assert addresses(await ask(server, "de.zoom.us")) == {"198.51.100.10"}
                assert zone.count("de.zoom.us") == 2
        asyncio.run(main())


# --- answers of its own: NOTIMP, FORMERR, SERVFAIL ----------------------------------------------


@pytest.mark.parametrize("tcp", [False, True])
def test_notimp_and_multi_question_queries_never_go_upstream(tmp_path, tcp):
    with zones(ZoneServer()) as (zone,):
        async def main():
            async with resolver(tmp_path, [zone.address]) as server:
                port = server.address[1]
                notify = dns.message.make_query("de.zoom.us", "A")
                notify.set_opcode(dns.opcode.NOTIFY)
                r = dns.message.from_wire(await _raw(port, notify.to_wire(), tcp))
                assert r.id == notify.id and r.flags & dns.flags.QR
                assert r.opcode() == dns.opcode.NOTIFY and r.rcode() == dns.rcode.NOTIMP
                assert not r.answer and not r.question    # header only: nothing of the query echoed
                two = dns.message.make_query("de.zoom.us", "A")
                two.question.append(dns.message.make_query("us.zoom.us", "A").question[0])
                raw = await _raw(port, two.to_wire(), tcp)
                assert raw[:2] == two.to_wire()[:2] and raw[2] & 0x80
                assert raw[3] & 0x0F == dns.rcode.FORMERR and raw[6:8] == b"\x00\x00"
                assert zone.queries == []
        asyncio.run(main())


async def _raw(port: int, wire: bytes, tcp: bool) -> bytes:
    """The reply's bytes (dnspython refuses a reply whose question differs from the query's)."""
    if tcp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(len(wire).to_bytes(2, "big") + wire)
        length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 5), "big")
        data = await reader.readexactly(length)
        writer.close()
        return data
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            if not got.done():
                got.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", port))
    try:
        transport.sendto(wire)
        return await asyncio.wait_for(got, 5)
    finally:
        transport.close()


@pytest.mark.parametrize("edns", [False, True])
def test_servfail_keeps_the_querys_id_question_and_flags(tmp_path, edns):
    """Both paths (a plain query; one with an EDNS option, which dnspython parses) answer an
    upstream failure with SERVFAIL: the client's ID, question and RD bit, no record."""
    with zones(ZoneServer("dead")) as (zone,):
        async def main():
            async with resolver(tmp_path, [zone.address], timeout=1) as server:
                options = [dns.edns.GenericOption(65001, b"x")] if edns else None
                q = dns.message.make_query("De.Zoom.US", "AAAA", use_edns=0 if edns else None,
                                           options=options)
                q.flags &= ~dns.flags.RD
                r = await dns.asyncquery.udp(q, "127.0.0.1", port=server.address[1], timeout=10)
                assert r.id == q.id and r.question == q.question and not r.flags & dns.flags.RD
                assert_servfail(r, "De.Zoom.US")
                assert (r.edns >= 0) == edns
        asyncio.run(main())


# --- one upstream query per question in flight, and the limit -----------------------------------


@pytest.mark.parametrize("tcp", [False, True])
def test_identical_queries_in_flight_share_one_upstream_query(tmp_path, tcp):
    with zones(ZoneServer(delay=1)) as (zone,):
        async def main():
            async with resolver(tmp_path, [zone.address], timeout=8) as server:
                replies = await asyncio.gather(*(ask(server, "multi.zoom.us", tcp=tcp)
                                                 for _ in range(5)))
                assert [addresses(r) for r in replies] == [{"198.51.100.11"}] * 5
                assert zone.count("multi.zoom.us") == 1
                assert not server._inflight
        asyncio.run(main())


@pytest.mark.parametrize("tcp", [False, True])
def test_beyond_the_in_flight_limit_servfail_at_once(tmp_path, monkeypatch, tcp):
    """With at most 2 misses being resolved, a third distinct one is SERVFAIL at once (before the
    two are answered) and never asked upstream; once they are done, new misses go through."""
    monkeypatch.setattr(dnsserver, "MAX_INFLIGHT", 2)
    with zones(ZoneServer()) as (zone,):
        release = held(zone)

        async def main():
            async with resolver(tmp_path, [zone.address], timeout=20) as server:
                done: list[str] = []

                async def timed(name):
                    r = await ask(server, name, tcp=tcp)
                    done.append(name)
                    return r

                a = asyncio.create_task(timed("de.zoom.us"))
                b = asyncio.create_task(timed("multi.zoom.us"))
                await until(lambda: len(server._inflight) == 2, "the two never were in flight")
                c = await timed("in.zoom.us")
                assert_servfail(c, "in.zoom.us")
                assert done == ["in.zoom.us"]                # before either of the others
                release.set()                                # only now may they be answered
                assert addresses(await a) == {"198.51.100.10"}
                assert addresses(await b) == {"198.51.100.11"}
                assert zone.count("in.zoom.us") == 0
                assert not server._inflight
                assert addresses(await ask(server, "us.zoom.us", tcp=tcp)) == set()
                assert zone.count("us.zoom.us") == 1           # the limit is free again
        asyncio.run(main())
