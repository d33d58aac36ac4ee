"""`regionguard nft` in the kernel: a gateway between a client and Zoom's servers, all in
network namespaces this module creates (one lab, shared by every test here).

  client ns  10.9.1.2 (default group), 10.9.2.2 (group lab), 2001:db8:9:{1,2}::2
      │ veth
  gateway ns  forwards; table inet regionguard, hook forward (`regionguard nft --apply`)
      │ veth
  server ns  answers on every address (AnyIP: a local route for 0/0 and ::/0 for what comes in
             on the veth), so a packet to any Zoom address the test names is received there,
             and never leaves the namespaces

The policy (tests/nft_support.py) places documentation prefixes by overrides: US allowed for
both groups, DE for default only, SG for lab only, one prefix of unknown region. The UDP and
TCP probes are real packets; what passes is what the server receives.
Skips, saying why, when not root or ip/nft are missing."""

from __future__ import annotations

import os
import random
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from regionguard.core.decision import Engine
from regionguard.core.learned import LearnedStore
from regionguard.core.policy import load_policy
from regionguard.nft import apply
from regionguard.nft.ruleset import compile_ruleset
from tests.netns import netns_missing
from tests.nft_support import (
    DE4,
    DE6,
    DEFAULT_CLIENT4,
    DEFAULT_CLIENT6,
    LAB_CLIENT4,
    LAB_CLIENT6,
    POLICY,
    SG4,
    SG6,
    UNKNOWN4,
    US4,
    US6,
    key_text,
)
from tests.proxy_support import run_in_netns, sh

pytestmark = pytest.mark.skipif(netns_missing("nft") is not None,
                                reason=netns_missing("nft") or "")

PORTS = (443, 80, 8801, 8810, 3478, 5060, 1720, 22, 5000, 60000)   # every port class
TCP_PORTS = (443, 8801)
METRICS_PORT = 9477          # in the gateway namespace, which has no other listener
_IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)     # linux/in.h
_IPV6_TRANSPARENT = getattr(socket, "IPV6_TRANSPARENT", 75)  # linux/in6.h


