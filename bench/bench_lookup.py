"""Locator speed with all bundled data loaded (issue #2 targets: uncached ≤ 1 µs median,
memoised ≤ 100 ns median). Run: .venv/bin/python bench/bench_lookup.py [--n 200000]

Timing: batches of 1,000 lookups each, timed with perf_counter_ns; the figure is the median of
the per-lookup batch averages (single-call timers cost more than the lookup itself).
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from regionguard import Engine, load_policy  # noqa: E402
from regionguard.core.paths import default_policy_path  # noqa: E402


def sample_addresses(n: int, rnd: random.Random, engine: Engine) -> list[str]:
    """A mix: Zoom ranges (v4 and v6), cloud space, and random IPv4 anywhere."""
    zoom = [iv for iv in engine.zoom.ranges.intervals()]
    out = []
    for i in range(n):
        kind = i % 4
        if kind < 2:
            start, end, _ = rnd.choice(zoom)
            key = rnd.randint(start, end)
            if key >> 32 == 0xFFFF:
                out.append(str(ipaddress.IPv4Address(key & 0xFFFFFFFF)))
            else:
                out.append(str(ipaddress.IPv6Address(key)))
        elif kind == 2:
            # 3.0.0.0–54.x: AWS-heavy space
            out.append(str(ipaddress.IPv4Address(rnd.randint(0x03000000, 0x36FFFFFF))))
        else:
            out.append(str(ipaddress.IPv4Address(rnd.getrandbits(32))))
    return out


def per_call_ns(fn, items: list, batch: int = 1000) -> float:
    samples = []
    for i in range(0, len(items) - batch + 1, batch):
        chunk = items[i:i + batch]
        t0 = time.perf_counter_ns()
        for x in chunk:
            fn(x)
        samples.append((time.perf_counter_ns() - t0) / batch)
    return statistics.median(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="lookups per measurement (bounded)")
    ap.add_argument("--policy", default=str(default_policy_path()))
    ap.add_argument("--learned", type=int, default=0, metavar="N",
                    help="also give the engine an in-memory learned store holding N of the "
                    "sampled addresses (regionguard/core/learned.py); 0: no store, as by default")
    args = ap.parse_args()
    n = min(args.n, 2_000_000)

    t0 = time.perf_counter()
    engine = Engine(load_policy(args.policy))
    load_s = time.perf_counter() - t0
    rnd = random.Random(8805)
    addrs = sample_addresses(n, rnd, engine)
    if args.learned:
        from regionguard.core.learned import LearnedStore

        store = LearnedStore.in_memory(max_entries=max(args.learned, 1))
        for a in rnd.sample(addrs, min(args.learned, len(addrs))):
            store.observe(f"zoomam{rnd.randint(1, 999)}zc.zoom.us", [a], "bench")
        engine = Engine(engine.policy, learned=store)
        print(f"  {store.describe()}")
    loc = engine.locator

    uncached = per_call_ns(lambda a: loc._locate(a, None), addrs)
    loc.clear_memo()
    for a in addrs:
        loc.locate(a)
    memo = per_call_ns(loc.locate, addrs)
    decide_first = per_call_ns(lambda a: engine.decide(None, None, a, 8801, "udp"), addrs)
    warm = addrs[:20_000]  # fits the engine's decision memo
    for a in warm:
        engine.decide(None, None, a, 8801, "udp")
    decide_memo = per_call_ns(lambda a: engine.decide(None, None, a, 8801, "udp"), warm)

    print(f"regionguard locator benchmark — {n:,} addresses (Zoom ranges, AWS space, random IPv4)")
    print(f"  data loaded in {load_s * 1000:.0f} ms: {', '.join(loc.describe())}")
    print(f"  uncached lookup   median {uncached:7.0f} ns   target ≤ 1000 ns   "
          f"{'PASS' if uncached <= 1000 else 'MISS'}")
    print(f"  memoised lookup   median {memo:7.0f} ns   target ≤  100 ns   "
          f"{'PASS' if memo <= 100 else 'MISS'}")
    print(f"  decision, first time (location memoised) median {decide_first:7.0f} ns")
    print(f"  decision, memoised                       median {decide_memo:7.0f} ns")
    print("  (uncached = no per-address memo: one parse, one bisect over the merged static table, "
          "the fallback source, and the interval's precomputed conclusion)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
