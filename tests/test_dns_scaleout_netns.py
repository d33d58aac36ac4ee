"""Scale-out on an existing engine (issue 13, section 4): dnsdist in front of two `regionguard dns`
replicas, in network namespaces this test creates and removes.

  client ns  veth 10.200.0.2/29 (office), 10.200.0.3/29 (us-office)
       ──  veth 10.200.0.1/29  server ns: dnsdist on 10.200.0.1:53 (roundrobin, health checks)
                                          two replicas on 127.0.0.1 (--trusted-forwarder 127.0.0.1)
                                          the upstream zone on 127.0.0.1 (tests/dns_support.py)

Checked: clients of two policy groups get their own group's answers through the balancer, the
client named by PROXY v2 (and, second variant, by EDNS Client Subnet); one replica killed under a
bounded load (2,000 queries at 200 per second): what is lost, when, and that nothing is lost once
dnsdist's health check has taken the replica out; a policy change (the file both replicas read)
reaches both. Skips, saying why, when not root or dnsdist or `ip` is missing.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import textwrap
import time
from itertools import count

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest
from dns_support import DnsProcess, ZoneServer, addresses

from regionguard.dns import proxyproto
from regionguard.mitm.run import stop
from tests.netns import netns_missing
from tests.proxy_support import run_in_netns, sh

BALANCER, OFFICE, US_OFFICE = "10.200.0.1", "10.200.0.2", "10.200.0.3"
DE, US = "198.51.100.40", "203.0.113.40"    # every *.wild.zoom.us name's A records
_seq = count()


def _missing() -> str | None:
    reason = netns_missing()
    if reason is None and subprocess.run(["which", "dnsdist"], capture_output=True).returncode:
        reason = "dnsdist is not installed (Debian: dnsdist)"
    return reason


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def policy_text(us_office: str) -> str:
    return textwrap.dedent(f"""\
        version: 1
        name: scaleout-test
        account: {{type: paid, default_region: DE}}
        regions: {{opt_in: [DE]}}
        overrides:
          - {{match: 198.51.100.0/24, region: DE, zoom: true}}
          - {{match: 203.0.113.0/24, region: US, zoom: true}}
        groups:
          - {{name: us-office, clients: [{us_office}/32], regions: {{opt_in: [US]}}}}
        gateway: {{clients: [10.200.0.0/29]}}
        """)


def dnsdist_config(ports: list[int], identity: str) -> str:
    """dnsdist passing the client on by PROXY v2 or by ECS (the full address: /32, and the
    client's own ECS overwritten, else a client could name another group itself). No packet
    cache in dnsdist: answers differ per client group, and regionguard caches per group."""
    if identity == "proxy":
        how, extra = "useProxyProtocol=true", ""
    else:
        how, extra = "useClientSubnet=true", "setECSSourcePrefixV4(32)\nsetECSOverride(true)\n"
    servers = "".join(
        f'newServer({{address="127.0.0.1:{p}", {how}, checkName="de.zoom.us.", '
        'checkInterval=1, checkTimeout=500, maxCheckFailures=1, rise=1})\n' for p in ports)
    return (f'setLocal("{BALANCER}:53")\nsetACL({{"10.200.0.0/29"}})\n{extra}{servers}'
            "setServerPolicy(roundrobin)\n")


class Lab:
    """The namespaces, the upstream zone, two replicas and dnsdist; torn down by close()."""

    def __init__(self, tmp_path, identity: str) -> None:
        n = f"{os.getpid() % 10000}{next(_seq)}"
        self.server_ns, self.client_ns = f"rgx-s{n}", f"rgx-c{n}"
        self.tmp = tmp_path
        self.things: list = []
        sh("ip", "netns", "add", self.server_ns)
        sh("ip", "netns", "add", self.client_ns)
        sh("ip", "link", "add", f"rgxs{n}", "netns", self.server_ns, "type", "veth",
           "peer", "name", f"rgxc{n}", "netns", self.client_ns)
        sh("ip", "-n", self.server_ns, "addr", "add", f"{BALANCER}/29", "dev", f"rgxs{n}")
        for a in (OFFICE, US_OFFICE):
            sh("ip", "-n", self.client_ns, "addr", "add", f"{a}/29", "dev", f"rgxc{n}")
        for ns, dev in ((self.server_ns, f"rgxs{n}"), (self.client_ns, f"rgxc{n}")):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        self.zone = run_in_netns(self.server_ns, ZoneServer)
        self.things.append(self.zone)
        self.policy = tmp_path / "policy.yaml"   # the one file every replica reads
        self.policy.write_text(policy_text(US_OFFICE))
        self.replicas = [self._replica(i) for i in range(2)]
        config = tmp_path / "dnsdist.conf"
        config.write_text(dnsdist_config([r.port for r in self.replicas], identity))
        self.dnsdist = subprocess.Popen(
            ["ip", "netns", "exec", self.server_ns, "dnsdist", "--supervised", "--disable-syslog",
             "-C", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while True:   # dnsdist listens, and its health checks find both replicas up
            try:
                if addresses(self.ask("ready.wild.zoom.us", OFFICE, timeout=1)) == {DE}:
                    break
            except dns.exception.Timeout:
                pass
            assert self.dnsdist.poll() is None, self.dnsdist.communicate()[0]
            assert time.monotonic() < deadline, "dnsdist did not answer within 30 s"
            time.sleep(0.2)

    def _replica(self, i: int) -> DnsProcess:
        state = self.tmp / f"state{i}"   # learned evidence: each replica its own
        replica = DnsProcess(self.policy, [self.zone.address], "--trusted-forwarder", "127.0.0.1",
                             "--state-dir", str(state),
                             prefix=("ip", "netns", "exec", self.server_ns))
        self.things.append(replica)
        return replica

    def ask(self, name: str, source: str, tcp: bool = False, timeout: float = 3.0
            ) -> dns.message.Message:
        def go() -> dns.message.Message:
            q = dns.message.make_query(name, "A")
            how = dns.query.tcp if tcp else dns.query.udp
            return how(q, BALANCER, port=53, source=source, timeout=timeout)
        return run_in_netns(self.client_ns, go, timeout=timeout + 10)

    def ask_replica(self, replica: DnsProcess, name: str, client: str) -> set[str]:
        """Straight to one replica, as dnsdist would: a PROXY v2 header naming `client`."""
        def go() -> bytes:
            q = dns.message.make_query(name, "A").to_wire()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(3)
                s.sendto(proxyproto.build(client, 1234, "127.0.0.1", 53, q),
                         ("127.0.0.1", replica.port))
                return s.recv(65535)
        return addresses(dns.message.from_wire(run_in_netns(self.server_ns, go)))

    def close(self) -> None:
        if getattr(self, "dnsdist", None) is not None:
            stop(self.dnsdist)
        for thing in reversed(self.things):
            thing.close()
        subprocess.run(["ip", "netns", "del", self.client_ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.server_ns], capture_output=True)


@pytest.fixture
def lab(tmp_path, request):
    made = Lab(tmp_path, getattr(request, "param", "proxy"))
    try:
        yield made
    finally:
        made.close()


@pytest.mark.parametrize("lab", ["proxy", "ecs"], indirect=True)
def test_each_client_gets_its_own_groups_answers_through_dnsdist(lab):
    for i in range(4):   # roundrobin: both replicas answer each client
        for tcp in (False, True):
            name = f"g{i}{'t' if tcp else 'u'}.wild.zoom.us"
            assert addresses(lab.ask(name, OFFICE, tcp)) == {DE}
            assert addresses(lab.ask(name, US_OFFICE, tcp)) == {DE, US}
    for replica in lab.replicas:   # each replica, asked as dnsdist asks: the named client's group
        assert "trusted forwarders 127.0.0.1/32" in "".join(replica.log)
        assert lab.ask_replica(replica, "r.wild.zoom.us", OFFICE) == {DE}
        assert lab.ask_replica(replica, "r.wild.zoom.us", US_OFFICE) == {DE, US}


def test_a_policy_change_reaches_both_replicas(lab):
    assert addresses(lab.ask("p.wild.zoom.us", OFFICE)) == {DE}
    lab.policy.write_text(policy_text(OFFICE))   # the offices swap groups
    deadline = time.monotonic() + 30
    while not all(lab.ask_replica(r, "p.wild.zoom.us", OFFICE) == {DE, US} for r in lab.replicas):
        assert time.monotonic() < deadline, "a replica did not reload the policy in 30 s"
        time.sleep(0.5)
    for i in range(4):   # through the balancer, roundrobin over both
        assert addresses(lab.ask(f"p{i}.wild.zoom.us", OFFICE)) == {DE, US}
        assert addresses(lab.ask(f"p{i}.wild.zoom.us", US_OFFICE)) == {DE}


TOTAL, RATE, KILL_AT, WAIT = 2000, 200.0, 3.0, 2.0


def run_load(kill) -> list[tuple[float, str]]:
    """TOTAL queries at RATE per second from the two offices in turn, each for a name of its own
    (so every one is a miss that goes upstream); `kill()` is called KILL_AT seconds in. For each
    query: (seconds after the kill it was sent, outcome): ok, lost (no answer within WAIT s),
    an rcode's name, or wrong (another group's answer)."""
    socks = {}
    for source in (OFFICE, US_OFFICE):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((source, 0))
        s.setblocking(False)
        socks[s] = source
    by_source = {v: k for k, v in socks.items()}
    sent: dict[int, tuple[float, str]] = {}
    outcome: dict[int, str] = {}
    start = time.monotonic()
    killed_at = None
    try:
        i = 0
        while True:
            now = time.monotonic()
            if killed_at is None and now - start >= KILL_AT:
                kill()
                killed_at = time.monotonic()
            if i < TOTAL and now >= start + i / RATE:
                source = (OFFICE, US_OFFICE)[i % 2]
                q = dns.message.make_query(f"load{i}.wild.zoom.us", "A")
                q.id = i % 65536
                by_source[source].sendto(q.to_wire(), (BALANCER, 53))
                sent[i] = (now, source)
                i += 1
                continue
            if i >= TOTAL and (now > sent[TOTAL - 1][0] + WAIT or len(outcome) == TOTAL):
                break
            due = start + i / RATE if i < TOTAL else now + 0.05
            ready, _, _ = select.select(list(socks), [], [], max(0.0, min(due - now, 0.05)))
            for s in ready:
                while True:
                    try:
                        data = s.recv(65535)
                    except BlockingIOError:
                        break
                    reply = dns.message.from_wire(data)
                    n = reply.id
                    if n not in sent or n in outcome or time.monotonic() - sent[n][0] > WAIT:
                        continue
                    if reply.rcode() != dns.rcode.NOERROR:
                        outcome[n] = dns.rcode.to_text(reply.rcode())
                        continue
                    want = {DE, US} if sent[n][1] == US_OFFICE else {DE}
                    outcome[n] = "ok" if addresses(reply) == want else "wrong"
    finally:
        for s in socks:
            s.close()
    assert killed_at is not None
    return [(sent[n][0] - killed_at, outcome.get(n, "lost")) for n in range(TOTAL)]


def test_one_replica_killed_under_load(lab):
    victim = lab.replicas[0]
    results = run_in_netns(lab.client_ns, lambda: run_load(victim.proc.kill), timeout=60)
    failed = [(t, what) for t, what in results if what != "ok"]
    answered = len(results) - len(failed)
    recovered = max((t for t, _ in failed), default=0.0)
    kinds = sorted({what for _, what in failed})
    print(f"\ndnsdist failover: {TOTAL} queries at {RATE:.0f}/s, replica killed at "
          f"{KILL_AT:.0f} s: answered {answered}, failed {len(failed)} {kinds}, "
          f"last failure {recovered:.2f} s after the kill, none after")
    # a query sent just before the kill may be in the dying replica's hands: only those sent
    # well before it (0.5 s: far beyond a loopback answer's time) must all have been answered
    assert not [t for t, _ in failed if t < -0.5], f"failures before the kill: {failed[:5]}"
    assert "wrong" not in kinds, "a client got another group's answer"
    assert len(failed) <= 0.15 * TOTAL, f"{len(failed)} of {TOTAL} failed"
    assert recovered < 5.0, f"still failing {recovered:.2f} s after the kill"
    later = [r for r in results if r[0] > recovered]
    assert len(later) >= 500 and all(what == "ok" for _, what in later)
    # the survivor answers for both groups
    assert addresses(lab.ask("after.wild.zoom.us", US_OFFICE)) == {DE, US}
    assert addresses(lab.ask("after.wild.zoom.us", OFFICE)) == {DE}