class Servers:
    """UDP sockets and TCP listeners on PORTS, IPv4 and IPv6, in the server namespace; what
    the UDP ones receive is kept, by payload."""

    def __init__(self, ns: str) -> None:
        self.udp: list[socket.socket] = []
        self.tcp: list[socket.socket] = []
        self.received: set[bytes] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()

        def open_all() -> None:
            for family, anywhere in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                for port in PORTS:
                    u = socket.socket(family, socket.SOCK_DGRAM)
                    if family == socket.AF_INET6:
                        u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                    u.bind((anywhere, port))
                    self.udp.append(u)
                for port in TCP_PORTS:
                    t = socket.socket(family, socket.SOCK_STREAM)
                    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    # transparent: its answers may come from any address (the one asked)
                    if family == socket.AF_INET6:
                        t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                        t.setsockopt(socket.IPPROTO_IPV6, _IPV6_TRANSPARENT, 1)
                    else:
                        t.setsockopt(socket.IPPROTO_IP, _IP_TRANSPARENT, 1)
                    t.bind((anywhere, port))
                    t.listen(256)
                    self.tcp.append(t)

        run_in_netns(ns, open_all)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        everything = self.udp + self.tcp
        while not self._stop.is_set():
            ready, _, _ = select.select(everything, [], [], 0.1)
            for s in ready:
                if s.type == socket.SOCK_STREAM:
                    conn, _ = s.accept()
                    conn.close()
                    continue
                while True:
                    try:
                        data = s.recv(2048, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        break
                    with self._lock:
                        self.received.add(data)

    def got(self, payload: bytes) -> bool:
        with self._lock:
            return payload in self.received

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.udp + self.tcp:
            s.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    n = f"{os.getpid() % 100000}"
    client, gateway, server = f"rgnft-c{n}", f"rgnft-g{n}", f"rgnft-s{n}"
    workdir = tmp_path_factory.mktemp("nftlab")
    policy = workdir / "policy.yaml"
    policy.write_text(POLICY)
    made: list[str] = []
    servers = None
    try:
        for ns in (client, gateway, server):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", f"rgnc{n}", "netns", client, "type", "veth", "peer", "name",
           f"rgngc{n}", "netns", gateway)
        sh("ip", "link", "add", f"rgngs{n}", "netns", gateway, "type", "veth", "peer", "name",
           f"rgns{n}", "netns", server)
        cdev, gcdev, gsdev, sdev = f"rgnc{n}", f"rgngc{n}", f"rgngs{n}", f"rgns{n}"
        for address in ("10.9.1.2/24", "10.9.2.2/24"):
            sh("ip", "-n", client, "addr", "add", address, "dev", cdev)
        for address in ("2001:db8:9:1::2/64", "2001:db8:9:2::2/64"):
            sh("ip", "-n", client, "-6", "addr", "add", address, "dev", cdev, "nodad")
        for address in ("10.9.1.1/24", "10.9.2.1/24", "10.8.0.1/30"):
            sh("ip", "-n", gateway, "addr", "add", address,
               "dev", gsdev if address.startswith("10.8.") else gcdev)
        for address, dev in (("2001:db8:9:1::1/64", gcdev), ("2001:db8:9:2::1/64", gcdev),
                             ("2001:db8:8::1/64", gsdev)):
            sh("ip", "-n", gateway, "-6", "addr", "add", address, "dev", dev, "nodad")
        sh("ip", "-n", server, "addr", "add", "10.8.0.2/30", "dev", sdev)
        sh("ip", "-n", server, "-6", "addr", "add", "2001:db8:8::2/64", "dev", sdev, "nodad")
        for ns, dev in ((client, cdev), (gateway, gcdev), (gateway, gsdev), (server, sdev)):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", client, "route", "add", "default", "via", "10.9.1.1")
        sh("ip", "-n", client, "-6", "route", "add", "default", "via", "2001:db8:9:1::1")
        sh("ip", "-n", gateway, "route", "add", "default", "via", "10.8.0.2")
        sh("ip", "-n", gateway, "-6", "route", "add", "default", "via", "2001:db8:8::2")
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            sh("ip", "netns", "exec", gateway, "sysctl", "-qw", key)
        sh("ip", "-n", server, "route", "add", "10.9.0.0/16", "via", "10.8.0.1")
        sh("ip", "-n", server, "-6", "route", "add", "2001:db8:9::/48", "via", "2001:db8:8::1")
        # AnyIP: whatever comes in on the veth is for this namespace
        for v in ("-4", "-6"):
            sh("ip", "-n", server, v, "route", "add", "local",
               "0.0.0.0/0" if v == "-4" else "::/0", "dev", "lo", "table", "100")
            sh("ip", "-n", server, v, "rule", "add", "iif", sdev, "lookup", "100", "pref", "100")
        servers = Servers(server)
        lab = {"client": client, "gateway": gateway, "server": server, "policy": policy,
               "servers": servers, "workdir": workdir}
        nft(lab, gateway, "--apply")
        yield lab
    finally:
        if servers is not None:
            servers.close()
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def nft(lab, ns: str, *args: str, policy: Path | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "regionguard", "nft",
                        "--policy", str(policy or lab["policy"]), "--state-dir", "off", *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


_token = iter(range(10**9))


def udp_probe(lab, source: str, dest: str, port: int, count: int = 1) -> list[bytes]:
    """Send `count` UDP packets from `source` (a client address) to dest:port; their payloads,
    None for each one the sender's own kernel refused (an output hook's drop: EPERM)."""
    payloads = [f"rg{next(_token)}".encode() for _ in range(count)]

    def send() -> list[bytes | None]:
        family = socket.AF_INET6 if ":" in dest else socket.AF_INET
        out: list[bytes | None] = []
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((source, 0))
            for p in payloads:
                try:
                    s.sendto(p, (dest, port))
                    out.append(p)
                except PermissionError:
                    out.append(None)
        return out

    return run_in_netns(lab["client"], send)


def received(lab, payloads: list, wait: float = 0.3) -> list[bool]:
    deadline = time.monotonic() + wait
    servers = lab["servers"]
    while time.monotonic() < deadline and not all(p and servers.got(p) for p in payloads):
        time.sleep(0.02)
    return [bool(p) and servers.got(p) for p in payloads]


def tcp_connects(lab, source: str, dest: str, port: int, timeout: float = 0.3) -> bool:
    def connect() -> bool:
        family = socket.AF_INET6 if ":" in dest else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((source, 0))
            s.settimeout(timeout)
            try:
                s.connect((dest, port))
                return True
            except OSError:
                return False

    return run_in_netns(lab["client"], connect)


def blocked_packets(ns: str) -> dict[str, int]:
    return {name: p for name, (p, _) in apply.counters(apply.list_table(netns=ns)).items()}


def passes(lab, source: str, dest: str, port: int = 8801) -> bool:
    return received(lab, udp_probe(lab, source, dest, port))[0]


def udp_verdicts(lab, probes: list[tuple[str, str, int]]) -> list[bool]:
    """Which of these (source, destination, port) UDP packets arrive: all sent, then one wait."""
    return received(lab, [udp_probe(lab, *probe)[0] for probe in probes])


# --- the gateway ------------------------------------------------------------------------------


class Watch:
    """`regionguard nft --watch ARGS` running in namespace `ns`, its standard error followed."""

    def __init__(self, ns: str, *args: str) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m",
                                      "regionguard", "nft", "--watch", "--interval", "0.2", *args],
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True).start()

    def wait_for(self, text: str) -> None:
        deadline = time.monotonic() + 60
        while not any(text in line for line in self.lines) and time.monotonic() < deadline \
                and self.proc.poll() is None:
            time.sleep(0.05)
        assert any(text in line for line in self.lines), "".join(self.lines)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def test_udp_media_and_tcp_443_to_a_disallowed_server_are_dropped_and_counted(lab):
    before = blocked_packets(lab["gateway"])
    # allowed traffic passes (US for everyone); a Zoom address of unknown region is blocked
    # (fail closed), and counted as such
    probes = {(DEFAULT_CLIENT4, SG4, 8801): False, (DEFAULT_CLIENT4, US4, 8801): True,
              (DEFAULT_CLIENT4, UNKNOWN4, 8801): False}
    assert dict(zip(probes, udp_verdicts(lab, list(probes)), strict=True)) == probes
    assert not tcp_connects(lab, DEFAULT_CLIENT4, SG4, 443)
    assert tcp_connects(lab, DEFAULT_CLIENT4, US4, 443)
    after = blocked_packets(lab["gateway"])
    name = "default_region_disallowed_v4"
    assert after[name] - before[name] >= 2      # the UDP packet and at least one SYN
    assert after["default_unknown_region_v4"] - before["default_unknown_region_v4"] == 1


