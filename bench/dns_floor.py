"""The I/O floor of a cache miss: a UDP forwarder on uvloop that does nothing else.

    .venv/bin/python bench/dns_floor.py LISTEN_PORT UPSTREAM_PORT

Each query is sent on to the upstream with a new ID and the answer sent back to its client:
no parsing, no cache, no filter, no timeouts. bench_dns.py runs it beside unbound and
regionguard, so that a miss's cost can be split into what any Python forwarder pays for its
four datagrams and what regionguard's own work adds. Not a DNS server: a measuring stick.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, pending: dict) -> None:
        self.pending = pending

    def datagram_received(self, data: bytes, addr) -> None:
        waiting = self.pending.pop(data[:2], None)
        if waiting is not None:
            client_id, transport, client = waiting
            transport.sendto(client_id + data[2:], client)


class _Front(asyncio.DatagramProtocol):
    def __init__(self, pending: dict, upstream: asyncio.DatagramTransport) -> None:
        self.pending, self.upstream, self.seq = pending, upstream, 0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.seq = (self.seq + 1) & 0xFFFF
        qid = self.seq.to_bytes(2, "big")
        self.pending[qid] = (data[:2], self.transport, addr)
        self.upstream.sendto(qid + data[2:])


async def _main(listen: int, upstream: int) -> None:
    loop = asyncio.get_running_loop()
    pending: dict = {}
    up, _ = await loop.create_datagram_endpoint(lambda: _Upstream(pending),
                                                remote_addr=("127.0.0.1", upstream))
    await loop.create_datagram_endpoint(lambda: _Front(pending, up), local_addr=("127.0.0.1", listen))
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(_main(int(sys.argv[1]), int(sys.argv[2])))
