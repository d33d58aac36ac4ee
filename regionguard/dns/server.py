"""The sockets of `regionguard dns`: a forwarding DNS server (UDP and TCP) that filters Zoom
answers by region. The command line is regionguard.dns.cli.

Paths through the server, cheapest first:
1. UDP cache hit: the client's query bytes (minus the ID), per client group, index the cache of
   replies sent; the reply is those bytes with the client's ID. No parsing.
2. Filtered-answer hit: the query parsed (wire.parse_query, or dnspython for unusual ones),
   its CacheKey found in the cache of filtered answers; re-addressed to the client.
3. Miss: the one miss path, `_resolve`, for UDP and TCP alike: identical misses wait for one
   upstream query; a `Miss` (regionguard.dns.miss, no I/O) says what to ask and what the
   answer is; this module sends, caches, audits (filter.audit_answer) and replies. A UDP
   waiter is answered from a callback (no task per query); a coroutine waits on a future.
Behind a balancer (dnsdist), the client is the one a trusted forwarder names with a PROXY v2
header or ECS (regionguard.dns.forwarded), decided before any cache lookup: a trusted peer's
group is _FORWARDED, under which nothing is cached, so its datagrams skip the hit path until
their client is known. Malformed queries get FORMERR (or are dropped when not even the header
is usable). A dead, slow or garbage-speaking upstream gives SERVFAIL within the timeout. Both
caches are bounded in bytes. The policy file is watched; a valid change swaps the policy in
and empties the caches.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import gc
import logging
import socket
import struct
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, NamedTuple

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype

from regionguard.async_reload import AsyncEngineHolder as EngineHolder
from regionguard.audit.line import reload_record
from regionguard.audit.log import AuditLog
from regionguard.dns import proxyproto
from regionguard.dns.cache import WireCache
from regionguard.dns.filter import AnswerFilter, Outcome, audit_answer
from regionguard.dns.forwarded import COUNTERS, ECS_MALFORMED, ClaimError, Identity, TrustedForwarders
from regionguard.dns.miss import Answered, Miss
from regionguard.dns.parsed import for_client, query_key
from regionguard.dns.tcp import (
    TCP_IDLE_TIMEOUT,
    TCP_MAX_CONNECTIONS,
    TCP_MAX_PER_CLIENT,
    TCP_READ_TIMEOUT,
    TcpConnections,
)
from regionguard.dns.upstream import Upstreams
from regionguard.dns.wire import (
    FORMERR,
    MAX_UDP_REPLY,
    NOTIMP,
    REFUSED,
    CacheKey,
    Query,
    UpstreamError,
    asked_alike,
    cache_key,
    error_reply,
    parse_query,
    question_end,
    readdressed,
    servfail,
    wire_name,
)

log = logging.getLogger(__name__)

MAX_QUERY = 4096               # a bigger UDP query is junk: read at most this many bytes
MAX_INFLIGHT = 2048            # misses being resolved at once; beyond that, SERVFAIL at once
UDP_RCVBUF = 4 * 1024 * 1024
RELOAD_EVERY = 2.0


@dataclass(frozen=True, slots=True)
class Config:
    """What a DnsServer runs with (regionguard.dns.cli builds it from the options)."""

    listen: tuple[str, int]
    upstreams: tuple[tuple[str, int], ...]
    timeout: float
    cache_bytes: int
    audit_path: str | None = None
    tcp: bool = True
    audit_flush: float = 0.25   # seconds between audit batches; 0: each line at once
    tcp_max_connections: int = TCP_MAX_CONNECTIONS
    tcp_max_per_client: int = TCP_MAX_PER_CLIENT
    tcp_idle_timeout: float = TCP_IDLE_TIMEOUT     # waiting for a query's first byte
    tcp_read_timeout: float = TCP_READ_TIMEOUT     # for the rest of it, and to take the answer
    trusted_forwarders: tuple[str, ...] = ()       # networks whose PROXY headers and ECS count


class Waiter(NamedTuple):
    """A plain UDP query waiting for its miss: answered from a callback when the miss is done."""

    data: bytes            # the query as the client sent it
    query: Query
    group: str
    key: CacheKey
    addr: Any              # the peer's address (the reply goes there)
    transport: Any         # the UDP transport it came in on
    client: str            # who asked: the peer, or the client a trusted forwarder names


_tuple_new = tuple.__new__   # builds a Waiter in C (see wire._tuple_new)


# The group of a client that the policy's gateway.clients keeps out (DnsServer.group_of). No
# policy group is so named, and nothing is ever cached under it: the UDP hit path, which looks
# the client's group up anyway, misses for such a client at no extra cost, and the paths behind
# it answer REFUSED.
_REFUSED = "\x00refused"
# The hit path's group of a trusted forwarder: nothing is cached under it either, so each of its
# datagrams reaches udp_miss, which finds the client it speaks for first.
_FORWARDED = "\x00forwarded"


class DnsServer:
    """The resolver. `await start()`, then it serves until `close()`."""

    def __init__(self, holder: EngineHolder, config: Config) -> None:
        self.holder = holder
        self.config = config
        self.engine = holder.engine
        self.filter = AnswerFilter(self.engine)
        self.upstreams = Upstreams(config.upstreams, config.timeout)
        # Replies sent, by the client's group and query bytes (the UDP hit path), get most of
        # the memory; filtered answers, by CacheKey, a quarter.
        self.replies = WireCache(config.cache_bytes * 3 // 4)
        self.answers = WireCache(config.cache_bytes // 4)
        # Batched: a line written at once costs a miss a third of its whole cost (README, "Speed").
        self.audit = AuditLog(config.audit_path, flush_interval=config.audit_flush)
        self._groups: dict[str, str] = {}
        self._inflight: dict[CacheKey, Miss] = {}
        # Reroute alternatives (misses without a second hop) fly apart: one joining a rerouting
        # miss of its name could wait on a reroute back to the first name, forever.
        self._alternatives: dict[CacheKey, Miss] = {}
        self._tasks: set[asyncio.Task] = set()
        self._udp: Any = None   # asyncio's or uvloop's datagram transport
        self._tcp: asyncio.base_events.Server | None = None
        self._tcp_conns = TcpConnections(config.tcp_max_connections, config.tcp_max_per_client)
        self._reloader: asyncio.Task | None = None
        self.address: tuple[str, int] | None = None
        self.forwarders = TrustedForwarders(config.trusted_forwarders)
        self.stats = {"queries": 0, "formerr": 0, "servfail": 0, "upstream_queries": 0,
                      "refused": 0, **dict.fromkeys(COUNTERS, 0)}
        self.answer_outcomes: dict[Outcome, int] = {}   # upstream answers by filter outcome (metrics)
        self.learned_source = "dns-filter upstream " + ", ".join(
            f"{h}:{p}" for h, p in config.upstreams)

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
        await self.upstreams.open()
        self._reloader = loop.create_task(self._watch_policy())
        return self.address

    async def close(self) -> None:
        if self._reloader:
            self._reloader.cancel()
        if self._udp:
            self._udp.close()
        if self._tcp:
            self._tcp.close()
        self._tcp_conns.close_all()
        for t in list(self._tasks):
            t.cancel()
        self.upstreams.close()
        self.audit.close()

    async def _watch_policy(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_EVERY)
            try:
                # parsed in a worker thread: answers keep flowing while a policy loads
                before = self.holder.engine
                error = await self.holder.check_async()
                after = self.holder.engine
                record = reload_record(self.holder.path, before.policy.version_id,
                                       after.policy.version_id if after is not before else None,
                                       error)
                if record is not None:
                    self.audit.write_raw(record)
                if after is not self.engine:
                    self._swap_engine()
            except Exception:  # noqa: BLE001 - one failed reload must not end the watching
                log.exception("regionguard dns: policy reload of %s failed; the running policy "
                              "stays in force", self.holder.path)

    def _swap_engine(self) -> None:
        # `regionguard dns` freezes its startup objects (see _main): the old policy's
        # must become collectable again, and the new one's be frozen in turn.
        frozen = gc.get_freeze_count() > 0
        if frozen:
            gc.unfreeze()
        self.use_engine(self.holder.engine)
        if frozen:
            gc.collect()
            gc.freeze()

    def use_engine(self, engine) -> None:
        """Swap in a new policy: answers filtered under the old one must not be served."""
        self.engine = engine
        self.filter = AnswerFilter(engine)
        self._groups.clear()
        self.replies.clear()
        self.answers.clear()

    # --- helpers ---

    def group_of(self, client: str) -> str:
        """The peer's group as the hit path keys it: _FORWARDED for a trusted forwarder, else
        client_group's. Remembered per address until the policy changes (use_engine empties
        the memory)."""
        group = self._groups.get(client)
        if group is None:
            if len(self._groups) > 65536:
                self._groups.clear()
            if self.forwarders and self.forwarders.trusts(client):
                group = _FORWARDED
            else:
                group = self._policy_group(client)
            self._groups[client] = group
        return group

    def client_group(self, client: str) -> str:
        """The policy group a query from `client` (the peer, or the client a forwarder named)
        is answered for, or _REFUSED when gateway.clients keeps it out."""
        group = self.group_of(client)
        return self._policy_group(client) if group == _FORWARDED else group

    def _policy_group(self, client: str) -> str:
        policy = self.engine.policy
        if policy.gateway.client_allowed(client):
            return policy.rules_for(client).name
        return _REFUSED

    def refused(self, data: bytes) -> bytes | None:
        """REFUSED for a client gateway.clients keeps out, as unbound's access-control `refuse`
        gives it: the header alone (question and counts dropped), so never more bytes than the
        query; nothing at all for a response or a runt. Not dropped silently: a client that hears
        nothing retries, again and again (unbound's reason for refusing by default)."""
        self.stats["refused"] += 1
        return error_reply(data, REFUSED)

    def spawn(self, coro: Awaitable) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- answering a query: UDP's callbacks, and the coroutine for TCP and unusual queries ---

    def udp_miss(self, data: bytes, addr, transport: asyncio.DatagramTransport,
                 group: str | None = None, now: float | None = None,
                 client: str | None = None) -> None:
        """A UDP query the hit cache did not answer. A plain one is answered from the filtered
        answers or waits for its miss as a Waiter (no task, future or timer of its own);
        anything else goes the general way (`handle_udp`). `group` and `now`: the client's
        group and the time, when the caller has them already; `client`: the client a trusted
        forwarder named (else the peer, addr[0])."""
        if group is None:
            group = self.group_of(addr[0]) if client is None else self.client_group(client)
        if group == _REFUSED:   # before any parsing: a refused client costs next to nothing
            self.stats["queries"] += 1
            self._refuse_udp(data, addr, transport)
            return
        if group == _FORWARDED:
            self._forwarded_udp(data, addr, transport, now)
            return
        pq = parse_query(data)
        if pq is None or pq.qclass != 1:
            self.spawn(self.handle_udp(data, addr, transport, client))
            return
        self.stats["queries"] += 1
        if client is None:
            client = addr[0]
        try:
            key = cache_key(group, pq)
            waiter = _tuple_new(Waiter, (data, pq, group, key, addr, transport, client))
            canonical = self.answers.get(key, now if now is not None else time.monotonic())
            if canonical is not None:
                self._reply_udp(waiter, canonical)
                return
            self._resolve(key, client, waiter)
        except Exception as e:  # noqa: BLE001 - keep serving; SERVFAIL reveals no address
            self._udp_failed(data, pq, addr, transport, client, e)

    def _forwarded_udp(self, data: bytes, addr, transport: asyncio.DatagramTransport,
                       now: float | None) -> None:
        """A datagram from a trusted forwarder: find the client it names, then serve the DNS
        message in it as that client's, hit path first. A malformed claim is never guessed
        around: dropped (a bad PROXY header: where the message starts is unknown) or FORMERR
        (bad ECS), and counted."""
        try:
            identity = self.forwarders.identify(data, addr[0], True)
        except ClaimError as e:
            self.stats[e.counter] += 1
            self.stats["queries"] += 1
            log.info("regionguard dns: %s", e)
            if e.counter == ECS_MALFORMED:
                self.stats["formerr"] += 1
                reply = error_reply(data, FORMERR)
                if reply is not None and not transport.is_closing():
                    transport.sendto(reply, addr)
            return
        client, payload = identity.client, identity.payload
        if identity.counter:
            self.stats[identity.counter] += 1
        group = self.client_group(client)
        if now is None:
            now = time.monotonic()
        if group != _REFUSED:
            wire = self.replies.get((group, payload[2:]), now)
            if wire is not None:
                if not transport.is_closing():
                    transport.sendto(payload[:2] + wire[2:], addr)
                return
        self.udp_miss(payload, addr, transport, group, now, client)

    def _refuse_udp(self, data: bytes, addr, transport: asyncio.DatagramTransport) -> None:
        reply = self.refused(data)
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    async def handle_udp(self, data: bytes, addr, transport: asyncio.DatagramTransport,
                         client: str | None = None) -> None:
        """The general way for a UDP query. `client`: the one a trusted forwarder named; None:
        the peer asks for itself, and any claim it makes (PROXY, ECS) is ignored and counted."""
        if client is None:
            identity = self.forwarders.identify(data, addr[0], False)
            client, data = identity.client, identity.payload
            if identity.counter:
                self.stats[identity.counter] += 1
        reply = await self.answer(data, client, udp=True)
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    async def answer(self, data: bytes, client: str, udp: bool) -> bytes | None:
        """The reply to one query from `client` (None: send nothing). Never raises."""
        self.stats["queries"] += 1
        try:
            if self.client_group(client) == _REFUSED:
                return self.refused(data)
            return await self._answer(data, client, udp)
        except Exception as e:  # noqa: BLE001 - keep serving; SERVFAIL reveals no address
            return self._failed(data, client, e)

    async def _answer(self, data: bytes, client: str, udp: bool) -> bytes | None:
        pq = parse_query(data)
        if pq is None or pq.qclass != 1:
            return await self._answer_parsed(data, client, udp)
        group = self.client_group(client)
        key = cache_key(group, pq)
        canonical = self.answers.get(key, time.monotonic())
        if canonical is None:
            try:
                canonical = await self._resolved(key, client)
            except UpstreamError as e:
                return self._plain_failed(data, pq, client, e)
        if not udp:
            return readdressed(pq, canonical)
        reply = self._udp_reply(data, pq, group, key, canonical)
        if reply is None:
            return await self._answer_parsed(data, client, udp)   # dnspython truncates it
        return reply

    async def _answer_parsed(self, data: bytes, client: str, udp: bool) -> bytes | None:
        """A query wire.parse_query leaves to dnspython (EDNS options, odd flags, another
        class), and replies to truncate."""
        try:
            query = dns.message.from_wire(data)
        except Exception:  # noqa: BLE001 - dnspython raises many kinds for malformed input
            self.stats["formerr"] += 1
            return error_reply(data, FORMERR)
        if query.flags & dns.flags.QR:
            return None
        if query.opcode() != dns.opcode.QUERY:
            return error_reply(data, NOTIMP)
        if len(query.question) != 1:
            self.stats["formerr"] += 1
            return error_reply(data, FORMERR)
        group = self.client_group(client)
        key = query_key(group, query)
        wire = self.answers.get(key, time.monotonic())
        if wire is None:
            try:
                wire = await self._resolved(key, client)
            except UpstreamError as e:
                q = query.question[0]
                return self._failed(data, client, e, f"{q.name} {dns.rdatatype.to_text(q.rdtype)}",
                                    question_end(data), query.edns >= 0)
        reply = for_client(query, dns.message.from_wire(wire), udp)
        if udp and reply is not None:
            now = time.monotonic()
            self.replies.put((group, data[2:]), reply, self.answers.ttl_left(key, now), now)
        return reply

    # --- the miss path: one for every query, whoever waits ---

    def _resolve(self, key: CacheKey, client: str | None, waiter: Waiter | asyncio.Future,
                 reroutes: bool = True) -> None:
        """Have `waiter` answered with the filtered answer for `key`: it joins the miss in
        flight for the key, or a new one asks upstream. Raises UpstreamError beyond
        MAX_INFLIGHT misses (nothing is asked)."""
        flights = self._inflight if reroutes else self._alternatives
        miss = flights.get(key)
        if miss is not None:
            miss.waiters.append(waiter)
            return
        if len(self._inflight) + len(self._alternatives) >= MAX_INFLIGHT:
            raise UpstreamError("too many queries being resolved")
        miss = Miss(self.filter, key, client, self.learned_source, reroutes)
        miss.waiters.append(waiter)
        flights[key] = miss
        self.stats["upstream_queries"] += 1
        try:
            miss.exchange = self.upstreams.start(miss.query,
                                                 functools.partial(self._upstream_done, miss))
        except Exception as e:  # noqa: BLE001 - never leave the key in flight
            self._complete(miss, None, e)

    async def _resolved(self, key: CacheKey, client: str | None, reroutes: bool = True) -> bytes:
        """`_resolve` for a coroutine: the filtered answer's bytes; raises UpstreamError. When
        the coroutine that started the miss is cancelled, the miss is abandoned (its other
        waiters get SERVFAIL, the upstream query is forgotten)."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        flights = self._inflight if reroutes else self._alternatives
        started = key not in flights
        self._resolve(key, client, fut, reroutes)
        miss = flights.get(key) if started else None
        try:
            return await fut
        except asyncio.CancelledError:
            if miss is not None and flights.get(key) is miss:
                self.upstreams.abandon(miss.exchange)
                self._complete(miss, None, UpstreamError("cancelled"))
            raise

    def _upstream_done(self, miss: Miss, data: bytes | None, error: Exception | None) -> None:
        if data is None:   # error says why not
            self._complete(miss, None, error)
            return
        try:
            step = miss.received(data)
            if not isinstance(step, Answered):   # a Reroute: its alternative is a miss too
                self.spawn(self._reroute(miss, step.key))
                return
            canonical = self._store(miss, step)
        except Exception as e:  # noqa: BLE001 - the waiters answer SERVFAIL
            self._complete(miss, None, e)
            return
        self._complete(miss, canonical, None)

    async def _reroute(self, miss: Miss, key: CacheKey) -> None:
        """Resolve a reroute's alternative (no further reroute), then finish `miss` with it."""
        try:
            try:
                alternative = self.answers.get(key, time.monotonic()) or await self._resolved(
                    key, miss.client, reroutes=False)
            except UpstreamError:
                alternative = None
            canonical = self._store(miss, miss.rerouted(alternative))
        except Exception as e:  # noqa: BLE001 - the waiters answer SERVFAIL
            self._complete(miss, None, e)
            return
        except BaseException:
            self._complete(miss, None, UpstreamError("cancelled"))
            raise
        self._complete(miss, canonical, None)

    def _store(self, miss: Miss, answered: Answered) -> bytes:
        """Audit a Zoom answer (not a reroute's alternative: see miss.py), and cache it under
        the miss's key; its bytes."""
        wire, ttl, fields, result, qname = answered   # unpacked: compiled, fields are getattr
        key = miss.key
        outcomes = self.answer_outcomes
        outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
        if result.zoom and miss.reroutes:
            audit_answer(self.audit, result, "resolver", miss.client, qname, key.qtype)
        if not miss.cut_short:   # an alternative's own reroute is no answer for its name's askers
            self.answers.put(key, wire, ttl, time.monotonic(), fields)
        return wire

    def _complete(self, miss: Miss, canonical: bytes | None, error: Exception | None) -> None:
        """The miss is done: every waiter gets the answer, or SERVFAIL."""
        key = miss.key
        flights = self._inflight if miss.reroutes else self._alternatives
        if flights.get(key) is miss:
            del flights[key]
        for waiter in miss.waiters:
            if isinstance(waiter, asyncio.Future):
                if waiter.done():
                    continue   # its coroutine was cancelled
                if canonical is None:
                    waiter.set_exception(error or UpstreamError("no answer"))
                else:
                    waiter.set_result(canonical)
            elif canonical is None:
                self._udp_failed(waiter.data, waiter.query, waiter.addr, waiter.transport,
                                 waiter.client, error or UpstreamError("no answer"))
            else:
                try:
                    self._reply_udp(waiter, canonical)
                except Exception as e:  # noqa: BLE001
                    self._udp_failed(waiter.data, waiter.query, waiter.addr, waiter.transport,
                                     waiter.client, e)
        miss.waiters.clear()

    # --- replies ---

    def _udp_reply(self, data: bytes, pq: Query, group: str, key: CacheKey,
                   canonical: bytes) -> bytes | None:
        """The canonical answer re-addressed to a plain UDP query (the client's ID, RD bit and
        question spelling), cached for the hit path; None when it is too big for the client's
        buffer (the caller goes the dnspython way, which truncates it)."""
        if len(canonical) > MAX_UDP_REPLY or len(canonical) > pq.payload:
            return None
        reply = readdressed(pq, canonical)
        entry = self.answers.entry(key)
        if entry is not None and entry.wire is canonical and asked_alike(pq, canonical):
            # only the ID differs: the hit cache shares the answer's entry (its hit path puts
            # the ID in)
            self.replies.put_entry((group, data[2:]), entry)
        else:
            now = time.monotonic()
            # the reply has the canonical answer's layout and TTLs: its TTL fields are known
            left, fields = self.answers.ttl_left_and_fields(key, canonical, now)
            self.replies.put((group, data[2:]), reply, left, now, fields)
        return reply

    def _reply_udp(self, waiter: Waiter, canonical: bytes) -> None:
        """`_udp_reply`, sent (a reply too big goes the dnspython way, as a task)."""
        data, pq, group, key, addr, transport, client = waiter
        reply = self._udp_reply(data, pq, group, key, canonical)
        if reply is None:
            self.spawn(self._general_udp(data, addr, transport, client))
        elif not transport.is_closing():
            transport.sendto(reply, addr)

    def _failed(self, data: bytes, client: str, error: BaseException, question: str = "",
                end: int = 0, edns: bool = False) -> bytes | None:
        """SERVFAIL for a query that could not be answered, counted and logged. An upstream's
        failure is logged with the `question` (its text) and echoes it (it ends at `end`; an
        OPT when the query had `edns`); anything else is a bug: logged with its traceback,
        answered with the header alone."""
        self.stats["servfail"] += 1
        if isinstance(error, UpstreamError) and end:
            log.warning("regionguard dns: %s: SERVFAIL: %s", question, error)
            return servfail(data, end, edns)
        log.error("regionguard dns: failed to answer a query from %s", client, exc_info=error)
        return error_reply(data, dns.rcode.SERVFAIL)

    def _plain_failed(self, data: bytes, pq: Query, client: str,
                      error: BaseException) -> bytes | None:
        """`_failed` for a plain query (wire.parse_query's: no OPT to echo)."""
        return self._failed(data, client, error, wire_name(pq.qname), 16 + len(pq.qname))

    def _udp_failed(self, data: bytes, pq: Query, addr: Any, transport: Any, client: str,
                    error: BaseException) -> None:
        """SERVFAIL for a plain UDP query, sent."""
        reply = self._plain_failed(data, pq, client, error)
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    async def _general_udp(self, data: bytes, addr, transport: asyncio.DatagramTransport,
                           client: str) -> None:
        """`handle_udp` for a query already counted: the dnspython path."""
        try:
            reply = await self._answer_parsed(data, client, True)
        except Exception as e:  # noqa: BLE001 - keep serving; SERVFAIL reveals no address
            reply = self._failed(data, client, e)
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    # --- TCP ---

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client's connection: length-prefixed queries, answered one after the other. The
        first byte of each query must come within the idle timeout, the rest of it within the
        read timeout (a length prefix then silence is not idle: it holds a reader), and the
        answer must be taken within the read timeout too. Bounded in number (TcpConnections).
        A PROXY v2 header may open the connection: from a trusted forwarder it names the client
        of every query on it; from anyone else it is ignored (and counted)."""
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else "?"
        trusted = bool(self.forwarders) and self.forwarders.trusts(client)
        proxied = False    # the connection's client came from a trusted PROXY header
        opening = True     # only the connection's first bytes may be a PROXY header
        conns = self._tcp_conns
        loop = asyncio.get_running_loop()
        conn = conns.admit(client, writer, loop.time())
        if conn is None:
            log.info("regionguard dns: TCP from %s refused: %d connections open, none in the way idle",
                     client, conns.count)
            writer.close()
            return
        idle, read = self.config.tcp_idle_timeout, self.config.tcp_read_timeout
        try:
            while conn.open:
                conns.wait(conn, loop.time())
                first = await asyncio.wait_for(reader.readexactly(1), idle)
                if opening and first == b"\r":   # a length prefix of 0x0Dxx is 3328+ bytes
                    data, header = await asyncio.wait_for(_read_opening(reader, first), read)
                else:
                    data, header = await asyncio.wait_for(_read_query(reader, first), read), False
                opening = False
                if header:
                    identity = self._claim(data, client, trusted)
                    if identity is None:
                        break   # a trusted forwarder's malformed header: never guess a client
                    proxied, client = trusted, identity.client
                    continue    # the header is no query: wait for the first one
                if not conn.open:
                    break   # closed to make room just as the query came in: not answered
                conns.busy(conn)
                asker = client
                if not proxied:   # ECS (believed only from a trusted forwarder), per query
                    identity = self._claim(data, client, trusted)
                    if identity is None:
                        self.stats["formerr"] += 1
                        reply = error_reply(data, FORMERR)
                        if reply is not None:
                            writer.write(struct.pack("!H", len(reply)) + reply)
                            await asyncio.wait_for(writer.drain(), read)
                        continue
                    asker, data = identity.client, identity.payload
                # per query: a policy reload may have changed who is let in
                refused = self.client_group(asker) == _REFUSED
                reply = self.refused(data) if refused else await self.answer(data, asker, udp=False)
                if reply is not None:
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await asyncio.wait_for(writer.drain(), read)
                if refused:
                    break   # a refused client holds no slot
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            conns.release(conn)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


    def _claim(self, data: bytes, peer: str, trusted: bool) -> Identity | None:
        """forwarders.identify for TCP, counted; None for a trusted forwarder's malformed claim
        (counted and logged)."""
        try:
            identity = self.forwarders.identify(data, peer, trusted)
        except ClaimError as e:
            self.stats[e.counter] += 1
            log.info("regionguard dns: %s", e)
            return None
        if identity.counter:
            self.stats[identity.counter] += 1
        return identity


async def _read_opening(reader: asyncio.StreamReader, first: bytes) -> tuple[bytes, bool]:
    """A connection's first bytes, beginning with CR: (a whole PROXY v2 header, True), or
    (the query that a 0x0Dxx length prefix announced, False)."""
    head = first + await reader.readexactly(proxyproto.FIXED - 1)
    if proxyproto.has_signature(head):
        rest = proxyproto.header_length(head) - proxyproto.FIXED
        return head + await reader.readexactly(rest), True
    length = (head[0] << 8) | head[1]   # at least 0x0D00: more than the 14 bytes already read
    return head[2:] + await reader.readexactly(length - (proxyproto.FIXED - 2)), False


async def _read_query(reader: asyncio.StreamReader, first: bytes) -> bytes:
    """The rest of a length-prefixed TCP query whose first byte is `first`."""
    second = await reader.readexactly(1)
    return await reader.readexactly((first[0] << 8) | second[0])


class _ServerProtocol(asyncio.DatagramProtocol):
    """UDP front: the cache-hit path runs right here, synchronously; plain misses too, with
    callbacks (DnsServer.udp_miss); only unusual queries become tasks."""

    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: Any = None   # asyncio's or uvloop's datagram transport

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        server = self.server
        try:   # try costs nothing when nothing is raised (Python >= 3.11)
            client = addr[0]
            group = server._groups.get(client) or server.group_of(client)
            now = time.monotonic()
            wire = server.replies.get((group, data[2:]), now)
            if wire is not None:
                self.transport.sendto(data[:2] + wire[2:], addr)
                return
            server.udp_miss(data, addr, self.transport, group, now)
        except Exception:  # noqa: BLE001 - one bad query must not disturb the others
            log.exception("regionguard dns: failed to answer a query from %s", addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error about a reply we sent: nothing to do, keep serving


