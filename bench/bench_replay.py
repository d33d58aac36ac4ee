"""How fast replay and report read audit logs, next to the floor of just parsing the JSON lines.

    .venv/bin/python bench/bench_replay.py [LINES]

Writes a log of LINES audit_record() lines (real Zoom addresses from the bundled table, decided
by the engine under config/examples/eu-only.yaml) to a temporary directory, then times, in one
run: json.loads of every line (the floor), `report`'s summarise(), and `replay` (which decides
every line again). Prints lines/s and each one's ratio to the floor.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from regionguard.audit.log import audit_record  # noqa: E402
from regionguard.core.decision import Engine  # noqa: E402
from regionguard.core.policy import load_policy  # noqa: E402
from regionguard.replay.replay import replay  # noqa: E402
from regionguard.report.summary import summarise  # noqa: E402

POLICY = ROOT / "config" / "examples" / "eu-only.yaml"


def make_log(path: Path, n: int) -> None:
    engine = Engine(load_policy(POLICY))
    rows = list(csv.DictReader(open(ROOT / "config/data/zoom-datacenters.csv")))
    nets = [ipaddress.ip_network(r["prefix"]) for r in rows]
    with open(path, "w") as f:
        for i in range(n):
            net = nets[(i * 7919) % len(nets)]
            address = str(net[i % net.num_addresses])
            d = engine.decide(f"10.0.{i % 50}.{i % 200}", "zoom.us" if i % 3 else None, address,
                              (443, 8801)[i % 2], ("tcp", "udp")[i % 2])
            f.write(json.dumps(audit_record(d, front_end="mitmproxy")) + "\n")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "audit.jsonl"
        make_log(log, n)
        size = log.stat().st_size

        def floor() -> None:
            with open(log, "rb") as f:
                for line in f:
                    json.loads(line)

        t_floor = timed(floor)
        t_report = timed(lambda: summarise([log]))
        t_replay = timed(lambda: replay([log], POLICY))
    print(f"audit log: {n:,} lines, {size / 1e6:.1f} MB")
    for name, t in (("json.loads floor", t_floor), ("report (summarise)", t_report),
                    ("replay (decide every line)", t_replay)):
        print(f"  {name:<28} {n / t:>10,.0f} lines/s  {t:6.2f} s  ×{t / t_floor:.2f} of floor")


if __name__ == "__main__":
    main()
