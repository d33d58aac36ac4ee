"""The regionguard proxy in WireGuard mode as one path of a namespace bench: `regionguard run
--mode wireguard` in the gateway namespace (the addon enforcing the bench's policy) and
wireguard-go in the client namespace, set up as tests/test_proxy_netns.py does (keys from
`wg genkey`, written as the JSON key file mitmproxy reads for `--mode wireguard:FILE`).

Only traffic sent *from* the tunnel address takes the tunnel (a source rule with its own routing
table), so the client namespace keeps its kernel-forwarded path for every other side of the
bench, unchanged, and the sides can alternate round by round without touching any route.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from regionguard.mitm.run import stop  # noqa: E402
from tests.proxy_support import Proxy  # noqa: E402

WG_PORT = 51820           # the gateway namespace is the bench's own: nothing else listens there
ROUTING_TABLE = "51"      # the tunnel's table in the client namespace (made by the bench)
START_TIMEOUT = 30.0
TUNNEL_MTU = 1440


def wireguard_missing() -> str | None:
    """Why the WireGuard proxy path cannot run here, or None when it can."""
    for tool, package in (("wg", "wireguard-tools"), ("wireguard-go", "wireguard-go")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: {package})"
    if find_spec("mitmproxy") is None:
        return "mitmproxy is not installed in this Python (pip install -e .)"
    if not (Path(sys.executable).parent / "regionguard").exists():
        return f"no regionguard command next to {sys.executable} (pip install -e .)"
    return None


def _sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


def _keypair() -> tuple[str, str]:
    key = _sh("wg", "genkey").stdout.strip()
    pub = subprocess.run(["wg", "pubkey"], input=key, capture_output=True, text=True,
                         check=True, timeout=30).stdout.strip()
    return key, pub


class WireGuardPath:
    """Started by start(), torn down by stop() (safe to call after a partial start)."""

    def __init__(self, *, client_ns: str, gateway_ns: str, gateway_address: str,
                 tunnel_address: str, destinations: list[str], policy: Path, workdir: Path,
                 device: str, proxy_options: tuple[str, ...] = ()) -> None:
        self.client_ns, self.gateway_ns = client_ns, gateway_ns
        self.gateway_address, self.tunnel_address = gateway_address, tunnel_address
        self.destinations, self.policy, self.workdir = destinations, policy, workdir
        self.device, self.proxy_options = device, proxy_options
        self.proxy: Proxy | None = None
        self._wg: subprocess.Popen | None = None

    def start(self) -> None:
        server_key, server_pub = _keypair()
        client_key, _ = _keypair()
        keys = self.workdir / "wireguard.conf"
        keys.write_text(json.dumps({"server_key": server_key, "client_key": client_key}))
        keys.chmod(0o600)
        self.proxy = Proxy(self.policy, self.workdir, "--mode", f"wireguard:{keys}@{WG_PORT}",
                           *self.proxy_options,
                           listen_host=self.gateway_address,
                           prefix=("ip", "netns", "exec", self.gateway_ns))
        env = {**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
        self._wg = subprocess.Popen(["ip", "netns", "exec", self.client_ns, "wireguard-go", "-f",
                                     self.device], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while _sh("ip", "-n", self.client_ns, "link", "show", self.device,
                  check=False).returncode != 0:
            if time.monotonic() > deadline or self._wg.poll() is not None:
                raise RuntimeError("wireguard-go did not start")
            time.sleep(0.1)
        keyfile = self.workdir / "client.key"
        keyfile.write_text(client_key + "\n")
        keyfile.chmod(0o600)
        ns, dev = self.client_ns, self.device
        _sh("ip", "netns", "exec", ns, "wg", "set", dev, "private-key", str(keyfile), "peer",
            server_pub, "endpoint", f"{self.gateway_address}:{WG_PORT}", "allowed-ips",
            ",".join(f"{d}/32" for d in self.destinations))
        _sh("ip", "-n", ns, "addr", "add", f"{self.tunnel_address}/32", "dev", dev)
        # 1440: a 1500-byte veth less WireGuard's 60 bytes over IPv4. wireguard-go's default,
        # 1420, would fragment the bench's 1400-byte datagrams inside the tunnel, and
        # mitmproxy's WireGuard mode drops fragments: none would arrive
        _sh("ip", "-n", ns, "link", "set", dev, "mtu", str(TUNNEL_MTU), "up")
        _sh("ip", "-n", ns, "route", "add", "default", "dev", dev, "table", ROUTING_TABLE)
        _sh("ip", "-n", ns, "rule", "add", "from", self.tunnel_address, "table", ROUTING_TABLE)

    def audited_summary(self, destination: str) -> str:
        """One line from the proxy's audit log saying the side measured what it claims: the
        addon decided (and allowed) the tunnel's TCP and UDP flows to `destination`. Raises
        when it did not: the figures would then not be the proxy's."""
        lines = [d for d in self.proxy.decisions() if d.get("address") == destination]
        seen = {(d.get("transport"), d.get("action"), d.get("mode"), d.get("client"))
                for d in lines}
        want = {(t, "allow", "wireguard", self.tunnel_address) for t in ("tcp", "udp")}
        if not want <= seen or any(d.get("action") != "allow" for d in lines):
            raise RuntimeError(f"the proxy's audit log does not show the bench's flows allowed "
                               f"through WireGuard mode: {sorted(map(str, seen))}\n"
                               f"{self.output()[-3000:]}")
        counts = {t: sum(d.get("transport") == t for d in lines) for t in ("tcp", "udp")}
        return (f"wg proxy: regionguard run --mode wireguard in {self.gateway_ns}, client "
                f"{self.tunnel_address}; audited allow decisions to {destination}: "
                f"{counts['tcp']} tcp, {counts['udp']} udp")

    def output(self) -> str:
        return self.proxy.output() if self.proxy is not None else ""

    def stop(self) -> None:
        if self._wg is not None:
            stop(self._wg)
        if self.proxy is not None:
            self.proxy.stop()
