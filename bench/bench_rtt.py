"""RTT evidence: what it costs on the hot path and on first contact, side by side in one run.

Goals (issue #10): a decision with RTT evidence costs no more than a memoised lookup on the hot
path; probing adds at most one round trip, and only on first contact.

1. Hot path: Engine.decide, memoised, for addresses placed by a measurement (evidence.rtt:
   passive) beside the same addresses placed by an override with RTT evidence off.
2. First contact under evidence.rtt: probe: Enforcer.verdict for addresses never seen (each
   probed once: a TCP connect to 127.0.0.x, answered by the loopback's RST), beside the same
   under rtt: off, beside one bare connect; then the second contact.
3. The one-off cost behind a new measurement: physics over the site table (once per new
   minimum, never per decision).

Loopback only. Run: .venv/bin/python bench/bench_rtt.py [--n 200000] [--first 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_lookup import per_call_ns  # noqa: E402 - the same timing as the lookup bench

from regionguard import Engine, parse_policy  # noqa: E402
from regionguard.core.physics import ClientSite, Reach, constrain, zoom_sites  # noqa: E402
from regionguard.core.rtt import RttStore  # noqa: E402
from regionguard.mitm.enforce import Enforcer  # noqa: E402
from regionguard.probe.tcp import Prober, connect_rtt  # noqa: E402

FRANKFURT = ClientSite("Frankfurt", 50.11, 8.68)
POLICY = """
version: 1
account: {type: paid, default_region: US}
client: {site: {lat: 50.11, lon: 8.68}}
regions: {opt_in: [US, DE]}
evidence: {rtt: RTT}
overrides: [{match: 127.0.0.0/8, zoom: true}OVERRIDE]
"""


def policy(rtt: str, placed: str | None = None):
    """`placed`: a prefix an override puts in DE (the same answer RTT evidence gives)."""
    extra = f", {{match: {placed}, region: DE, zoom: true}}" if placed else ""
    return parse_policy(POLICY.replace("RTT", rtt).replace("OVERRIDE", extra))


def addresses(n: int, base: int) -> list[str]:
    return [f"127.{base + i // 65536 % 64}.{i // 256 % 256}.{i % 256}" for i in range(n)]


def hot_path(n: int, distinct: int) -> None:
    targets = addresses(distinct, 64)
    with_rtt = Engine(policy("passive"), rtt=RttStore.in_memory())
    for a in targets:
        with_rtt.observe_rtt(None, a, 0.5, "passive")
    without = Engine(policy("off", "127.64.0.0/10"))
    stream = [targets[i % distinct] for i in range(n)]
    for e in (with_rtt, without):
        for a in targets:       # warm the memos
            d = e.decide(None, None, a, 8801)
        assert d.region == "DE", d.reason
    assert with_rtt.decide(None, None, targets[0], 8801).evidence_source == "rtt"
    assert without.decide(None, None, targets[0], 8801).evidence_source == "override"
    # alternate the two, three rounds: the same machine moment for both
    rtt_ns, plain_ns = [], []
    for _ in range(3):
        rtt_ns.append(per_call_ns(lambda a: with_rtt.decide(None, None, a, 8801), stream))
        plain_ns.append(per_call_ns(lambda a: without.decide(None, None, a, 8801), stream))
    r, p = min(rtt_ns), min(plain_ns)
    print(f"hot path, memoised Engine.decide over {distinct} addresses, {n} decisions:")
    print(f"  placed by RTT evidence (rtt: passive)  {r:8.0f} ns/decision")
    print(f"  placed by an override  (rtt: off)      {p:8.0f} ns/decision")
    print(f"  ratio RTT/override                     {r / p:8.2f}")


async def first_contact(count: int) -> None:
    loop_targets = addresses(count, 0)[1:]     # 127.0.0.1 upward: no listener, RST answers
    bare = [(await connect_rtt(a, 8801)).rtt_ms for a in loop_targets]
    probing = Engine(policy("probe"), rtt=RttStore.in_memory())
    prober = Prober()
    enforce_probe = Enforcer(probing, prober=prober)
    enforce_off = Enforcer(Engine(policy("off", "127.0.0.0/10")))   # the same answer, no probe

    async def timed(enforcer: Enforcer, a: str) -> float:
        t0 = time.perf_counter()
        await enforcer.verdict("127.0.0.1", None, a, 8801)
        return (time.perf_counter() - t0) * 1e6

    first = [await timed(enforce_probe, a) for a in loop_targets]
    sent_after_first = prober.sent
    again = [await timed(enforce_probe, a) for a in loop_targets]
    steady = [await timed(enforce_probe, a) for a in loop_targets]
    off = [await timed(enforce_off, a) for a in loop_targets]
    off_steady = [await timed(enforce_off, a) for a in loop_targets]
    print(f"first contact, Enforcer.verdict for {len(loop_targets)} unplaced loopback addresses "
          "(median µs):")
    print(f"  rtt: probe, first contact        {statistics.median(first):8.1f} µs "
          f"({sent_after_first} probes for {len(loop_targets)} addresses)")
    print(f"  rtt: probe, second contact       {statistics.median(again):8.1f} µs "
          f"({prober.sent - sent_after_first} probes more; decisions made afresh once after "
          "the measurements)")
    print(f"  rtt: probe, third contact        {statistics.median(steady):8.1f} µs (memoised)")
    print(f"  rtt: off (override), first       {statistics.median(off):8.1f} µs")
    print(f"  rtt: off (override), second      {statistics.median(off_steady):8.1f} µs (memoised)")
    print(f"  one bare TCP connect (the probe) {statistics.median(bare) * 1000:8.1f} µs")
    extra = statistics.median(first) - statistics.median(off)
    print(f"  first-contact cost over rtt: off {extra:8.1f} µs = "
          f"{extra / (statistics.median(bare) * 1000):.2f} × one connect")


def physics_once(rounds: int) -> None:
    sites = zoom_sites()
    t0 = time.perf_counter()
    reach = Reach(FRANKFURT, sites)
    build = (time.perf_counter() - t0) * 1e6
    t0 = time.perf_counter()
    for i in range(rounds):
        constrain(FRANKFURT, 0.5 + i % 150, reach)
    per = (time.perf_counter() - t0) / rounds * 1e6
    print(f"physics: the site table seen from one client site ({len(sites)} sites), once per "
          f"site and policy load: {build:.0f} µs; then per new minimum RTT: {per:.1f} µs")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="decisions per hot-path measurement")
    ap.add_argument("--distinct", type=int, default=1000, help="addresses on the hot path")
    ap.add_argument("--first", type=int, default=200, help="first contacts probed (≤ 2000)")
    a = ap.parse_args()
    hot_path(min(a.n, 2_000_000), max(1, min(a.distinct, 100_000)))
    with tempfile.TemporaryDirectory():
        asyncio.run(first_contact(max(2, min(a.first, 2000))))
    physics_once(200)
    return 0


if __name__ == "__main__":
    sys.exit(main())