def test_ipv6_the_same(lab):
    before = blocked_packets(lab["gateway"])
    probes = {(DEFAULT_CLIENT6, SG6, 8810): False, (DEFAULT_CLIENT6, US6, 8810): True}
    assert dict(zip(probes, udp_verdicts(lab, list(probes)), strict=True)) == probes
    assert not tcp_connects(lab, DEFAULT_CLIENT6, SG6, 443)
    assert tcp_connects(lab, DEFAULT_CLIENT6, US6, 443)
    after = blocked_packets(lab["gateway"])
    assert after["default_region_disallowed_v6"] - before["default_region_disallowed_v6"] >= 2


def test_two_client_groups_get_their_own_verdicts(lab):
    probes = {(DEFAULT_CLIENT4, SG4, 8801): False, (LAB_CLIENT4, SG4, 8801): True,
              (DEFAULT_CLIENT4, DE4, 8801): True, (LAB_CLIENT4, DE4, 8801): False,
              (DEFAULT_CLIENT6, SG6, 8801): False, (LAB_CLIENT6, SG6, 8801): True,
              (DEFAULT_CLIENT6, DE6, 8801): True, (LAB_CLIENT6, DE6, 8801): False}
    assert dict(zip(probes, udp_verdicts(lab, list(probes)), strict=True)) == probes
    assert tcp_connects(lab, LAB_CLIENT4, SG4, 443)
    assert blocked_packets(lab["gateway"])["lab_region_disallowed_v4"] >= 1


