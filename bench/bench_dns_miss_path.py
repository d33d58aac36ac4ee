"""The Python cost of one `regionguard dns` cache miss, without sockets: in-process, one core.

    .venv/bin/python bench/bench_dns_miss_path.py [--n 100000] [--audit] [--profile]

Drives the server's own UDP miss path with transports that only keep what is sent: a query
arrives (hit cache missed, query parsed, upstream query sent), then the upstream's answer
(checked, scanned, filtered, cached, re-addressed, sent). Every name is new, every answer holds
a DE address (allowed) and a US one (filtered out), as in bench_dns.py. What this measures plus
the floor that bench_dns.py measures (the four datagrams of a miss on uvloop) is roughly a
miss's whole cost, so it says where to look; bench_dns.py is the judge.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.name
import dns.rrset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_dns import zone_addresses  # noqa: E402

from regionguard import _compiled  # noqa: E402
from regionguard.async_reload import AsyncEngineHolder  # noqa: E402
from regionguard.dns.cli import Config  # noqa: E402
from regionguard.dns.server import DnsServer, _ServerProtocol  # noqa: E402
from regionguard.dns.upstream import UpstreamSocket  # noqa: E402

UPSTREAM = ("127.0.0.1", 9)


class _KeptTransport:
    """A datagram transport that keeps what is sent instead of sending it."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr=None) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return False


def _exchanges(n: int, de: str, us: str) -> tuple[list[bytes], list[bytes]]:
    """n queries for new names (m<i>-path.zoom.us A) and their upstream answers (a DE and a US
    address). Made by dnspython once, then spliced per name: the records point at the question
    (0xC00C), so only the question differs; dnspython per name would take most of the run."""
    q = dns.message.make_query("template.zoom.us", "A", use_edns=0, payload=1232)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(q.question[0].name, 3600, "IN", "A", de, us))
    qwire, rwire = q.to_wire(), r.to_wire()
    end = 12 + len(q.question[0].name.to_wire())
    queries, answers = [], []
    for i in range(n):
        name = dns.name.from_text(f"m{i}-path.zoom.us").to_wire()
        qid = (i & 0xFFFF).to_bytes(2, "big")
        queries.append(qid + qwire[2:12] + name + qwire[end:])
        answers.append(qid + rwire[2:12] + name + rwire[end:])
    return queries, answers


async def run(n: int, audit: Path | None, profile: bool, learned: bool = False) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) per miss. The CPU figure holds up better on a
    shared machine: time spent waiting for a core is not in it."""
    de, us = zone_addresses()
    with tempfile.TemporaryDirectory(prefix="bench-miss-") as tmp:
        policy = Path(tmp) / "policy.yaml"
        policy.write_text("version: 1\naccount: {type: paid, default_region: DE}\n"
                          "regions: {opt_in: [Europe]}\n")
        store = None
        if learned:   # as `regionguard dns` runs by default: upstream answers are observed
            from regionguard.core.learned import LearnedStore

            store = LearnedStore.open(Path(tmp) / "state")
        server = DnsServer(AsyncEngineHolder(policy, store), Config(("127.0.0.1", 0), (UPSTREAM,), 3.0,
                                                        64 << 20, str(audit) if audit else None))
        front, clients = _ServerProtocol(server), _KeptTransport()
        front.transport = clients
        upstream, sent_up = UpstreamSocket(server.upstreams), _KeptTransport()
        upstream.transport = sent_up
        server.upstreams._sockets[UPSTREAM] = upstream
        queries, answers = _exchanges(n, de, us)
        gc.freeze()                      # as `regionguard dns` does after start-up
        gc.set_threshold(20_000, 10, 10)
        client = ("127.0.0.1", 5300)
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        t0, c0 = time.perf_counter(), time.process_time()
        for query, answer in zip(queries, answers, strict=True):
            front.datagram_received(query, client)
            sent = sent_up.sent.pop()
            upstream.datagram_received(sent[:2] + answer[2:], UPSTREAM)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        server.audit.close()
        if store is not None:
            store.close()
        last = dns.message.from_wire(clients.sent[-1])
        got = [rd.address for rrset in last.answer for rd in rrset]
        if len(clients.sent) != n or got != [de]:
            raise SystemExit(f"bench_dns_miss_path: {len(clients.sent)} answers of {n}, the last "
                             f"holding {got}, not [{de}]: the path did not filter")
        return elapsed / n, cpu / n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="misses (each a new name)")
    parser.add_argument("--audit", action="store_true", help="write the audit log as well")
    parser.add_argument("--profile", action="store_true", help="cProfile it (slower: for shares)")
    parser.add_argument("--learned", action="store_true",
                        help="with a learned evidence store (regionguard dns's default)")
    args = parser.parse_args()
    if args.n < 1:
        parser.error(f"--n {args.n}: give a number of misses of 1 or more, e.g. --n 100000")
    with tempfile.TemporaryDirectory(prefix="bench-miss-audit-") as tmp:
        audit = Path(tmp) / "audit.jsonl" if args.audit else None
        per_miss, cpu_per_miss = asyncio.run(run(args.n, audit, args.profile, args.learned))
    print(f"bench_dns_miss_path: {per_miss * 1e6:.1f} us of Python per miss ({cpu_per_miss * 1e6:.1f} "
          f"us CPU) over {args.n} misses"
          f"{' with the audit log' if args.audit else ''}"
          f"{' with a learned store' if args.learned else ''} ({sys.implementation.name} "
          f"{sys.version.split()[0]}; compiled modules: {_compiled.status()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
