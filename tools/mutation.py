"""Mutation check of the fail-closed core (issue 18): how many deliberately broken versions of
regionguard/core/decision.py, dns/filter.py and mitm/enforce.py the in-process tests notice.

    python tools/mutation.py                 # run (bounded by --minutes), then print the table
    python tools/mutation.py --report        # print the table of the last run only
    python tools/mutation.py --survivors     # also list the surviving mutants (`mutmut show NAME`)
    python tools/mutation.py --only 'regionguard.mitm.enforce.*'   # check only these mutants again

mutmut (the `test` extra) does the work; [tool.mutmut] in pyproject.toml says which modules it
breaks and which tests judge them. The sources are mutated, so the run sets
REGIONGUARD_COMPILED=off: a mypyc-compiled copy would shadow every mutant. Results are cached
in mutants/ (git-ignored): a second run only checks what changed. Delete mutants/ for a clean one.

"Killed" counts mutants a test failed on or that ran past mutmut's timeout (a mutant that makes
the code loop is caught too); "survived" and "no tests" are the ones no test notices; "not
checked" is what the time bound left for the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = ("regionguard/core/decision.py", "regionguard/dns/filter.py", "regionguard/mitm/enforce.py")
# mutmut's exit codes (mutmut/stats.py), folded into what the table says.
KILLED, SURVIVED, UNCHECKED = "killed", "survived", "not checked"
FOLD = {1: KILLED, 3: KILLED, 36: KILLED, 24: KILLED, -24: KILLED, 152: KILLED, 255: KILLED,
        0: SURVIVED, 5: SURVIVED, 33: SURVIVED, None: UNCHECKED}


def mutmut() -> str:
    found = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or shutil.which("mutmut")
    if not found:
        sys.exit("tools/mutation.py: mutmut is not installed; install the test extra "
                 "(pip install -e '.[test]', or ./dev setup)")
    return found


def run(minutes: float, children: int, only: list[str]) -> int:
    env = dict(os.environ, REGIONGUARD_COMPILED="off")
    env.pop("PYTHONPATH", None)   # mutmut puts mutants/ first; nothing may shadow it
    try:
        return subprocess.run([mutmut(), "run", "--max-children", str(children), *only], cwd=ROOT, env=env,
                              timeout=minutes * 60).returncode
    except subprocess.TimeoutExpired:
        print(f"tools/mutation.py: stopped after {minutes:g} min; run again to check the rest",
              file=sys.stderr)
        return 124


def outcomes(module: str) -> dict[str, str]:
    """mutant name -> killed / survived / not checked / other, from mutmut's record of the run."""
    meta = ROOT / "mutants" / (module + ".meta")
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
    return {name: FOLD.get(code, f"other ({code})") for name, code in codes.items()}


def report(survivors: bool) -> bool:
    print(f"{'module':28} {'mutants':>7} {'killed':>7} {'survived':>8} {'unchecked':>9} {'killed %':>8}")
    complete = True
    for module in MODULES:
        results = outcomes(module)
        count = Counter(results.values())
        checked = len(results) - count[UNCHECKED]
        share = f"{100 * count[KILLED] / checked:.1f}" if checked else "-"
        complete = complete and bool(results) and not count[UNCHECKED]
        print(f"{module:28} {len(results):7} {count[KILLED]:7} {count[SURVIVED]:8} "
              f"{count[UNCHECKED]:9} {share:>8}")
        others = {k: v for k, v in count.items() if k not in (KILLED, SURVIVED, UNCHECKED)}
        if others:
            print(f"{'':28} also: {others}")
        if survivors:
            for name, outcome in sorted(results.items()):
                if outcome == SURVIVED:
                    print(f"    {name}")
    return complete


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", action="store_true", help="only print the last run's table")
    parser.add_argument("--survivors", action="store_true", help="list the surviving mutants")
    parser.add_argument("--minutes", type=float, default=45, help="stop the run after this long")
    parser.add_argument("--children", type=int, default=2, help="mutants checked at once")
    parser.add_argument("--only", action="append", default=[], metavar="GLOB",
                        help="check only the mutants whose names match (mutmut's names)")
    args = parser.parse_args()
    if not args.report:
        run(args.minutes, args.children, args.only)
    return 0 if report(args.survivors) else 1


if __name__ == "__main__":
    sys.exit(main())