def test_the_kernel_agrees_with_the_engine_on_sampled_destinations(lab):
    """Real packets to addresses drawn from every set of the loaded table (and from Zoom's
    ranges at large), from both groups' clients: received exactly when Engine.decide allows."""
    engine = Engine(load_policy(lab["policy"]))
    compiled = compile_ruleset(engine)
    rng = random.Random(14)
    probes: list[tuple[str, str, int]] = []
    for s in compiled.sets:
        for _ in range(10):
            e = rng.choice(s.elements)
            ports = [p for p in PORTS if e.low <= p <= e.high and e.transport == "udp"]
            if ports:
                client = rng.choice((DEFAULT_CLIENT4, LAB_CLIENT4) if s.family == "ipv4"
                                    else (DEFAULT_CLIENT6, LAB_CLIENT6))
                probes.append((client, key_text(rng.randint(e.start, e.end)), rng.choice(ports)))
    ranges = [iv for iv in engine.zoom.ranges.intervals()]
    for _ in range(80):
        start, end, _ = rng.choice(ranges)
        client = rng.choice((DEFAULT_CLIENT4, LAB_CLIENT4) if key_text(start).count(".") == 3
                            else (DEFAULT_CLIENT6, LAB_CLIENT6))
        probes.append((client, key_text(rng.randint(start, end)), rng.choice(PORTS)))
    got = udp_verdicts(lab, probes)
    wrong = [(c, a, p, ok) for (c, a, p), ok in zip(probes, got, strict=True)
             if ok == engine.decide(c, None, a, p, "udp").blocks]
    assert len(probes) > 120
    assert not wrong, wrong[:10]


# --- reloads under traffic ----------------------------------------------------------------------


