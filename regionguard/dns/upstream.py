"""The upstream DNS client of `regionguard dns`: asks the upstream resolvers in order, sharing
the timeout between them; UDP, then TCP when an answer is truncated.

Callback based (`start`): a query costs no task, no future and no timer handle of its own, and
one timer serves every deadline (README, "Speed"). `query` wraps it for coroutines.

The sockets are behind a small seam, `Transport`: how to open a UDP socket to a server and how
to ask one over TCP. `SocketTransport` is asyncio's; tests give a fake one
(tests/test_dns_upstream_client.py). What the client promises, whatever the transport:
- `done` is called exactly once per exchange: with an answer checked to be a response to this
  ID and this question, or with UpstreamError saying what each upstream did;
- a reply with an ID nobody waits for is ignored; one with a waited-for ID that does not answer
  the question, a send that fails, an ICMP error, a timeout: the next upstream is asked;
- each upstream gets an equal share of what is left of the timeout; nothing waits past it;
- an abandoned exchange (the asker cancelled) leaves nothing pending; a late answer is ignored.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import logging
import math
import random
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol, cast

from regionguard.dns.wire import UpstreamError, answers_question

# Upper bounds (seconds) of the upstream latency histogram's buckets, as Prometheus' `le`.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

log = logging.getLogger(__name__)

__all__ = ["SocketTransport", "Transport", "UpstreamError", "UpstreamSocket", "Upstreams"]

Server = tuple[str, int]
Done = Callable[[bytes | None, Exception | None], None]


class Transport(Protocol):
    """How the client reaches a server: the seam tests replace."""

    async def open_udp(self, server: Server, protocol: UpstreamSocket) -> None:
        """Connect a UDP socket to `server`; it calls protocol.connection_made(transport) with
        something that has sendto(packet) and close(), then datagram_received/error_received."""

    async def ask_tcp(self, server: Server, packet: bytes) -> bytes:
        """Send `packet` over a new TCP connection to `server`; the answer (length prefix off)."""


class SocketTransport:
    """asyncio's sockets."""

    async def open_udp(self, server: Server, protocol: UpstreamSocket) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: protocol, remote_addr=server)

    async def ask_tcp(self, server: Server, packet: bytes) -> bytes:
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


class UpstreamSocket(asyncio.DatagramProtocol):
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
                 "qid", "packet", "started")

    def __init__(self, wire: bytes, done: Callable[[bytes | None, Exception | None], None],
                 deadline: float) -> None:
        self.wire = wire
        self.done: Callable[[bytes | None, Exception | None], None] | None = done
        self.deadline = deadline
        self.index = 0
        self.errors: list[str] | None = None   # made on the first failure: most have none
        self.attempt = 0
        self.until = 0.0
        self.proto: UpstreamSocket | None = None
        self.qid = -1
        self.packet = b""
        # Latency is timed on the process clock, not the loop's: uvloop's loop.time() ticks in
        # milliseconds, so an answer over loopback would measure 0.
        self.started = time.perf_counter()


class Upstreams:
    """The upstream resolvers, asked in order, sharing the timeout between them (see the module's
    promises). Deadlines mostly arrive in order, so a deque holds them; the few others a heap."""

    def __init__(self, servers: tuple[Server, ...], timeout: float,
                 transport: Transport | None = None) -> None:
        self.servers = servers
        self.timeout = timeout
        self.transport: Transport = transport if transport is not None else SocketTransport()
        self._sockets: dict[tuple[str, int], UpstreamSocket] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Deadlines in order, as two deques rather than one of tuples (README, "Speed"). An
        # entry is current while its time is still the exchange's `until`.
        self._deadline_at: deque[float] = deque()
        self._deadline_of: deque[_Exchange] = deque()
        self._late: list[tuple[float, int, _Exchange]] = []
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._tasks: set[asyncio.Task] = set()
        # For metrics, read at scrape time (regionguard.dns.metrics): plain ints, no lock.
        self.failures = 0          # exchanges no upstream answered (the client got SERVFAIL)
        self.timeouts = 0          # tries that timed out (an exchange may try several upstreams)
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)   # answered, by bucket; last: +Inf
        self.latency_sum = 0.0

    @property
    def _running(self) -> asyncio.AbstractEventLoop:
        """The loop the exchanges run on: the running one, from the first query on."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def _socket(self, server: tuple[str, int]) -> UpstreamSocket:
        proto = self._sockets.get(server)
        if proto is None or proto.transport is None:
            proto = UpstreamSocket(self)
            await self.transport.open_udp(server, proto)
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
            self.abandon(ex)

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

    def _send(self, ex: _Exchange, proto: UpstreamSocket) -> None:
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
            data = await asyncio.wait_for(self.transport.ask_tcp(server, ex.packet),
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
        self.timeouts += 1
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
            if data is None:
                self.failures += 1
            else:
                elapsed = time.perf_counter() - ex.started
                self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, elapsed)] += 1
                self.latency_sum += elapsed
            done(data, error)

    def abandon(self, ex: _Exchange | None) -> None:
        """The asker has gone (cancelled): forget the exchange."""
        if ex is None:
            return
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

    @staticmethod
    def _check(data: bytes, packet: bytes) -> None:
        """The answer must be a response, to this ID and this one question (any case)."""
        if not answers_question(data, packet):
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
