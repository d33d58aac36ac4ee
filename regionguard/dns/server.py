"""`regionguard dns`: a forwarding DNS server (UDP and TCP) that filters Zoom answers by region.

Paths through the server, cheapest first:
1. UDP cache hit: the client's query bytes (minus the ID), per client group, index a cache of
   finished response bytes; the reply is those bytes with the client's ID. No parsing.
2. Miss: parse the query, look up the (group, name, type, class, DO, CD) cache of filtered
   responses; else forward to the upstreams (UDP with EDNS0, TCP retry on truncation; identical
   misses wait for one upstream query), filter (regionguard.dns.filter), audit, cache. A plain
   UDP miss runs on callbacks (no task, future or timer per query: one timer serves every
   upstream deadline); other queries, and answers that need dnspython, run as coroutines.
Malformed queries get FORMERR (or are dropped when not even the header is usable). A dead, slow
or garbage-speaking upstream gives SERVFAIL within the timeout. Both caches are bounded in bytes.
The policy file is watched; a valid change swaps the policy in and empties the caches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import functools
import gc
import heapq
import ipaddress
import logging
import math
import random
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.resolver

from regionguard import _compiled
from regionguard.audit.log import AuditLog, check_audit_path
from regionguard.core.errors import ConfigError, Problem
from regionguard.core.learned import open_state
from regionguard.core.paths import policy_path
from regionguard.core.policy import parse_hostport
from regionguard.core.prefixes import is_address
from regionguard.core.reload import EngineHolder
from regionguard.dns.filter import AnswerFilter, FilterResult, cache_ttl
from regionguard.dns.wire import (
    Query,
    WireCache,
    WireFormatError,
    parse_query,
    remove_records,
    scan_response,
    scan_ttls,
    skip_name,
    wire_name,
)
from regionguard.exits import EXIT_LISTEN

log = logging.getLogger(__name__)

UPSTREAM_PAYLOAD = 1232        # EDNS0 buffer size we advertise upstream (DNS flag day 2020)
MAX_UDP_REPLY = 4096           # never answer over UDP with more than this, whatever is asked
MAX_QUERY = 4096               # a bigger UDP query is junk: read at most this many bytes
MAX_INFLIGHT = 2048            # misses being resolved at once; beyond that, SERVFAIL at once
# DNS over TCP: connections bounded in total and per client, closed when idle or stalled (see
# _TcpConnections; the defaults are argued in README.md, "DNS filtering").
TCP_MAX_CONNECTIONS = 512
TCP_MAX_PER_CLIENT = 32
TCP_IDLE_TIMEOUT = 10.0        # RFC 7766 6.2.3: "of the order of seconds"
TCP_READ_TIMEOUT = 2.0         # dnsdist's setTCPRecvTimeout default
FD_SPARE = 64                  # descriptors beside the TCP clients: sockets upstream, audit, ...
UDP_RCVBUF = 4 * 1024 * 1024
RELOAD_EVERY = 2.0
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
    audit_flush: float = 0.25   # seconds between audit batches; 0: each line at once
    tcp_max_connections: int = TCP_MAX_CONNECTIONS
    tcp_max_per_client: int = TCP_MAX_PER_CLIENT
    tcp_idle_timeout: float = TCP_IDLE_TIMEOUT     # waiting for a query's first byte
    tcp_read_timeout: float = TCP_READ_TIMEOUT     # for the rest of it, and to take the answer


# --- upstream ---------------------------------------------------------------------------------


class _UpstreamSocket(asyncio.DatagramProtocol):
    """One connected UDP socket to one upstream; replies are matched to queries by ID (and then
    by question, by the caller). Connected, so the kernel drops datagrams from anyone else."""

    def __init__(self, owner: Upstreams) -> None:
        self.owner = owner
        self.pending: dict[int, _Exchange] = {}
        self.transport: Any = None   # asyncio's or uvloop's datagram transport

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        with contextlib.suppress(AttributeError):   # uvloop's transports have no such knob
            transport.max_size = 65535   # asyncio's default asks for 256 KiB per recvfrom

    def datagram_received(self, data: bytes, addr) -> None:
        if len(data) < 12:
            return
        ex = self.pending.pop((data[0] << 8) | data[1], None)
        if ex is not None:
            try:
                self.owner._replied(ex, data)
            except Exception:  # noqa: BLE001 - an escaping error would close this socket
                log.exception("regionguard dns: failed to handle an upstream answer")

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: fail the waiting queries now, not at the timeout
        waiting = list(self.pending.values())
        self.pending.clear()
        for ex in waiting:
            try:
                self.owner._failed(ex, UpstreamError(str(exc)))
            except Exception:  # noqa: BLE001 - as above
                log.exception("regionguard dns: failed to handle an upstream error")

    def connection_lost(self, exc) -> None:
        self.transport = None


class _Exchange:
    """One question on its way through the upstreams: which one is being asked, until when, and
    whom to tell. `attempt` counts the tries, so a stale connect or TCP answer is recognised; a
    queued deadline is stale once it is no longer the exchange's `until`."""

    __slots__ = ("wire", "done", "deadline", "index", "errors", "attempt", "until", "proto",
                 "qid", "packet")

    def __init__(self, wire: bytes, done: Callable[[bytes | None, Exception | None], None],
                 deadline: float) -> None:
        self.wire = wire
        self.done: Callable[[bytes | None, Exception | None], None] | None = done
        self.deadline = deadline
        self.index = 0
        self.errors: list[str] | None = None   # made on the first failure: most have none
        self.attempt = 0
        self.until = 0.0
        self.proto: _UpstreamSocket | None = None
        self.qid = -1
        self.packet = b""


