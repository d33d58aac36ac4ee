"""`regionguard dns`: a forwarding DNS server (UDP and TCP) that filters Zoom answers by region.

Paths through the server, cheapest first:
1. UDP cache hit: the client's query bytes (minus the ID), per client group, index a cache of
   finished response bytes; the reply is those bytes with the client's ID. No parsing.
2. Miss: parse the query, look up the (group, name, type, class, DO, CD) cache of filtered
   responses; else forward to the upstreams (UDP with EDNS0, TCP retry on truncation; identical
   misses wait for one upstream query), filter (regionguard.dnsfilter), audit, cache.
Malformed queries get FORMERR (or are dropped when not even the header is usable). A dead, slow
or garbage-speaking upstream gives SERVFAIL within the timeout. Both caches are bounded in bytes.
The policy file is watched; a valid change swaps the policy in and empties the caches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import random
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.resolver

from .audit import AuditLog
from .cli import EXIT_CONFIG, add_policy_argument, policy_path
from .dnscache import (
    WireCache,
    WireFormatError,
    parse_query,
    remove_records,
    response_ttl,
    scan_response,
    skip_name,
    wire_name,
)
from .dnsfilter import AnswerFilter, FilterResult, cache_ttl
from .errors import ConfigError, Problem
from .policy import parse_hostport
from .reload import EngineHolder

log = logging.getLogger(__name__)

UPSTREAM_PAYLOAD = 1232        # EDNS0 buffer size we advertise upstream (DNS flag day 2020)
MAX_UDP_REPLY = 4096           # never answer over UDP with more than this, whatever is asked
MAX_QUERY = 4096               # a bigger UDP query is junk: read at most this many bytes
MAX_INFLIGHT = 2048            # misses being resolved at once; beyond that, SERVFAIL at once
MAX_TCP_CLIENTS = 256
TCP_IDLE = 10.0
UDP_RCVBUF = 4 * 1024 * 1024
RELOAD_EVERY = 2.0
EXIT_LISTEN = 4
RD_BIT, CD_BIT = 0x0100, 0x0010


class UpstreamError(Exception):
    """No upstream gave a usable answer (timeout, refused connection, garbage)."""


@dataclass(frozen=True, slots=True)
class Config:
    listen: tuple[str, int]
    upstreams: tuple[tuple[str, int], ...]
    timeout: float
    cache_bytes: int
    audit_path: str | None = None
    tcp: bool = True


# --- upstream ---------------------------------------------------------------------------------


class _UpstreamSocket(asyncio.DatagramProtocol):
    """One connected UDP socket to one upstream; replies are matched to queries by ID (and then
    by question, by the caller). Connected, so the kernel drops datagrams from anyone else."""

    def __init__(self) -> None:
        self.pending: dict[int, asyncio.Future[bytes]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        with contextlib.suppress(AttributeError):   # uvloop's transports have no such knob
            transport.max_size = 65535   # asyncio's default asks for 256 KiB per recvfrom

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) < 12:
            return
        fut = self.pending.pop(struct.unpack_from("!H", data)[0], None)
        if fut is not None and not fut.done():
            fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: fail the waiting queries now, not at the timeout
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(UpstreamError(str(exc)))
        self.pending.clear()

    def connection_lost(self, exc) -> None:
        self.transport = None


class Upstreams:
    def __init__(self, servers: tuple[tuple[str, int], ...], timeout: float) -> None:
        self.servers = servers
        self.timeout = timeout
        self._sockets: dict[tuple[str, int], _UpstreamSocket] = {}

    async def _socket(self, server: tuple[str, int]) -> _UpstreamSocket:
        proto = self._sockets.get(server)
        if proto is None or proto.transport is None:
            loop = asyncio.get_running_loop()
            _, proto = await loop.create_datagram_endpoint(_UpstreamSocket, remote_addr=server)
            self._sockets[server] = proto
        return proto

    async def query(self, wire: bytes) -> bytes:
        """Ask the upstreams in order, sharing the timeout between them; UDP, then TCP if the
        answer is truncated. The answer's bytes, checked to answer this question. Raises
        UpstreamError when no upstream gives one in time."""
        deadline = time.monotonic() + self.timeout
        errors = []
        for i, server in enumerate(self.servers):
            share = (deadline - time.monotonic()) / (len(self.servers) - i)
            if share <= 0:
                break
            try:
                return await asyncio.wait_for(self._ask(server, wire), share)
            except (TimeoutError, UpstreamError, OSError) as e:
                errors.append(f"{server[0]}:{server[1]}: {type(e).__name__} {e}".rstrip())
        raise UpstreamError("; ".join(errors) or "no upstream")

    async def query_message(self, query: dns.message.Message) -> dns.message.Message:
        data = await self.query(query.to_wire())
        try:
            return dns.message.from_wire(data)
        except Exception as e:  # noqa: BLE001 - anything unparseable is garbage, whatever dnspython raises
            raise UpstreamError(f"garbage answer ({type(e).__name__})") from None

    async def _ask(self, server: tuple[str, int], wire: bytes) -> bytes:
        proto = await self._socket(server)
        if len(proto.pending) > 60000:
            raise UpstreamError("too many queries in flight")
        qid = random.getrandbits(16)
        while qid in proto.pending:
            qid = random.getrandbits(16)
        packet = struct.pack("!H", qid) + wire[2:]
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        proto.pending[qid] = fut
        try:
            proto.transport.sendto(packet)
            data = await fut
        finally:
            if proto.pending.get(qid) is fut:
                del proto.pending[qid]
        self._check(data, packet)
        if data[2] & 0x02:    # TC: the whole answer over TCP
            data = await self._ask_tcp(server, packet)
            self._check(data, packet)
        return data

    async def _ask_tcp(self, server: tuple[str, int], packet: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(*server)
        try:
            writer.write(struct.pack("!H", len(packet)) + packet)
            await writer.drain()
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            return await reader.readexactly(length)
        except asyncio.IncompleteReadError as e:
            raise UpstreamError("TCP connection closed mid-answer") from e
        finally:
            writer.close()

    @staticmethod
    def _check(data: bytes, packet: bytes) -> None:
        """The answer must be a response, to this ID and this one question (any case)."""
        try:
            q_end = skip_name(packet, 12) + 4
        except WireFormatError:
            raise UpstreamError("unreadable query") from None
        if (len(data) < q_end or data[:2] != packet[:2] or not data[2] & 0x80
                or data[4:6] != b"\x00\x01" or data[12:q_end].lower() != packet[12:q_end].lower()):
            raise UpstreamError("garbage answer (does not answer the question)")

    def close(self) -> None:
        for proto in self._sockets.values():
            if proto.transport is not None:
                proto.transport.close()
        self._sockets.clear()


# --- the server ---------------------------------------------------------------------------------


def _error_reply(data: bytes, rcode: int) -> bytes | None:
    """A header-only reply (FORMERR, NOTIMP, SERVFAIL) to a query we cannot or will not parse.
    None when even the header is unusable or the packet is itself a response (never answer
    those: that is how reflection loops start)."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    flags = 0x8000 | (data[2] & 0x79) << 8 | 0x0080 | rcode   # QR, opcode+RD kept, RA, rcode
    return data[:2] + struct.pack("!H4H", flags, 0, 0, 0, 0)


