"""Loopback ports for servers that tests, benchmarks and tools start (no pytest here: the
benchmarks and tools import it too)."""

from __future__ import annotations

import random
import socket


def free_port() -> int:
    """A loopback port free for UDP and TCP, for a server started later. Taken below
    Linux's ephemeral range (32768-60999): a port from bind(0) is an ephemeral one, which any
    client socket may be given before the server binds it."""
    for _ in range(200):
        port = random.randrange(20000, 32768)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            u.bind(("127.0.0.1", port))
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise RuntimeError("no free port below the ephemeral range")
