"""Would compiling the hostname matcher (regionguard/core/hostnames.py) pay? It runs from source
(the core stays plain Python); this times it beside a build that compiles it, rounds alternating.

    REGIONGUARD_COMPILED=require .venv/bin/python bench/bench_hostnames.py --build DIR [--n 100000]

DIR: a copy of the checkout compiled with "core.hostnames" added to MODULES in its
regionguard/_compiled.py (README, Speed: "To reproduce, compile another list"). Measured per
name, as the DNS filter meets a new name: DomainSet.match over Zoom's domains on a mix of Zoom
and other names, each name new (the matcher remembers only the last one), plus normalise_host.
A cache miss asks the matcher about 5 times, 3 of them for a name it has not just seen
(counted on bench_dns_miss_path.py's misses), so the saving per miss is about 3 x the figure.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))   # after PYTHONPATH: a round runs the checkout it is given

from bench.bench_lookup import per_call_ns  # noqa: E402

SUFFIXES = ("zoom.us", "us04web.zoom.us", "zoomgov.com", "example.com", "cdn.example.net",
            "mail.example.org", "a.b.c.example.co.uk")


def one_round(n: int) -> None:
    """Time this interpreter's regionguard.core.hostnames; print 'compiled|source NS'."""
    from regionguard.core import hostnames
    from regionguard.core.zoom import ZoomCatalogue
    rnd = random.Random(7)
    names = [f"Host{i}.{rnd.choice(SUFFIXES)}." for i in range(n)]
    matcher = hostnames.DomainSet(list(ZoomCatalogue.load().domains))
    normalise = hostnames.normalise_host
    ns = per_call_ns(lambda h: (matcher.match(h), normalise(h)), names)
    print("compiled" if hostnames.__file__.endswith((".so", ".pyd")) else "source", ns)


def measure(checkout: Path, n: int) -> tuple[str, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "REGIONGUARD_COMPILED": "auto"}
    out = subprocess.run([sys.executable, __file__, "--one-round", str(n)], env=env, cwd=checkout,
                         capture_output=True, text=True, timeout=300, check=True).stdout.split()
    return out[-2], float(out[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", type=Path, metavar="DIR",
                    help="a checkout whose build compiles core.hostnames (see above)")
    ap.add_argument("--n", type=int, default=100_000, help="names per round (bounded)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--one-round", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_round:
        one_round(min(args.one_round, 1_000_000))
        return 0
    if args.build is None:
        ap.error("give --build DIR: a checkout compiled with core.hostnames in its MODULES")
    n, rounds = min(args.n, 1_000_000), min(args.rounds, 50)
    figures: dict[str, list[float]] = {"compiled": [], "source": []}
    for _ in range(rounds):
        for checkout in (args.build.resolve(), ROOT):
            kind, ns = measure(checkout, n)
            figures[kind].append(ns)
    if not figures["compiled"] or not figures["source"]:
        print(f"bench_hostnames: {args.build} does not run core.hostnames compiled "
              "(add it to MODULES there and compile; see the docstring)")
        return 1
    c, s = statistics.median(figures["compiled"]), statistics.median(figures["source"])
    print(f"bench_hostnames: {n} new names x {rounds} rounds, ns per name (match + normalise), "
          "median of rounds:")
    for kind in ("compiled", "source"):
        print(f"  {kind:8} {statistics.median(figures[kind]):6.0f} ns   "
              f"(rounds: {', '.join(f'{x:.0f}' for x in figures[kind])})")
    print(f"  compiling would save {s - c:.0f} ns per new name (source/compiled {s / c:.2f}x), "
          f"about {3 * (s - c) / 1000:.1f} us per cache miss")
    return 0


if __name__ == "__main__":
    sys.exit(main())
