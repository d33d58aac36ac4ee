# Copied from ../shared/tools/delayline.py (the project's shared tools, 2026-12-02): CI runs on a clone without ../shared.
"""A wire with latency between two network namespaces, for tests that need real round-trip times.

These machines' kernels have no `tc netem` (only the htb and pfifo qdiscs), so latency is added in
user space: one TUN device in each namespace, and this program carries IP packets between them,
holding each for half the round-trip time configured for the server address it belongs to.

    python delayline.py CLIENT_NS SERVER_NS --client 10.232.0.2 --rtt 10.232.1.1=2 --rtt 10.232.2.1=150

- CLIENT_NS gets a TUN `dl0` with the client address, and a route to every server address via it.
- SERVER_NS gets a TUN `dl1`, every server address on its loopback, and a route back to the client.
- A packet to or from a server address waits RTT/2 milliseconds in each direction; so a TCP
  connect from the client measures about RTT. IPv4 only. Runs until killed (SIGTERM). Needs root.
Prints `ready` on stdout once both ends are up.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import heapq
import os
import select
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def enter(ns: str) -> None:
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {ns}")
    finally:
        os.close(fd)


def tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("client_ns")
    ap.add_argument("server_ns")
    ap.add_argument("--client", required=True, help="the client's address (IPv4)")
    ap.add_argument("--rtt", action="append", default=[], metavar="ADDR=MS", help="server address and its round-trip time")
    a = ap.parse_args()
    half = {}
    for spec in a.rtt:
        addr, ms = spec.split("=")
        half[bytes(int(x) for x in addr.split("."))] = float(ms) / 2000.0
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    enter(a.client_ns)
    fd_c = tun("dl0")
    enter(a.server_ns)
    fd_s = tun("dl1")
    _libc.setns(home, CLONE_NEWNET)
    ip(a.client_ns, "link", "set", "lo", "up")
    ip(a.client_ns, "addr", "add", f"{a.client}/32", "dev", "dl0")
    ip(a.client_ns, "link", "set", "dl0", "up")
    ip(a.server_ns, "link", "set", "lo", "up")
    ip(a.server_ns, "link", "set", "dl1", "up")
    ip(a.server_ns, "route", "add", f"{a.client}/32", "dev", "dl1")
    for spec in a.rtt:
        addr = spec.split("=")[0]
        ip(a.client_ns, "route", "add", f"{addr}/32", "dev", "dl0")
        ip(a.server_ns, "addr", "add", f"{addr}/32", "dev", "lo")
    print("ready", flush=True)
    queue: list[tuple[float, int, int, bytes]] = []
    seq = 0
    while True:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
        readable, _, _ = select.select([fd_c, fd_s], [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            while True:
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if len(pkt) < 20 or pkt[0] >> 4 != 4:
                    continue
                server = pkt[16:20] if fd == fd_c else pkt[12:16]
                out = fd_s if fd == fd_c else fd_c
                seq += 1
                heapq.heappush(queue, (now + half.get(server, 0.0), seq, out, pkt))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, out, pkt = heapq.heappop(queue)
            try:
                os.write(out, pkt)
            except OSError:
                pass


if __name__ == "__main__":
    sys.exit(main())
