"""Time a full `regionguard data update` from a local mirror (issue 13's closing note).

    .venv/bin/python bench/bench_data_update.py [--runs 5] [--latency-ms 0]

A mirror of the upstream files made from the bundled snapshot (tests/data_mirror.py: AWS
ip-ranges.json 2.6 MB, Oracle public_ip_ranges.json 0.17 MB, Zoom's 12 range files) is served
over HTTP on 127.0.0.1; each run is the real command in a fresh process, from its start to its
exit: fetch all 14 files, check them, build zoom-ranges.csv and the cloud rows of
zoom-datacenters.csv, write and fsync the set, switch `current`. --latency-ms delays each answer
of the mirror, to see what a distant server adds (14 requests, one after another).
Prints the wall time of each run, its median, and the command's own split (fetch vs the rest).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.data_mirror import Mirror, bundled_files  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    args = ap.parse_args()
    regionguard = Path(sys.executable).parent / "regionguard"
    times = []
    # the command from this checkout, as the rest of the bench does
    path = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
    with Mirror(bundled_files(), slow_seconds=args.latency_ms / 1000) as mirror, \
            tempfile.TemporaryDirectory() as tmp:
        if args.latency_ms:
            mirror.faults = {name: "slow" for name in mirror.files}
        for i in range(args.runs):
            started = time.monotonic()
            run = subprocess.run([str(regionguard), "data", "update", "--mirror-base", mirror.base,
                                  "--data-dir", tmp, "--progress", "never"],
                                 capture_output=True, text=True, timeout=600, env=env)
            elapsed = time.monotonic() - started
            if run.returncode != 0:
                print(run.stderr, file=sys.stderr)
                return 1
            times.append(elapsed)
            print(f"run {i + 1}: {elapsed:.2f} s wall   {run.stdout.splitlines()[0]}")
    print(f"full data update from a local mirror: median {statistics.median(times):.2f} s, "
          f"min {min(times):.2f} s over {len(times)} runs (latency {args.latency_ms:g} ms/request)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