class DnsServer:
    """The resolver. `await start()`, then it serves until `close()`."""

    def __init__(self, holder: EngineHolder, config: Config) -> None:
        self.holder = holder
        self.config = config
        self.engine = holder.engine
        self.filter = AnswerFilter(self.engine)
        self.upstreams = Upstreams(config.upstreams, config.timeout)
        # The hit cache gets most of the memory; the filtered-response cache a quarter.
        self.raw = WireCache(config.cache_bytes * 3 // 4)
        self.semantic = WireCache(config.cache_bytes // 4)
        self.audit = AuditLog(config.audit_path)
        self._groups: dict[str, str] = {}
        self._inflight: dict[tuple, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._tcp_clients = 0
        self._reloader: asyncio.Task | None = None
        self.address: tuple[str, int] | None = None
        self.stats = {"queries": 0, "formerr": 0, "servfail": 0, "upstream_queries": 0}

    # --- lifecycle ---

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        host, port = self.config.listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for _attempt in range(20):
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _ServerProtocol(self), local_addr=(host, port), family=family)
            with contextlib.suppress(AttributeError):
                self._udp.max_size = MAX_QUERY   # asyncio's default: 256 KiB per recvfrom
            # absorb bursts; the kernel caps it at net.core.rmem_max
            with contextlib.suppress(OSError, AttributeError):
                self._udp.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                                              UDP_RCVBUF)
            bound = self._udp.get_extra_info("sockname")[1]
            if not self.config.tcp:
                break
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, host, bound, family=family,
                                                       reuse_address=True)
                break
            except OSError as e:
                self._udp.close()
                if port != 0 or e.errno != errno.EADDRINUSE:
                    raise
        self.address = (host, bound)
        self._reloader = loop.create_task(self._watch_policy())
        return self.address

    async def close(self) -> None:
        if self._reloader:
            self._reloader.cancel()
        if self._udp:
            self._udp.close()
        if self._tcp:
            self._tcp.close()
        for t in list(self._tasks):
            t.cancel()
        self.upstreams.close()
        self.audit.close()

    async def _watch_policy(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_EVERY)
            self.holder.check()
            if self.holder.engine is not self.engine:
                self.use_engine(self.holder.engine)

    def use_engine(self, engine) -> None:
        """Swap in a new policy: answers filtered under the old one must not be served."""
        self.engine = engine
        self.filter = AnswerFilter(engine)
        self._groups.clear()
        self.raw.clear()
        self.semantic.clear()

    # --- helpers ---

    def group_of(self, client: str) -> str:
        group = self._groups.get(client)
        if group is None:
            if len(self._groups) > 65536:
                self._groups.clear()
            group = self._groups[client] = self.engine.policy.rules_for(client).name
        return group

    def spawn(self, coro: Awaitable) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- answering ---

    async def handle_udp(self, data: bytes, addr, transport: asyncio.DatagramTransport) -> None:
        reply = await self.answer(data, addr[0], udp=True)
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    async def answer(self, data: bytes, client: str, udp: bool) -> bytes | None:
        """The reply to one query from `client` (None: send nothing). Never raises."""
        self.stats["queries"] += 1
        try:
            return await self._answer(data, client, udp)
        except Exception:  # noqa: BLE001 - keep serving; SERVFAIL reveals no address
            log.exception("regionguard dns: failed to answer a query from %s", client)
            self.stats["servfail"] += 1
            return _error_reply(data, dns.rcode.SERVFAIL)

    async def _answer(self, data: bytes, client: str, udp: bool) -> bytes | None:
        pq = parse_query(data)
        if pq is None or pq.qclass != 1:
            return await self._answer_parsed(data, client, udp)
        group = self.group_of(client)
        # the cache key: (group, name in lower-case wire form, type, class, DO, CD, EDNS)
        key = (group, pq.qname.lower(), pq.qtype, 1, pq.do, bool(pq.flags & CD_BIT), pq.edns)
        canonical = self.semantic.get(key, time.monotonic())
        if canonical is None:
            try:
                canonical = await self._shared(key, lambda: self._resolve_wire(client, key))
            except UpstreamError as e:
                log.warning("regionguard dns: %s: SERVFAIL: %s", wire_name(pq.qname), e)
                self.stats["servfail"] += 1
                flags = 0x8080 | (pq.flags & RD_BIT) | dns.rcode.SERVFAIL
                return pq.id + struct.pack("!5H", flags, 1, 0, 0, 0) + data[12:16 + len(pq.qname)]
        # the canonical answer, re-addressed: the client's ID, RD bit and question spelling
        flags = (struct.unpack_from("!H", canonical, 2)[0] & ~RD_BIT) | (pq.flags & RD_BIT)
        qlen = len(pq.qname)
        reply = pq.id + struct.pack("!H", flags) + canonical[4:12] + pq.qname + canonical[12 + qlen:]
        if udp:
            if len(reply) > min(pq.payload, MAX_UDP_REPLY):
                return await self._answer_parsed(data, client, udp)   # dnspython truncates it
            now = time.monotonic()
            self.raw.put((group, data[2:]), reply, self.semantic.ttl_left(key, now), now)
        return reply

    async def _resolve_wire(self, client: str, key: tuple) -> bytes:
        """Forward one plain query and filter its answer at the wire level when that is
        possible (non-Zoom: untouched; Zoom: disallowed records cut out); else with dnspython."""
        _group, qname, qtype, _qclass, do, cd, edns = key
        flags = RD_BIT | (CD_BIT if cd else 0)
        wire = struct.pack("!6H", 0, flags, 1, 0, 0, 1 if edns else 0) + qname + struct.pack(
            "!HH", qtype, 1)
        if edns:
            wire += b"\x00" + struct.pack("!HHIH", 41, UPSTREAM_PAYLOAD, 0x8000 if do else 0, 0)
        self.stats["upstream_queries"] += 1
        data = await self.upstreams.query(wire)
        scan = scan_response(data)
        name = wire_name(qname)
        result = self.filter.filter_scan(client, name, qtype, scan) if scan is not None else None
        if result is None:   # unusual records, or an answer to replace: the dnspython way
            try:
                response = dns.message.from_wire(data)
                uq = dns.message.from_wire(wire)
            except Exception as e:  # noqa: BLE001 - garbage from upstream, whatever dnspython raises
                raise UpstreamError(f"garbage answer ({type(e).__name__})") from None
            return await self._filter_message(client, key, uq, response)
        canonical = remove_records(data, scan, result.drop) if result.drop else data
        if canonical is None:
            response = dns.message.from_wire(data)
            return await self._filter_message(client, key, dns.message.from_wire(wire), response)
        if result.zoom:
            self._audit(client, name, qtype, result)
        if canonical is not data:
            scan = scan_response(canonical)
        ttl = response_ttl(scan, self.engine.policy.dns.max_ttl) if scan is not None else 0
        self.semantic.put(key, canonical, ttl, time.monotonic())
        return canonical

    async def _answer_parsed(self, data: bytes, client: str, udp: bool) -> bytes | None:
        """The general path: dnspython parses the query (EDNS options, odd flags, truncation)."""
        try:
            query = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001 - dnspython raises many kinds for malformed input
            self.stats["formerr"] += 1
            return _error_reply(data, dns.rcode.FORMERR)
        if query.flags & dns.flags.QR:
            return None
        if query.opcode() != dns.opcode.QUERY:
            return _error_reply(data, dns.rcode.NOTIMP)
        if len(query.question) != 1:
            self.stats["formerr"] += 1
            return _error_reply(data, dns.rcode.FORMERR)
        group = self.group_of(client)
        q = query.question[0]
        do = bool(query.ednsflags & dns.flags.DO)
        cd = bool(query.flags & dns.flags.CD)
        key = (group, q.name.canonicalize().to_wire(), q.rdtype, q.rdclass, do, cd, query.edns >= 0)
        now = time.monotonic()
        wire = self.semantic.get(key, now)
        if wire is None:
            try:
                wire = await self._shared(key, lambda: self._resolve(client, key, allow_reroute=True))
            except UpstreamError as e:
                log.warning("regionguard dns: %s %s: SERVFAIL: %s", q.name,
                            dns.rdatatype.to_text(q.rdtype), e)
                self.stats["servfail"] += 1
                return self._servfail(query)
        reply = self._for_client(query, dns.message.from_wire(wire), udp)
        if udp and reply is not None:
            left = self.semantic.ttl_left(key, time.monotonic())
            self.raw.put((group, data[2:]), reply, left, time.monotonic())
        return reply

    async def _shared(self, key: tuple, make: Callable[[], Awaitable[bytes]]) -> bytes:
        """One upstream resolution per key at a time: identical misses wait for the first."""
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        if len(self._inflight) >= MAX_INFLIGHT:
            raise UpstreamError("too many queries being resolved")
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            result = await make()
            fut.set_result(result)
            return result
        except BaseException as e:
            fut.set_exception(e if isinstance(e, Exception) else UpstreamError("cancelled"))
            fut.exception()  # mark retrieved: waiters, if any, get it themselves
            raise
        finally:
            del self._inflight[key]

    async def _resolve(self, client: str, key: tuple, allow_reroute: bool = True) -> bytes:
        """Forward, filter and cache one query (a cache key) with dnspython; the filtered
        response's wire (relative to our upstream query)."""
        _group, qname, rdtype, rdclass, do, cd, edns = key
        uq = dns.message.make_query(dns.name.from_wire(qname, 0)[0], rdtype, rdclass,
                                    use_edns=0 if edns or do else False, payload=UPSTREAM_PAYLOAD,
                                    want_dnssec=do)
        if cd:
            uq.flags |= dns.flags.CD
        self.stats["upstream_queries"] += 1
        response = await self.upstreams.query_message(uq)
        return await self._filter_message(client, key, uq, response, allow_reroute)

    async def _filter_message(self, client: str, key: tuple, uq: dns.message.Message,
                              response: dns.message.Message, allow_reroute: bool = True) -> bytes:
        """Filter a parsed response (block, reroute, HTTPS hints...), audit, cache under `key`;
        the wire relative to `uq`."""
        name, rdtype = wire_name(key[1]), key[2]
        flt = self.filter
        result = flt.filter(client, uq, response)
        message = result.message
        if result.outcome == "reroute" and not allow_reroute:
            result.outcome, message = "blocked", flt.block_response(uq, result.name)
        elif result.outcome == "reroute":
            message = await self._reroute(client, key, uq, result) or flt.block_response(uq, result.name)
            if message.rcode() != dns.rcode.NOERROR or not message.answer:
                result.outcome = "blocked"
        if result.zoom:
            self._audit(client, name, rdtype, result)
        message.id = uq.id
        wire = message.to_wire()
        self.semantic.put(key, wire, cache_ttl(message, self.engine.policy.dns.max_ttl),
                          time.monotonic())
        return wire

    async def _reroute(self, client: str, key: tuple, uq: dns.message.Message,
                       result: FilterResult) -> dns.message.Message | None:
        group, _name, rdtype, rdclass, do, cd, edns = key
        target = dns.name.from_text(result.reroute_to).canonicalize().to_wire()
        tkey = (group, target, rdtype, rdclass, do, cd, edns)
        try:
            wire = self.semantic.get(tkey, time.monotonic()) or await self._shared(
                tkey, lambda: self._resolve(client, tkey, allow_reroute=False))
        except UpstreamError:
            return None
        return self.filter.reroute_response(uq, dns.message.from_wire(wire))

    def _audit(self, client: str, name: str, rdtype: int, result: FilterResult) -> None:
        decision = result.audit_decision()
        if decision is None:
            return
        self.audit.record(decision, mode="resolver", front_end="dns", dns_qname=name.rstrip(".").lower(),
                          dns_qtype=dns.rdatatype.to_text(rdtype), dns_client=client,
                          **result.audit_extra())

    def _servfail(self, query: dns.message.Message) -> bytes:
        r = dns.message.make_response(query, our_payload=UPSTREAM_PAYLOAD)
        r.flags |= dns.flags.RA
        r.set_rcode(dns.rcode.SERVFAIL)
        return r.to_wire()

    def _for_client(self, query: dns.message.Message, found: dns.message.Message,
                    udp: bool) -> bytes:
        """`found` (a cached, filtered response) re-addressed to this query: its ID, its question
        (and spelling), its EDNS, and truncated to its UDP buffer size."""
        r = dns.message.make_response(query, our_payload=UPSTREAM_PAYLOAD)
        r.flags |= dns.flags.RA | (found.flags & (dns.flags.AD | dns.flags.AA))
        r.set_rcode(found.rcode())
        r.answer, r.authority, r.additional = found.answer, found.authority, found.additional
        if not udp:
            return r.to_wire(max_size=65535)
        limit = max(512, min(query.payload, MAX_UDP_REPLY)) if query.edns >= 0 else 512
        try:
            return r.to_wire(max_size=limit)
        except dns.exception.TooBig:
            r.answer, r.authority, r.additional = [], [], []
            r.flags |= dns.flags.TC
            return r.to_wire()

    # --- TCP ---

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_clients >= MAX_TCP_CLIENTS:
            writer.close()
            return
        self._tcp_clients += 1
        client = (writer.get_extra_info("peername") or ("?",))[0]
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                (length,) = struct.unpack("!H", head)
                data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE)
                reply = await self.answer(data, client, udp=False)
                if reply is None:
                    continue
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tcp_clients -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _ServerProtocol(asyncio.DatagramProtocol):
    """UDP front: the cache-hit path runs right here, synchronously; misses become tasks."""

    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        server = self.server
        client = addr[0]
        group = server._groups.get(client) or server.group_of(client)
        wire = server.raw.get((group, data[2:]), time.monotonic())
        if wire is not None:
            self.transport.sendto(data[:2] + wire[2:], addr)
            return
        server.spawn(server.handle_udp(data, addr, self.transport))

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error about a reply we sent: nothing to do, keep serving