class Upstreams:
    """The upstream resolvers, asked in order, sharing the timeout between them. Callback based
    (`start`): a query costs no task, no future and no timer handle of its own; one timer
    serves every deadline (deadlines mostly arrive in order, so a deque holds them; the few
    that do not go to a heap)."""

    def __init__(self, servers: tuple[tuple[str, int], ...], timeout: float) -> None:
        self.servers = servers
        self.timeout = timeout
        self._sockets: dict[tuple[str, int], _UpstreamSocket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Deadlines in order as two deques, times and exchanges, not one of tuples: an answered
        # exchange stays queued until its deadline passes (seconds, at thousands of queries a
        # second), and a tuple each would be one more object for the garbage collector to walk.
        # An entry is current while its time is still the exchange's `until`.
        self._deadline_at: deque[float] = deque()
        self._deadline_of: deque[_Exchange] = deque()
        self._late: list[tuple[float, int, _Exchange]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._tasks: set[asyncio.Task] = set()

    @property
    def _running(self) -> asyncio.AbstractEventLoop:
        """The loop the exchanges run on: the running one, from the first query on."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def _socket(self, server: tuple[str, int]) -> _UpstreamSocket:
        proto = self._sockets.get(server)
        if proto is None or proto.transport is None:
            loop = asyncio.get_running_loop()
            _, proto = await loop.create_datagram_endpoint(lambda: _UpstreamSocket(self),
                                                           remote_addr=server)
            self._sockets[server] = proto
        return proto

    async def open(self) -> None:
        """Connect the sockets ahead of the first query (a failure is retried per query)."""
        for server in self.servers:
            with contextlib.suppress(OSError):
                await self._socket(server)

    async def query(self, wire: bytes) -> bytes:
        """Ask the upstreams in order, sharing the timeout between them; UDP, then TCP if the
        answer is truncated. The answer's bytes, checked to answer this question. Raises
        UpstreamError when no upstream gives one in time."""
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def done(data: bytes | None, error: Exception | None) -> None:
            if not fut.done():
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(cast(bytes, data))   # data comes with no error

        ex = self.start(wire, done)
        try:
            return await fut
        finally:
            self._abandon(ex)

    async def query_message(self, query: dns.message.Message) -> dns.message.Message:
        data = await self.query(query.to_wire())
        try:
            return dns.message.from_wire(data)
        except Exception as e:  # noqa: BLE001 - anything unparseable is garbage, whatever dnspython raises
            raise UpstreamError(f"garbage answer ({type(e).__name__})") from None

    # --- the exchange, step by step ---

    def start(self, wire: bytes, done: Callable[[bytes | None, Exception | None], None]
              ) -> _Exchange:
        """Send `wire` (ID ignored) to the first upstream; `done(data, None)` with the checked
        answer, or `done(None, UpstreamError)`, is called exactly once (from in here already
        when no upstream can even be asked)."""
        ex = _Exchange(wire, done, self._running.time() + self.timeout)
        self._next(ex)
        return ex

    def _next(self, ex: _Exchange) -> None:
        """Ask upstream number `ex.index`, or the one after it, or give up."""
        servers = self.servers
        n = len(servers)
        loop = self._running
        while ex.index < n and ex.done is not None:
            server = servers[ex.index]
            now = loop.time()
            share = (ex.deadline - now) / (n - ex.index)
            if share <= 0:
                break
            ex.attempt += 1
            ex.until = now + share
            proto = self._sockets.get(server)
            if proto is None or proto.transport is None:
                self._spawn(self._connect_and_send(ex, server, ex.attempt))
                return
            try:
                self._send(ex, proto)
                return
            except (UpstreamError, OSError) as e:
                self._note(ex, e)
        if ex.done is not None:
            self._finish(ex, None, UpstreamError("; ".join(ex.errors or ()) or "no upstream"))

    def _send(self, ex: _Exchange, proto: _UpstreamSocket) -> None:
        pending = proto.pending
        if len(pending) > 60000:
            raise UpstreamError("too many queries in flight")
        qid = random.getrandbits(16)
        while qid in pending:
            qid = random.getrandbits(16)
        packet = struct.pack("!H", qid) + ex.wire[2:]
        ex.packet, ex.qid, ex.proto = packet, qid, proto
        pending[qid] = ex
        try:
            proto.transport.sendto(packet)
        except BaseException:
            if pending.get(qid) is ex:
                del pending[qid]
            ex.proto = None
            raise
        self._expect(ex)

    async def _connect_and_send(self, ex: _Exchange, server: tuple[str, int], attempt: int) -> None:
        try:
            proto = await asyncio.wait_for(self._socket(server), ex.until - self._running.time())
            if ex.attempt != attempt or ex.done is None:
                return
            self._send(ex, proto)
        except (TimeoutError, UpstreamError, OSError) as e:
            if ex.attempt == attempt and ex.done is not None:
                self._note(ex, e)
                self._next(ex)

    def _note(self, ex: _Exchange, e: BaseException) -> None:
        server = self.servers[ex.index]
        if ex.errors is None:
            ex.errors = []
        ex.errors.append(f"{server[0]}:{server[1]}: {type(e).__name__} {e}".rstrip())
        ex.index += 1

    def _replied(self, ex: _Exchange, data: bytes) -> None:
        ex.proto = None
        if ex.done is None:
            return
        try:
            self._check(data, ex.packet)
        except UpstreamError as e:
            self._note(ex, e)
            self._next(ex)
            return
        if data[2] & 0x02:    # TC: the whole answer over TCP, within what is left of the share
            ex.attempt += 1
            self._spawn(self._tcp(ex, self.servers[ex.index], ex.attempt))
            return
        self._finish(ex, data, None)

    async def _tcp(self, ex: _Exchange, server: tuple[str, int], attempt: int) -> None:
        try:
            data = await asyncio.wait_for(self._ask_tcp(server, ex.packet),
                                          ex.until - self._running.time())
            self._check(data, ex.packet)
        except (TimeoutError, UpstreamError, OSError) as e:
            if ex.attempt == attempt and ex.done is not None:
                self._note(ex, e)
                self._next(ex)
            return
        if ex.attempt == attempt and ex.done is not None:
            self._finish(ex, data, None)

    def _failed(self, ex: _Exchange, error: Exception) -> None:
        ex.proto = None
        if ex.done is not None:
            self._note(ex, error)
            self._next(ex)

    def _timed_out(self, ex: _Exchange) -> None:
        proto = ex.proto
        if proto is not None:
            if proto.pending.get(ex.qid) is ex:
                del proto.pending[ex.qid]
            ex.proto = None
        self._note(ex, TimeoutError())
        self._next(ex)

    def _finish(self, ex: _Exchange, data: bytes | None, error: Exception | None) -> None:
        done, ex.done = ex.done, None
        ex.packet = ex.wire = b""
        if done is not None:   # called once per exchange: a second call finds nobody to tell
            done(data, error)

    def _abandon(self, ex: _Exchange) -> None:
        """The asker has gone (cancelled): forget the exchange."""
        ex.done = None
        proto = ex.proto
        if proto is not None and proto.pending.get(ex.qid) is ex:
            del proto.pending[ex.qid]
        ex.proto = None

    def _spawn(self, coro) -> None:
        task = self._running.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- deadlines: one timer for all ---

    def _expect(self, ex: _Exchange) -> None:
        until = ex.until
        at = self._deadline_at
        if not at or at[-1] <= until:
            at.append(until)
            self._deadline_of.append(ex)
        else:
            self._seq += 1
            heapq.heappush(self._late, (until, self._seq, ex))
        if self._timer is None or until < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = until
            self._timer = self._running.call_at(until, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = self._running.time()
        at, of, late = self._deadline_at, self._deadline_of, self._late
        due = []
        while at and at[0] <= now:
            until = at.popleft()
            ex = of.popleft()
            if ex.until == until and ex.proto is not None and ex.done is not None:
                due.append(ex)
        while late and late[0][0] <= now:
            until, _, ex = heapq.heappop(late)
            if ex.until == until and ex.proto is not None and ex.done is not None:
                due.append(ex)
        for ex in due:
            if ex.done is not None:
                try:
                    self._timed_out(ex)
                except Exception:  # noqa: BLE001 - the other deadlines must still fire
                    log.exception("regionguard dns: failed to handle an upstream timeout")
        first = min(at[0] if at else math.inf, late[0][0] if late else math.inf)
        if first != math.inf and (self._timer is None or first < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = first
            self._timer = self._running.call_at(first, self._expire)

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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            task.cancel()
        for proto in self._sockets.values():
            if proto.transport is not None:
                proto.transport.close()
        self._sockets.clear()


# --- the server ---------------------------------------------------------------------------------


# The fixed parts of our upstream queries (see DnsServer._upstream_wire), by (CD, EDNS) and DO.
_UPSTREAM_HEADERS = {(cd, edns): struct.pack("!6H", 0, RD_BIT | (CD_BIT if cd else 0), 1, 0, 0,
                                             1 if edns else 0)
                     for cd in (False, True) for edns in (False, True)}
_UPSTREAM_OPT = {do: b"\x00" + struct.pack("!HHIH", 41, UPSTREAM_PAYLOAD, 0x8000 if do else 0, 0)
                 for do in (False, True)}


def _cache_key(group: str, pq: Query) -> tuple:
    """The filtered-answer cache key of a plain query: (group, name in lower-case wire form,
    type, class, DO, CD, EDNS)."""
    return (group, pq.qname.lower(), pq.qtype, 1, pq.do, bool(pq.flags & CD_BIT), pq.edns)


def _asked_alike(pq: Query, canonical: bytes) -> bool:
    """Does the canonical answer already carry this query's RD bit and question spelling (the
    client asked as the upstream was asked)? Then only the ID differs."""
    return (canonical[2] & 0x01) == (pq.flags & RD_BIT) >> 8 and canonical.startswith(pq.qname, 12)


def _readdressed(pq: Query, canonical: bytes) -> bytes:
    """The canonical (cached) answer for this query: the client's ID, RD bit and question
    spelling."""
    if _asked_alike(pq, canonical):
        return pq.id + canonical[2:]
    flags = (((canonical[2] << 8) | canonical[3]) & ~RD_BIT) | (pq.flags & RD_BIT)
    return pq.id + flags.to_bytes(2, "big") + canonical[4:12] + pq.qname + canonical[12 + len(pq.qname):]


_QTYPE_TEXT: dict[int, str] = {}   # at most 65536: types are 16 bits


def _qtype_text(rdtype: int) -> str:
    """dns.rdatatype.to_text(rdtype), remembered: every audited answer names its type."""
    text = _QTYPE_TEXT.get(rdtype)
    if text is None:
        text = _QTYPE_TEXT[rdtype] = dns.rdatatype.to_text(rdtype)  # type: ignore[arg-type]
    return text


def _servfail(pq: Query, data: bytes) -> bytes:
    """SERVFAIL for a plain query, echoing its question."""
    flags = 0x8080 | (pq.flags & RD_BIT) | dns.rcode.SERVFAIL
    return pq.id + struct.pack("!5H", flags, 1, 0, 0, 0) + data[12:16 + len(pq.qname)]


def _error_reply(data: bytes, rcode: int) -> bytes | None:
    """A header-only reply (FORMERR, NOTIMP, SERVFAIL) to a query we cannot or will not parse.
    None when even the header is unusable or the packet is itself a response (never answer
    those: that is how reflection loops start)."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    flags = 0x8000 | (data[2] & 0x79) << 8 | 0x0080 | rcode   # QR, opcode+RD kept, RA, rcode
    return data[:2] + struct.pack("!H4H", flags, 0, 0, 0, 0)


class _Resolution:
    """A fast-path miss being resolved: the queries waiting for it, and (only when a general-path
    query waits too) a future."""

    __slots__ = ("server", "client", "key", "wire", "waiters", "future")

    def __init__(self, server: DnsServer, client: str, key: tuple, wire: bytes,
                 waiter: tuple) -> None:
        self.server = server
        self.client = client
        self.key = key
        self.wire = wire
        self.waiters = [waiter]
        self.future: asyncio.Future | None = None

    def upstream_done(self, data: bytes | None, error: Exception | None) -> None:
        self.server._upstream_done(self, data, error)

    def get_future(self) -> asyncio.Future:
        if self.future is None:
            self.future = asyncio.get_running_loop().create_future()
        return self.future


# The group of a client that the policy's gateway.clients keeps out (DnsServer.group_of). No
# policy group is so named, and nothing is ever cached under it: the UDP hit path, which looks
# the client's group up anyway, misses for such a client at no extra cost, and the paths behind
# it answer REFUSED.
_REFUSED = "\x00refused"


class _TcpConnection:
    """One client's TCP connection, as _TcpConnections keeps it."""

    __slots__ = ("client", "writer", "waiting", "since", "open")

    def __init__(self, client: str, writer: asyncio.StreamWriter, now: float) -> None:
        self.client = client
        self.writer = writer
        self.waiting = False   # for the client (its next query, or the rest of one)
        self.since = now       # when it began to
        self.open = True


class _TcpConnections:
    """The open DNS-over-TCP connections, bounded in total and per client address.

    A connection waiting for its client (idle between queries, or stalled in the middle of one)
    holds a slot for nothing; one whose query is being answered does not. So when a new
    connection would go over a bound, the connection that has waited longest for its client
    (among all, or among that client's own for the per-client bound) is closed to make room,
    as RFC 7766 6.2.3 allows servers to close idle connections; only when every connection in
    the way is busy answering is the new one refused. Idle ones time out anyway (the caller's
    timeouts): this keeps a flood of idle or dripping connections from locking others out."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.count = 0
        self.evicted = 0
        self.refused = 0
        # insertion-ordered: the first is the one waiting longest
        self._waiting: dict[_TcpConnection, None] = {}
        self._of: dict[str, list[_TcpConnection]] = {}

    def admit(self, client: str, writer: asyncio.StreamWriter, now: float) -> _TcpConnection | None:
        """The new connection, registered as waiting for its first query; None: refused."""
        mine = self._of.get(client)
        if mine is not None and len(mine) >= self.per_client:
            oldest: _TcpConnection | None = None
            for conn in mine:
                if conn.waiting and (oldest is None or conn.since < oldest.since):
                    oldest = conn
            if oldest is None:
                self.refused += 1
                return None
            self.evict(oldest)
        if self.count >= self.total:
            if not self._waiting:
                self.refused += 1
                return None
            self.evict(next(iter(self._waiting)))
        conn = _TcpConnection(client, writer, now)
        self.count += 1
        mine = self._of.get(client)
        if mine is None:
            mine = self._of[client] = []
        mine.append(conn)
        self.wait(conn, now)
        return conn

    def wait(self, conn: _TcpConnection, now: float) -> None:
        """The connection now waits for its client (and may be closed to make room)."""
        if conn.open:
            self._waiting.pop(conn, None)
            conn.waiting, conn.since = True, now
            self._waiting[conn] = None

    def busy(self, conn: _TcpConnection) -> None:
        """A query came in whole: the connection is being answered (and is not closed)."""
        conn.waiting = False
        self._waiting.pop(conn, None)

    def release(self, conn: _TcpConnection) -> None:
        """Forget the connection (closed, for whatever reason); twice is harmless."""
        if not conn.open:
            return
        conn.open = conn.waiting = False
        self.count -= 1
        self._waiting.pop(conn, None)
        mine = self._of.get(conn.client)
        if mine is not None:
            mine.remove(conn)
            if not mine:
                del self._of[conn.client]

    def evict(self, conn: _TcpConnection) -> None:
        """Close a waiting connection to make room: its slot is free at once; its reader sees
        the end of the stream and its handler ends."""
        self.release(conn)
        self.evicted += 1
        conn.writer.close()

    def close_all(self) -> None:
        for conns in list(self._of.values()):
            for conn in list(conns):
                self.release(conn)
                conn.writer.close()


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
        # Batched: a line written at once costs a miss ~30 µs, a third of its whole cost.
        self.audit = AuditLog(config.audit_path, flush_interval=config.audit_flush)
        self._groups: dict[str, str] = {}
        self._inflight: dict[tuple, _Resolution | asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self._udp: Any = None   # asyncio's or uvloop's datagram transport
        self._tcp: asyncio.base_events.Server | None = None
        self._tcp_conns = _TcpConnections(config.tcp_max_connections, config.tcp_max_per_client)
        self._reloader: asyncio.Task | None = None
        self.address: tuple[str, int] | None = None
        self.stats = {"queries": 0, "formerr": 0, "servfail": 0, "upstream_queries": 0,
                      "refused": 0}
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
                await self.holder.check_async()
                if self.holder.engine is not self.engine:
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
        self.raw.clear()
        self.semantic.clear()

    # --- helpers ---

    def group_of(self, client: str) -> str:
        """The client's policy group, or _REFUSED when gateway.clients keeps it out. Remembered
        per address until the policy changes (use_engine empties the memory)."""
        group = self._groups.get(client)
        if group is None:
            if len(self._groups) > 65536:
                self._groups.clear()
            policy = self.engine.policy
            if policy.gateway.client_allowed(client):
                group = policy.rules_for(client).name
            else:
                group = _REFUSED
            self._groups[client] = group
        return group

    def refused(self, data: bytes) -> bytes | None:
        """REFUSED for a client gateway.clients keeps out, as unbound's access-control `refuse`
        gives it: the header alone (question and counts dropped), so never more bytes than the
        query; nothing at all for a response or a runt. Not dropped silently: a client that hears
        nothing retries, again and again (unbound's reason for refusing by default)."""
        self.stats["refused"] += 1
        return _error_reply(data, dns.rcode.REFUSED)

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
            if self.group_of(client) == _REFUSED:
                return self.refused(data)
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
        key = _cache_key(group, pq)
        canonical = self.semantic.get(key, time.monotonic())
        if canonical is None:
            try:
                canonical = await self._shared(key, lambda: self._resolve_wire(client, key))
            except UpstreamError as e:
                log.warning("regionguard dns: %s: SERVFAIL: %s", wire_name(pq.qname), e)
                self.stats["servfail"] += 1
                return _servfail(pq, data)
        reply = _readdressed(pq, canonical)
        if udp:
            if len(reply) > min(pq.payload, MAX_UDP_REPLY):
                return await self._answer_parsed(data, client, udp)   # dnspython truncates it
            now = time.monotonic()
            self.raw.put((group, data[2:]), reply, self.semantic.ttl_left(key, now), now)
        return reply

    async def _resolve_wire(self, client: str, key: tuple) -> bytes:
        """Forward one plain query and filter its answer at the wire level when that is
        possible (non-Zoom: untouched; Zoom: disallowed records cut out); else with dnspython."""
        wire = self._upstream_wire(key)
        self.stats["upstream_queries"] += 1
        data = await self.upstreams.query(wire)
        found = self._filter_wire(client, key, data)
        if isinstance(found, bytes):
            return found
        return await self._filter_parsed(client, key, wire, data, found)

    @staticmethod
    def _upstream_wire(key: tuple) -> bytes:
        """Our query for a cache key: ID 0 (set when sent), RD, the client's CD, EDNS0 with our
        buffer size and the client's DO when the client spoke EDNS."""
        _group, qname, qtype, _qclass, do, cd, edns = key
        return b"".join((_UPSTREAM_HEADERS[cd, edns], qname, qtype.to_bytes(2, "big"),
                         b"\x00\x01", _UPSTREAM_OPT[do] if edns else b""))

    def _filter_wire(self, client: str, key: tuple, data: bytes) -> bytes | str:
        """The wire-level filter of an upstream answer: the filtered answer (audited and
        cached), or why dnspython must do it: "parse" (unusual records, or an answer to
        replace) or "rebuild" (records to cut that compression pointers still need)."""
        qtype = key[2]
        scan = scan_response(data)
        if scan is None:
            return "parse"
        learned = self.engine.learned
        if learned is not None:   # before the filter: the answer may place itself
            learned.observe_scan(scan.records, self.learned_source)
        name = scan.qname   # the upstream's echo of our question: checked equal (case aside)
        result = self.filter.filter_scan(client, name, qtype, scan)
        if result is None:
            return "parse"
        canonical = remove_records(data, scan, result.drop) if result.drop else data
        if canonical is None:
            return "rebuild"
        if result.zoom:
            self._audit(client, name, qtype, result)
        ttl, fields = scan_ttls(scan, self.engine.policy.dns.max_ttl, result.drop)
        self.semantic.put(key, canonical, ttl, time.monotonic(), fields)
        return canonical

    async def _filter_parsed(self, client: str, key: tuple, wire: bytes, data: bytes,
                             how: str) -> bytes:
        if how == "parse":
            try:
                response = dns.message.from_wire(data)
                uq = dns.message.from_wire(wire)
            except Exception as e:  # noqa: BLE001 - garbage from upstream, whatever dnspython raises
                raise UpstreamError(f"garbage answer ({type(e).__name__})") from None
            return await self._filter_message(client, key, uq, response)
        response = dns.message.from_wire(data)
        return await self._filter_message(client, key, dns.message.from_wire(wire), response)

    # --- the UDP miss path, without a task per query ---

    def udp_miss(self, data: bytes, addr, transport: asyncio.DatagramTransport,
                 group: str | None = None, now: float | None = None) -> None:
        """A UDP query the hit cache did not answer. A plain one is answered from the filtered
        cache or resolved with callbacks (no task, future or timer of its own): what `answer`
        does, step for step. Anything else goes the general way (`handle_udp`). `group` and
        `now`: the client's group and the time, when the caller has them already."""
        if group == _REFUSED:   # before any parsing: a refused client costs next to nothing
            self.stats["queries"] += 1
            self._refuse_udp(data, addr, transport)
            return
        pq = parse_query(data)
        if pq is None or pq.qclass != 1:
            self.spawn(self.handle_udp(data, addr, transport))
            return
        self.stats["queries"] += 1
        client = addr[0]
        try:
            if group is None:
                group = self.group_of(client)
                if group == _REFUSED:
                    self._refuse_udp(data, addr, transport)
                    return
            key = _cache_key(group, pq)
            waiter = (data, pq, group, key, addr, transport)
            canonical = self.semantic.get(key, now if now is not None else time.monotonic())
            if canonical is not None:
                self._reply_udp(waiter, canonical)
                return
            pending = self._inflight.get(key)
            if pending is None:
                if len(self._inflight) >= MAX_INFLIGHT:
                    raise UpstreamError("too many queries being resolved")
                res = _Resolution(self, client, key, self._upstream_wire(key), waiter)
                self._inflight[key] = res
                self.stats["upstream_queries"] += 1
                try:
                    self.upstreams.start(res.wire, res.upstream_done)
                except Exception as e:  # noqa: BLE001 - never leave the key in flight
                    self._complete(res, None, e)
            elif isinstance(pending, _Resolution):
                pending.waiters.append(waiter)
            else:   # being resolved the general way: its future says when
                pending.add_done_callback(functools.partial(self._future_done, waiter))
        except Exception as e:  # noqa: BLE001 - keep serving; SERVFAIL reveals no address
            self._udp_failed((data, pq, None, None, addr, transport), e)

    def _refuse_udp(self, data: bytes, addr, transport: asyncio.DatagramTransport) -> None:
        reply = self.refused(data)
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    def _future_done(self, waiter: tuple, fut: asyncio.Future) -> None:
        if fut.cancelled():
            self._udp_failed(waiter, UpstreamError("cancelled"))
        elif (error := fut.exception()) is not None:
            self._udp_failed(waiter, error)
        else:
            self._reply_waiter(waiter, fut.result())

    def _upstream_done(self, res: _Resolution, data: bytes | None, error: Exception | None) -> None:
        found: bytes | str | None = None
        if data is not None:   # else error says why not
            try:
                found = self._filter_wire(res.client, res.key, data)
            except Exception as e:  # noqa: BLE001 - the waiters answer SERVFAIL
                found, error = None, e
            if isinstance(found, str):
                self.spawn(self._finish_parsed(res, data, found))
                return
        self._complete(res, cast(bytes | None, found), error)

    async def _finish_parsed(self, res: _Resolution, data: bytes, how: str) -> None:
        try:
            canonical = await self._filter_parsed(res.client, res.key, res.wire, data, how)
        except Exception as e:  # noqa: BLE001
            self._complete(res, None, e)
            return
        except BaseException:
            self._complete(res, None, UpstreamError("cancelled"))
            raise
        self._complete(res, canonical, None)

    def _complete(self, res: _Resolution, canonical: bytes | None, error: Exception | None) -> None:
        key = res.key
        if self._inflight.get(key) is res:
            del self._inflight[key]
        fut = res.future
        if fut is not None and not fut.done():
            if error is not None:
                fut.set_exception(error)
                fut.exception()   # mark retrieved: waiters, if any, get it themselves
            else:
                fut.set_result(canonical)
        for waiter in res.waiters:
            if canonical is None:
                self._udp_failed(waiter, error or UpstreamError("no answer"))
            else:
                self._reply_waiter(waiter, canonical)

    def _reply_waiter(self, waiter: tuple, canonical: bytes) -> None:
        try:
            self._reply_udp(waiter, canonical)
        except Exception as e:  # noqa: BLE001
            self._udp_failed(waiter, e)

    def _reply_udp(self, waiter: tuple, canonical: bytes) -> None:
        """The canonical answer, re-addressed: the client's ID, RD bit and question spelling
        (as `_answer`); cached for the hit path and sent."""
        data, pq, group, key, addr, transport = waiter
        if len(canonical) > MAX_UDP_REPLY or len(canonical) > pq.payload:
            self.spawn(self._general_udp(data, addr, transport))   # dnspython truncates it
            return
        reply = _readdressed(pq, canonical)
        entry = self.semantic.entry(key)
        if entry is not None and entry.wire is canonical and _asked_alike(pq, canonical):
            # the reply is the canonical answer with the client's ID: the hit cache shares the
            # filtered cache's entry (its hit path puts the ID in)
            self.raw.put_entry((group, data[2:]), entry)
        else:
            now = time.monotonic()
            # the reply has the canonical answer's layout and TTLs: its TTL fields are known
            left, fields = self.semantic.ttl_left_and_fields(key, canonical, now)
            self.raw.put((group, data[2:]), reply, left, now, fields)
        if not transport.is_closing():
            transport.sendto(reply, addr)

    def _udp_failed(self, waiter: tuple, error: BaseException) -> None:
        """SERVFAIL for a fast-path query, as `answer` and `_answer` give it."""
        data, pq, _group, _key, addr, transport = waiter
        reply: bytes | None
        if isinstance(error, UpstreamError):
            log.warning("regionguard dns: %s: SERVFAIL: %s", wire_name(pq.qname), error)
            self.stats["servfail"] += 1
            reply = _servfail(pq, data)
        else:
            log.error("regionguard dns: failed to answer a query from %s", addr[0],
                      exc_info=error)
            self.stats["servfail"] += 1
            reply = _error_reply(data, dns.rcode.SERVFAIL)
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    async def _general_udp(self, data: bytes, addr, transport: asyncio.DatagramTransport) -> None:
        """`handle_udp` for a query already counted: the dnspython path."""
        try:
            reply = await self._answer_parsed(data, addr[0], True)
        except Exception:  # noqa: BLE001 - keep serving; SERVFAIL reveals no address
            log.exception("regionguard dns: failed to answer a query from %s", addr[0])
            self.stats["servfail"] += 1
            reply = _error_reply(data, dns.rcode.SERVFAIL)
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)

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
            if isinstance(fut, _Resolution):
                fut = fut.get_future()
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
        learned = self.engine.learned
        if learned is not None:
            learned.observe_message(response, self.learned_source)
        flt = self.filter
        result = flt.filter(client, uq, response)
        message = result.message if result.message is not None else response   # filtered in place
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
        target = dns.name.from_text(cast(str, result.reroute_to)).canonicalize().to_wire()
        tkey = (group, target, rdtype, rdclass, do, cd, edns)
        try:
            wire = self.semantic.get(tkey, time.monotonic()) or await self._shared(
                tkey, lambda: self._resolve(client, tkey, allow_reroute=False))
        except UpstreamError:
            return None
        return self.filter.reroute_response(uq, dns.message.from_wire(wire))

    def _audit(self, client: str, name: str, rdtype: int, result: FilterResult) -> None:
        # The decision may be one shared by names of the same facts: the audit line gets this
        # answer's name as its `host` (the counters do not read it).
        found = result.audited()
        if found is None:
            return
        decision, host = found
        if self.audit.path is None:   # no file: only counted, the line's fields are not needed
            self.audit.record(decision)
            return
        self.audit.record(decision, mode="resolver", front_end="dns", host=host,
                          dns_qname=name.rstrip(".").lower(),
                          dns_qtype=_qtype_text(rdtype), dns_client=client,
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
        """One client's connection: length-prefixed queries, answered one after the other. The
        first byte of each query must come within the idle timeout, the rest of it within the
        read timeout (a length prefix then silence is not idle: it holds a reader), and the
        answer must be taken within the read timeout too. Bounded in number (_TcpConnections)."""
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else "?"
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
                data = await asyncio.wait_for(_read_query(reader, first), read)
                if not conn.open:
                    break   # closed to make room just as the query came in: not answered
                conns.busy(conn)
                # per query: a policy reload may have changed who is let in
                refused = self.group_of(client) == _REFUSED
                reply = self.refused(data) if refused else await self.answer(data, client, udp=False)
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
            wire = server.raw.get((group, data[2:]), now)
            if wire is not None:
                self.transport.sendto(data[:2] + wire[2:], addr)
                return
            server.udp_miss(data, addr, self.transport, group, now)
        except Exception:  # noqa: BLE001 - one bad query must not disturb the others
            log.exception("regionguard dns: failed to answer a query from %s", addr)

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
    elif not is_address(listen[0]) and listen[0] != "localhost":
        # a name would be looked up at bind time: a bad option, not a failure to listen
        problems.append(Problem("command line", "--listen", f"{listen[0]!r} is not an IP address",
                                "listen on an address: --listen 127.0.0.1:5353, [::1]:53, "
                                "0.0.0.0:53 (every IPv4 address)"))
        listen = None
    upstreams = []
    for text in args.upstream or ():
        hp = parse_hostport(text, 53)
        if hp is None or not is_address(hp[0]):
            problems.append(Problem("command line", "--upstream",
                                    f"{text!r} is not ADDRESS:PORT" if hp is None else
                                    f"{hp[0]!r} is not an IP address (a resolver is reached by address)",
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
    if not 0 <= args.audit_flush_ms <= 60_000:
        problems.append(Problem("command line", "--audit-flush-ms",
                                f"{args.audit_flush_ms} is not between 0 and 60000",
                                "give milliseconds, e.g. --audit-flush-ms 250 (0: write at once)"))
    problems.extend(_tcp_problems(args))
    unwritable = check_audit_path(args.audit) if args.audit else None
    if unwritable is not None:   # said now, before listening, not at the first lost line
        problems.append(unwritable)
    if problems or listen is None:
        raise ConfigError(problems)
    timeout = args.timeout if args.timeout is not None else holder.engine.policy.resolver.timeout
    return Config(listen, tuple(upstreams), float(timeout), int(args.cache_mb * 1024 * 1024),
                  args.audit, not args.no_tcp, args.audit_flush_ms / 1000,
                  args.tcp_max_connections, args.tcp_max_per_client,
                  float(args.tcp_idle_timeout), float(args.tcp_read_timeout))


def _tcp_problems(args: argparse.Namespace) -> list[Problem]:
    """The TCP bounds: whole numbers of connections, seconds in a sane range, and enough file
    descriptors for every connection allowed (the soft limit is raised when the hard one lets
    it): past the limit the server could not accept at all, UDP upstream sockets included."""
    problems = []
    for flag, value, example in (("--tcp-max-connections", args.tcp_max_connections, 512),
                                 ("--tcp-max-per-client", args.tcp_max_per_client, 32)):
        if not 1 <= value <= 1_000_000:
            problems.append(Problem("command line", flag, f"{value} is not between 1 and 1000000",
                                    f"give a number of connections, e.g. {flag} {example}"))
    for flag, seconds, example in (("--tcp-idle-timeout", args.tcp_idle_timeout, 10),
                                   ("--tcp-read-timeout", args.tcp_read_timeout, 2)):
        if not 0 < seconds <= 3600:   # also false for NaN
            problems.append(Problem("command line", flag, f"{seconds} is not between 0 and 3600",
                                    f"give seconds, e.g. {flag} {example}"))
    if not problems and not args.no_tcp:
        needed = args.tcp_max_connections + FD_SPARE
        have = _raise_fd_limit(needed)
        if have < needed:
            problems.append(Problem(
                "command line", "--tcp-max-connections",
                f"{args.tcp_max_connections} connections need {needed} file descriptors, and the "
                f"limit is {have}",
                f"give at most --tcp-max-connections {max(1, have - FD_SPARE)}, or raise the "
                "limit (ulimit -n; LimitNOFILE= under systemd)"))
    return problems


def _raise_fd_limit(needed: int) -> int:
    """Raise the soft limit on open files to `needed` if it is lower and the hard limit allows;
    the soft limit in force after."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < needed:
            target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    except (ImportError, ValueError, OSError):
        return needed   # no such limit here (not POSIX), or it cannot be read: nothing to check
    return needed if soft == resource.RLIM_INFINITY else int(soft)


def cmd_dns(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s")
    learned = open_state(args.state_dir)   # upstream answers teach it; the proxy reads it too
    holder = EngineHolder(policy_path(args.policy), learned)
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
    finally:
        if learned is not None:
            learned.close()


def open_resolver_warning(host: str, restricted: bool) -> str | None:
    """The start-up warning for a server that anyone who reaches it may use: listening beyond
    loopback with no gateway.clients in the policy. None when there is nothing to say."""
    if restricted:
        return None
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
        mapped = getattr(address, "ipv4_mapped", None)
        if (mapped or address).is_loopback:
            return None
    except ValueError:   # a host name: only localhost is known to be loopback
        if host.lower().rstrip(".") == "localhost":
            return None
    return (f"regionguard dns: WARNING: listening on {host}, beyond loopback, and the policy has "
            "no gateway.clients: every host that reaches this address may use this resolver "
            "(an open resolver, usable for amplification attacks).\n"
            "    fix: list the client networks allowed under `gateway: {clients: [...]}` in the "
            "policy (e.g. clients: [10.0.0.0/8]), or listen on 127.0.0.1")


async def _main(holder: EngineHolder, config: Config) -> int:
    server = DnsServer(holder, config)
    host, port = await server.start()
    # The policy, the Zoom data and the address tables are hundreds of thousands of objects that
    # live as long as the process: keep the collector from walking them on every full
    # collection (which the growing caches trigger again and again).
    gc.freeze()
    # Every miss allocates a few dozen objects that live on in the caches (keys, entries) and
    # none that form cycles: a young collection every 2,000 allocations (the default) walks
    # them again and again for nothing (~8% of a miss, measured in-process). 20,000 keeps
    # the cycles of exceptions and tasks collected while costing a fraction of that.
    gc.set_threshold(20_000, 10, 10)
    ups = ", ".join(f"{h}:{p}" for h, p in config.upstreams)
    shown = f"[{host}]" if ":" in host else host
    warning = open_resolver_warning(host, holder.engine.policy.gateway.restricted)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    print(f"regionguard dns: listening on {shown}:{port} ({'udp+tcp' if config.tcp else 'udp'}); "
          f"upstream {ups}; policy {holder.path} ({holder.engine.policy.version_id}); "
          f"hot path {_compiled.status()}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    return 0


__all__ = ["DnsServer", "Config", "cmd_dns"]
