"""DNS over TCP's connections, bounded: in total and per client address, the one waiting
longest for its client closed to make room (regionguard.dns.server reads and answers them).
"""

from __future__ import annotations

import asyncio

# DNS over TCP: connections bounded in total and per client, closed when idle or stalled (see
# TcpConnections; the defaults are argued in README.md, "DNS filtering").
TCP_MAX_CONNECTIONS = 512
TCP_MAX_PER_CLIENT = 32
TCP_IDLE_TIMEOUT = 10.0        # RFC 7766 6.2.3: "of the order of seconds"
TCP_READ_TIMEOUT = 2.0         # dnsdist's setTCPRecvTimeout default


class TcpConnection:
    """One client's TCP connection, as TcpConnections keeps it."""

    __slots__ = ("client", "writer", "waiting", "since", "open")

    def __init__(self, client: str, writer: asyncio.StreamWriter, now: float) -> None:
        self.client = client
        self.writer = writer
        self.waiting = False   # for the client (its next query, or the rest of one)
        self.since = now       # when it began to
        self.open = True


class TcpConnections:
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
        self._waiting: dict[TcpConnection, None] = {}
        self._of: dict[str, list[TcpConnection]] = {}

    def admit(self, client: str, writer: asyncio.StreamWriter, now: float) -> TcpConnection | None:
        """The new connection, registered as waiting for its first query; None: refused."""
        mine = self._of.get(client)
        if mine is not None and len(mine) >= self.per_client:
            oldest: TcpConnection | None = None
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
        conn = TcpConnection(client, writer, now)
        self.count += 1
        mine = self._of.get(client)
        if mine is None:
            mine = self._of[client] = []
        mine.append(conn)
        self.wait(conn, now)
        return conn

    def wait(self, conn: TcpConnection, now: float) -> None:
        """The connection now waits for its client (and may be closed to make room)."""
        if conn.open:
            self._waiting.pop(conn, None)
            conn.waiting, conn.since = True, now
            self._waiting[conn] = None

    def busy(self, conn: TcpConnection) -> None:
        """A query came in whole: the connection is being answered (and is not closed)."""
        conn.waiting = False
        self._waiting.pop(conn, None)

    def release(self, conn: TcpConnection) -> None:
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

    def evict(self, conn: TcpConnection) -> None:
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
