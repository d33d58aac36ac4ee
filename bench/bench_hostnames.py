"""Does compiling the hostname matcher (regionguard/core/hostnames.py) still pay? Its compiled
build beside its own source, in one process, on the same names, rounds alternating.

    REGIONGUARD_COMPILED=require .venv/bin/python bench/bench_hostnames.py [--n 100000] [--rounds 5]

Measured per name, as the DNS filter meets a new name: DomainSet.match over Zoom's domains on a
mix of Zoom and other names, each name new (the matcher remembers only the last one), plus
normalise_host. A cache miss asks the matcher about 5 times, 3 of them about a name it has not
just seen (counted on bench_dns_miss_path.py's misses); from compiled callers (dns/filter) a
compiled matcher is also called natively, which this does not show: bench_dns_miss_path.py
against a build without it (README, Speed) gives the whole miss.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_lookup import per_call_ns  # noqa: E402
from regionguard import _compiled  # noqa: E402
from regionguard.core import hostnames  # noqa: E402
from regionguard.core.zoom import ZoomCatalogue  # noqa: E402

SUFFIXES = ("zoom.us", "us04web.zoom.us", "zoomgov.com", "example.com", "cdn.example.net",
            "mail.example.org", "a.b.c.example.co.uk")


def source_module():
    """regionguard.core.hostnames run from its source, under another name, beside the build."""
    spec = importlib.util.spec_from_file_location("_source_hostnames",
                                                  ROOT / "regionguard" / "core" / "hostnames.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_matcher(module, domains: list[str], names: list[str]) -> float:
    matcher = module.DomainSet(domains)
    normalise = module.normalise_host
    return per_call_ns(lambda h: (matcher.match(h), normalise(h)), names)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="names per round (bounded)")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    n, rounds = min(args.n, 1_000_000), min(args.rounds, 50)
    if not hostnames.__file__.endswith((".so", ".pyd")):
        print(f"bench_hostnames: regionguard.core.hostnames runs from source here "
              f"({_compiled.status()}): run ./dev setup, and this with REGIONGUARD_COMPILED=require")
        return 1
    rnd = random.Random(7)
    names = [f"Host{i}.{rnd.choice(SUFFIXES)}." for i in range(n)]
    domains = list(ZoomCatalogue.load().domains)
    source = source_module()
    figures: dict[str, list[float]] = {"compiled": [], "source": []}
    for _ in range(rounds):
        figures["compiled"].append(time_matcher(hostnames, domains, names))
        figures["source"].append(time_matcher(source, domains, names))
    c, s = statistics.median(figures["compiled"]), statistics.median(figures["source"])
    print(f"bench_hostnames: {n} new names x {rounds} rounds, ns per name (match + normalise), "
          "median of rounds:")
    for kind in ("compiled", "source"):
        print(f"  {kind:8} {statistics.median(figures[kind]):6.0f} ns   "
              f"(rounds: {', '.join(f'{x:.0f}' for x in figures[kind])})")
    print(f"  compiled saves {s - c:.0f} ns per new name (source/compiled {s / c:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
