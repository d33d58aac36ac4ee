"""Can this machine host the tests' own network namespaces? One probe for every test module
that builds a lab of namespaces and veth pairs (gateways, DNS access control, captures)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

# Debian package of each tool a lab may need, for the skip reason.
_PACKAGES = {"ip": "iproute2", "nft": "nftables", "curl": "curl", "wg": "wireguard-tools",
             "wireguard-go": "wireguard-go", "tcpdump": "tcpdump",
             "sipp": "sip-tester"}


@functools.cache
def _can_add_namespace() -> str | None:
    probe = f"rgprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def netns_missing(*tools: str) -> str | None:
    """Why a namespace lab cannot run here (not root, a tool missing, namespaces refused), or
    None when it can. `ip` is always needed; name the other tools the lab runs."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", *tools):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: {_PACKAGES.get(tool, tool)})"
    return _can_add_namespace()
