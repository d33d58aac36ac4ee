"""Measuring round trips with TCP connects: one SYN, answered by a SYN-ACK or a RST, is one
round trip, whichever comes back (a closed port answers as fast as an open one).

Used by `regionguard probe ADDRESS...` and, under `evidence.rtt: probe`, by the proxy before it
decides an address no trusted source places (regionguard.mitm.enforce). A probe is one
connect, closed as soon as it is answered: no payload is ever sent. A SYN-ACK's round trip is
the kernel's own timing (TCP_INFO), which no wait for this process to be scheduled inflates; a
RST's is time.perf_counter around the connect (monotonic, sub-microsecond; not the event loop's
clock, whose ticks are milliseconds under uvloop).

`Prober` is the proxy's: it shares one probe among concurrent first contacts with an address,
caps the probes in flight (past the cap a connection is decided without one: never queued
behind others), and counts what it did for the metrics.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Iterable
from typing import NamedTuple

DEFAULT_PORTS = (443, 8801)      # Zoom's TCP ports (config/zoom.yaml: web/signalling, media)
DEFAULT_TIMEOUT = 1.0            # seconds: past it a probe says nothing (RTTs of 1 s say nothing)
MAX_IN_FLIGHT = 16


# struct tcp_info (linux/tcp.h): tcpi_rtt is the kernel's smoothed RTT in µs (u32 at byte 68),
# tcpi_min_rtt its minimum (u32 at byte 148, Linux 4.10+). Right after a connect both are the
# SYN → SYN-ACK round trip, timed by the kernel: no event-loop wake-up inflates them.
_TCP_INFO_LEN = 152
_RTT_AT, _MIN_RTT_AT = 68, 148


def kernel_rtt_ms(sock: socket.socket) -> float | None:
    """The kernel's minimum RTT of a connected TCP socket (Linux TCP_INFO), in ms; None where
    the kernel does not say."""
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, _TCP_INFO_LEN)
    except OSError:
        return None
    if len(raw) >= _MIN_RTT_AT + 4:
        value = int.from_bytes(raw[_MIN_RTT_AT:_MIN_RTT_AT + 4], sys.byteorder)
        if 0 < value < 0xFFFFFFFF:
            return value / 1000
    if len(raw) >= _RTT_AT + 4:
        value = int.from_bytes(raw[_RTT_AT:_RTT_AT + 4], sys.byteorder)
        if value > 0:
            return value / 1000
    return None


class Sample(NamedTuple):
    address: str
    port: int
    rtt_ms: float | None     # None: no answer in time, or unreachable
    answer: str              # "syn-ack", "rst", or why there was none


async def connect_rtt(address: str, port: int, timeout: float = DEFAULT_TIMEOUT) -> Sample:
    """One TCP connect to address:port, timed from the SYN to its answer."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (address, port)), timeout)
        elapsed = (time.perf_counter() - start) * 1000
        # the kernel timed the SYN → SYN-ACK itself: no wait for this process to be scheduled
        return Sample(address, port, kernel_rtt_ms(sock) or elapsed, "syn-ack")
    except ConnectionRefusedError:
        return Sample(address, port, (time.perf_counter() - start) * 1000, "rst")
    except TimeoutError:
        return Sample(address, port, None, f"no answer in {timeout:g} s")
    except OSError as e:
        return Sample(address, port, None, e.strerror or str(e))
    finally:
        sock.close()


async def probe(address: str, ports: Iterable[int] = DEFAULT_PORTS, count: int = 1,
                timeout: float = DEFAULT_TIMEOUT) -> list[Sample]:
    """`count` connects to each port, one after another (so they do not queue behind each
    other on the path and inflate the minimum)."""
    samples = []
    for _ in range(count):
        for port in ports:
            samples.append(await connect_rtt(address, port, timeout))
    return samples


class Prober:
    """The proxy's prober: at most one probe per address at a time, a bounded number in
    flight, counted."""

    def __init__(self, max_in_flight: int = MAX_IN_FLIGHT, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self.sent = 0          # connects made (SYNs sent)
        self.answered = 0      # of them, answered in time
        self.skipped = 0       # first contacts decided without a probe: the cap was reached
        self._in_flight: dict[str, asyncio.Future[Sample]] = {}

    async def measure(self, address: str, port: int) -> Sample | None:
        """One round trip to `address` (its connection's own port), shared with whoever asks
        for the same address meanwhile; None when the cap is reached."""
        pending = self._in_flight.get(address)
        if pending is not None:
            return await asyncio.shield(pending)
        if len(self._in_flight) >= self.max_in_flight:
            self.skipped += 1
            return None
        future: asyncio.Future[Sample] = asyncio.get_running_loop().create_future()
        self._in_flight[address] = future
        self.sent += 1
        try:
            sample = await connect_rtt(address, port, self.timeout)
        except BaseException as e:
            future.set_exception(e)
            future.exception()   # retrieved: sharers get it through shield
            raise
        finally:
            del self._in_flight[address]
        if sample.rtt_ms is not None:
            self.answered += 1
        future.set_result(sample)
        return sample


__all__ = ["DEFAULT_PORTS", "Prober", "Sample", "connect_rtt", "probe"]
