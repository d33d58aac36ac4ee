"""Running `nft`: load, check, delete and read table inet regionguard. The I/O half of the
compiler (regionguard/nft/ruleset.py builds the JSON; this module only hands it to nft).

Every change is one `nft -j -f -` run, hence one kernel transaction: the table is replaced, or
its elements updated, whole or not at all. Nothing here names another table.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from regionguard.nft.ruleset import FAMILY, TABLE

DEBIAN_PACKAGE = "nftables"
TIMEOUT = 120.0          # seconds: loading the full data set takes about one


class NftError(Exception):
    """nft could not be run, or refused the ruleset. The message says why and what to do."""


CAP_NET_ADMIN = 12       # linux/capability.h


def may_change_rules() -> bool:
    """Does this process hold CAP_NET_ADMIN (root has it, unless it was dropped)? Read from
    /proc/self/status; where that cannot be read, being root is taken to be enough."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def need_root(what: str) -> None:
    """Raise NftError unless this process may change the kernel's rules."""
    if not may_change_rules():
        raise NftError(f"{what} needs root (CAP_NET_ADMIN): run it as root, e.g. with sudo; "
                       "`regionguard nft --print` shows the ruleset without root")


def nft_binary() -> str:
    found = shutil.which("nft")
    if found is None:
        raise NftError(f"the nft program is not installed: install the Debian package "
                       f"{DEBIAN_PACKAGE} (apt-get install {DEBIAN_PACKAGE})")
    return found


def run_batch(document: dict, *, check_only: bool = False, netns: str | None = None) -> None:
    """Give nft one JSON batch (one transaction). `check_only`: nft -c, nothing changes.
    `netns`: run inside that network namespace (tests, benchmarks)."""
    command = [nft_binary(), "-j", *(["-c"] if check_only else []), "-f", "-"]
    result = _run(command, json.dumps(document), netns)
    if result.returncode != 0:
        raise NftError(f"nft refused the ruleset ({'check' if check_only else 'load'}; "
                       f"nothing was changed): {_first_lines(result.stderr)}")


def delete_table(*, netns: str | None = None) -> None:
    """Remove table inet regionguard, if there is one (created first, so that deleting never
    fails for want of it: one transaction either way)."""
    table = {"family": FAMILY, "name": TABLE}
    run_batch({"nftables": [{"add": {"table": table}}, {"delete": {"table": table}}]},
              netns=netns)


def list_table(*, netns: str | None = None) -> dict | None:
    """nft's JSON listing of table inet regionguard, terse (no set elements: its counters are
    what is read); None when there is none."""
    result = _run([nft_binary(), "-j", "-t", "list", "table", FAMILY, TABLE], None, netns)
    if result.returncode != 0:
        if "No such file" in result.stderr:
            return None
        raise NftError(f"nft cannot list table {FAMILY} {TABLE}: {_first_lines(result.stderr)}")
    return json.loads(result.stdout)


def counters(listing: dict | None) -> dict[str, tuple[int, int]]:
    """Rule comment → (packets, bytes) of the rule's counter, summed over rules that share a
    comment, from a list_table() listing."""
    out: dict[str, tuple[int, int]] = {}
    for item in (listing or {}).get("nftables", ()):
        rule = item.get("rule")
        if not rule:
            continue
        for expr in rule.get("expr", ()):
            counter = expr.get("counter") if isinstance(expr, dict) else None
            if isinstance(counter, dict):
                name = str(rule.get("comment", rule.get("handle")))
                p, b = out.get(name, (0, 0))
                out[name] = (p + int(counter.get("packets", 0)), b + int(counter.get("bytes", 0)))
    return out


def _run(command: list[str], stdin: str | None, netns: str | None) -> subprocess.CompletedProcess:
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]
    try:
        return subprocess.run(command, input=stdin, capture_output=True, text=True,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise NftError(f"nft did not finish within {TIMEOUT:g} s") from e
    except OSError as e:
        raise NftError(f"cannot run {command[0]}: {e}") from e


def _first_lines(text: str, n: int = 8) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    shown = "\n  ".join(lines[:n])
    return shown + (f"\n  … and {len(lines) - n} more lines" if len(lines) > n else "")


__all__ = ["DEBIAN_PACKAGE", "NftError", "counters", "delete_table",
                      "list_table", "may_change_rules", "need_root", "nft_binary", "run_batch"]