def test_watch_learns_by_element_updates_and_swaps_a_reload_atomically_under_traffic(lab):
    """`--watch` in the gateway. First a learned placement (written to the state directory, as
    `regionguard dns` would) moves the unknown-region server into DE: element updates, not a new
    table. Then DE (allowed) is taken out of the policy while sequence-numbered packets flow to a
    DE and a US server: after the swap not one DE packet passes, before it none is lost; no US
    packet is lost at all."""
    gateway = lab["gateway"]
    policy = lab["workdir"] / "watched.yaml"
    policy.write_text(POLICY)
    state = lab["workdir"] / "state"
    state.mkdir()
    watcher = subprocess.Popen(["ip", "netns", "exec", gateway, sys.executable, "-m",
                                "regionguard", "nft", "--watch", "--interval", "0.2", "--learned-every", "0",
                                "--policy", str(policy), "--state-dir", str(state),
                                "--metrics", f"127.0.0.1:{METRICS_PORT}"],
                               stderr=subprocess.PIPE, text=True)
    loads: list[float] = []
    updates: list[float] = []
    lines: list[str] = []

    def follow() -> None:
        for line in watcher.stderr:
            lines.append(line)
            if "table loaded" in line:
                loads.append(time.monotonic())
            if "element updates applied" in line:
                updates.append(time.monotonic())

    def wait_for(what: list, n: int) -> None:
        deadline = time.monotonic() + 60
        while len(what) < n and time.monotonic() < deadline and watcher.poll() is None:
            time.sleep(0.05)
        assert len(what) == n, "".join(lines)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        wait_for(loads, 1)
        probes = {(DEFAULT_CLIENT4, UNKNOWN4, 8801): False, (LAB_CLIENT4, UNKNOWN4, 8801): False}
        assert dict(zip(probes, udp_verdicts(lab, list(probes)), strict=True)) == probes
        store = LearnedStore.open(state)
        assert store.observe("zoomxx1mmr.fra.zoom.us", [UNKNOWN4], "test") == 1   # fra: DE
        store.flush()
        store.close()
        wait_for(updates, 1)
        probes = {(DEFAULT_CLIENT4, UNKNOWN4, 8801): True, (LAB_CLIENT4, UNKNOWN4, 8801): False}
        assert dict(zip(probes, udp_verdicts(lab, list(probes)), strict=True)) == probes
        assert len(loads) == 1    # no new table for it
        metrics = run_in_netns(gateway, lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).read().decode())
        assert 'regionguard_nft_loads_total{kind="elements"} 1.0' in metrics
        assert "regionguard_nft_loaded 1.0" in metrics
        blocked = [line for line in metrics.splitlines() if line.startswith(
            'regionguard_nft_blocked_packets_total{group="default",rule="unknown-region",'
            'set="default_unknown_region_v4"}')]
        assert blocked and float(blocked[0].split()[-1]) >= 1, metrics
        stop = threading.Event()
        sent: list[tuple[str, int]] = []

        def stream() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((DEFAULT_CLIENT4, 0))
                seq = 0
                while not stop.is_set() and seq < 20000:
                    for name, dest in (("de", DE4), ("us", US4)):
                        s.sendto(f"seq|{name}|{seq}".encode(), (dest, 8801))
                        sent.append((name, seq))
                    seq += 1
                    time.sleep(0.001)

        sender = threading.Thread(target=run_in_netns, args=(lab["client"], stream, 90),
                                  daemon=True)
        sender.start()
        time.sleep(0.5)
        policy.write_text(POLICY.replace("opt_in: [US, DE]", "opt_in: [US]"))
        wait_for(loads, 2)
        time.sleep(0.5)          # traffic well after the swap
        stop.set()
        sender.join(10)
        time.sleep(0.3)
    finally:
        watcher.terminate()
        watcher.wait(10)
    servers = lab["servers"]
    de = [seq for name, seq in sent if name == "de"]
    us = [seq for name, seq in sent if name == "us"]
    got_de = [seq for seq in de if servers.got(f"seq|de|{seq}".encode())]
    got_us = [seq for seq in us if servers.got(f"seq|us|{seq}".encode())]
    assert len(us) > 500
    assert got_us == us, f"{len(us) - len(got_us)} packets to the still-allowed US lost"
    # DE: a run received from the start, then none: the swap is one instant
    assert got_de and got_de == de[:len(got_de)], "a DE packet was lost before the swap"
    assert len(got_de) < len(de) - 200, "DE packets still passed well after the swap"
    assert not passes(lab, DEFAULT_CLIENT4, DE4)
    # the gateway keeps the watched policy (US only): what the tests after this one send
    # through it, to US and to no Zoom address, passes under both


# --- the workstation --------------------------------------------------------------------------