# --- command line ---------------------------------------------------------------------------------


def system_upstreams() -> tuple[tuple[str, int], ...]:
    try:
        resolver = dns.resolver.Resolver(configure=True)
    except dns.resolver.NoResolverConfiguration:
        return ()
    return tuple((str(ns), 53) for ns in resolver.nameservers)


def _parse_listen(text: str) -> tuple[str, int] | None:
    """HOST:PORT, where port 0 (any free port, for tests and benchmarks) is allowed too."""
    if text.endswith(":0"):
        hp = parse_hostport(text[:-2] + ":53", 53)
        return (hp[0], 0) if hp else None
    return parse_hostport(text, 53)


def build_config(args: argparse.Namespace, holder: EngineHolder) -> Config:
    problems = []
    listen = _parse_listen(args.listen)
    if listen is None:
        problems.append(Problem("command line", "--listen", f"{args.listen!r} is not HOST:PORT",
                                "write e.g. --listen 127.0.0.1:5353 or --listen [::1]:53"))
    upstreams = []
    for text in args.upstream or ():
        hp = parse_hostport(text, 53)
        if hp is None:
            problems.append(Problem("command line", "--upstream", f"{text!r} is not HOST:PORT",
                                    "write e.g. --upstream 9.9.9.9 or --upstream 127.0.0.1:5300"))
        else:
            upstreams.append(hp)
    source = "--upstream"
    if not upstreams:
        upstreams, source = list(holder.engine.policy.resolver.nameservers), "resolver.nameservers"
    if not upstreams:
        upstreams, source = list(system_upstreams()), "/etc/resolv.conf"
    if not upstreams:
        problems.append(Problem("command line", "--upstream", "no upstream DNS server: none given "
                                "and none in the policy's resolver.nameservers or /etc/resolv.conf",
                                "give one with --upstream HOST:PORT"))
    if listen is not None and listen in upstreams:
        problems.append(Problem("command line", source, f"upstream {listen[0]}:{listen[1]} is this "
                                "server's own address: every query would loop",
                                "forward to another resolver (--upstream HOST:PORT)"))
    if args.timeout is not None and args.timeout <= 0:
        problems.append(Problem("command line", "--timeout", f"{args.timeout} is not positive",
                                "give seconds, e.g. --timeout 2"))
    if args.cache_mb <= 0:
        problems.append(Problem("command line", "--cache-mb", f"{args.cache_mb} is not positive",
                                "give megabytes, e.g. --cache-mb 64"))
    if problems:
        raise ConfigError(problems)
    timeout = args.timeout if args.timeout is not None else holder.engine.policy.resolver.timeout
    return Config(listen, tuple(upstreams), float(timeout), int(args.cache_mb * 1024 * 1024),
                  args.audit, not args.no_tcp)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dns", help="DNS server (UDP+TCP) that filters Zoom answers by region",
                       description="Forward DNS queries to upstream resolvers and drop every "
                       "address of a Zoom name whose region the policy does not allow. "
                       "Exit codes: 0 stopped, 2 invalid policy or options, 4 cannot listen.")
    add_policy_argument(p)
    p.add_argument("--listen", "-l", default="127.0.0.1:5353", metavar="HOST:PORT",
                   help="address to serve on, UDP and TCP (default 127.0.0.1:5353; port 0: any)")
    p.add_argument("--upstream", "-u", action="append", metavar="HOST:PORT",
                   help="upstream resolver, repeatable, tried in order (default: the policy's "
                   "resolver.nameservers, else /etc/resolv.conf)")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="answer SERVFAIL when no upstream answered within this time "
                   "(default: the policy's resolver.timeout, 3 s)")
    p.add_argument("--cache-mb", type=float, default=64, metavar="MB",
                   help="memory bound of the answer caches (default 64)")
    p.add_argument("--audit", metavar="FILE", help="append one JSON line per filtered Zoom answer")
    p.add_argument("--no-tcp", action="store_true", help="serve UDP only")
    p.add_argument("--no-uvloop", action="store_true",
                   help="use asyncio's own event loop even when uvloop is installed")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(func=cmd_dns)


def cmd_dns(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    holder = EngineHolder(policy_path(args))
    config = build_config(args, holder)
    loop_factory = None
    if not args.no_uvloop:
        try:   # optional: uvloop roughly halves the cost of each packet on the cache-hit path
            import uvloop
            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(_main(holder, config))
    except OSError as e:
        print(f"regionguard dns: cannot listen on {config.listen[0]}:{config.listen[1]}: "
              f"{e.strerror or e}\n    fix: choose a free port with --listen HOST:PORT "
              "(ports below 1024 need root)", file=sys.stderr)
        return EXIT_LISTEN


async def _main(holder: EngineHolder, config: Config) -> int:
    server = DnsServer(holder, config)
    host, port = await server.start()
    ups = ", ".join(f"{h}:{p}" for h, p in config.upstreams)
    shown = f"[{host}]" if ":" in host else host
    print(f"regionguard dns: listening on {shown}:{port} ({'udp+tcp' if config.tcp else 'udp'}); "
          f"upstream {ups}; policy {holder.path} ({holder.engine.policy.version_id})",
          file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    return 0


__all__ = ["DnsServer", "Config", "register", "EXIT_CONFIG"]