def test_a_workstation_output_hook_fails_closed_then_drops_its_own_udp_to_disallowed(lab):
    """`--watch --hook output` on the client itself, started before its policy is valid: every
    Zoom address is blocked until the policy loads; then only the disallowed ones are."""
    client = lab["client"]
    policy = lab["workdir"] / "workstation.yaml"
    policy.write_text(POLICY.replace("default_region: US", "default_region: Atlantis"))
    watch = Watch(client, "--hook", "output", "--policy", str(policy), "--state-dir", "off")
    lines, wait_for = watch.lines, watch.wait_for
    try:
        wait_for("failing closed")
        assert "Atlantis" in "".join(lines)             # the policy's problem is shown
        # Zoom's published ranges, every port (the lab servers are Zoom's only by the policy's
        # overrides, which cannot be read while it is invalid)
        assert udp_probe(lab, DEFAULT_CLIENT4, "15.220.80.1", 443) == [None]
        assert udp_probe(lab, DEFAULT_CLIENT4, "15.220.81.7", 5000) == [None]
        assert passes(lab, DEFAULT_CLIENT4, "192.0.2.1", 8801)    # not Zoom's: untouched
        policy.write_text(POLICY)
        wait_for("table loaded")
        sent = udp_probe(lab, DEFAULT_CLIENT4, SG4, 8801, count=3)
        assert sent == [None, None, None]     # the application is told: EPERM
        assert blocked_packets(client)["default_region_disallowed_v4"] == 3
        assert passes(lab, DEFAULT_CLIENT4, US4)
    finally:
        watch.stop()
        nft(lab, client, "--delete")
    assert apply.list_table(netns=client) is None
    # the gateway's table was never touched by the workstation's load and delete
    assert apply.list_table(netns=lab["gateway"]) is not None


def test_reject_answers_the_client_at_once_instead_of_leaving_it_waiting(lab):
    nft(lab, lab["gateway"], "--apply", "--verdict", "reject")

    def try_both() -> tuple[str, str]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((DEFAULT_CLIENT4, 0))
            s.settimeout(5)
            try:
                s.connect((SG4, 443))
                tcp = "connected"
            except ConnectionRefusedError:
                tcp = "refused"          # the gateway's TCP reset
            except OSError as e:
                tcp = f"other: {e}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((DEFAULT_CLIENT4, 0))
            u.connect((SG4, 8801))
            u.settimeout(5)
            u.send(b"rg-reject")
            try:
                u.recv(100)
                udp = "answered"
            except ConnectionRefusedError:
                udp = "refused"          # the gateway's ICMP port unreachable
            except OSError as e:
                udp = f"other: {e}"
        return tcp, udp

    started = time.monotonic()
    assert run_in_netns(lab["client"], try_both) == ("refused", "refused")
    assert time.monotonic() - started < 4       # told, not timed out
    assert passes(lab, DEFAULT_CLIENT4, US4)


def test_watch_follows_round_trip_measurements_by_element_updates(lab):
    """With `evidence.rtt` on, what the proxy or `regionguard probe` measures (written to the
    shared state directory) reaches the kernel as element updates: a Zoom address no other
    evidence places, 0.8 ms from the policy's Frankfurt site, is DE: it opens for the group that
    allows DE and stays shut for the one that does not."""
    from regionguard.core.physics import ClientSite
    from regionguard.core.rtt import RttStore

    gateway = lab["gateway"]
    policy = lab["workdir"] / "rtt.yaml"
    policy.write_text(POLICY.replace("version: 1\n", "version: 1\nclient: {site: {lat: 50.11, "
                                     "lon: 8.68}}\nevidence: {rtt: probe}\n", 1))
    state = lab["workdir"] / "rtt-state"
    state.mkdir()
    watch = Watch(gateway, "--learned-every", "0", "--policy", str(policy), "--state-dir",
                  str(state))
    lines, wait_for = watch.lines, watch.wait_for
    try:
        wait_for("table loaded")
        probes = [(DEFAULT_CLIENT4, UNKNOWN4, 8801), (LAB_CLIENT4, UNKNOWN4, 8801)]
        assert udp_verdicts(lab, probes) == [False, False]       # unknown region: blocked
        store = RttStore(state / "rtt.sqlite3")
        assert store.observe(ClientSite("50.11,8.68", 50.11, 8.68), UNKNOWN4, 0.8, "probe")
        store.close()
        wait_for("element updates applied")
        assert udp_verdicts(lab, probes) == [True, False]        # DE: the default group's only
        assert sum("table loaded" in line for line in lines) == 1
    finally:
        watch.stop()
