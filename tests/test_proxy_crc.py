"""Zoom's rule S4 in traffic: a room system's H.323 and SIP calls to a Conference Room Connector
(CRC) of a disabled region are refused by the proxy, to an allowed region's connector they pass.

Real protocol peers through `regionguard run --mode wireguard` (wireguard-go in the client's
namespace), and the TCP ones also through `--mode transparent` behind an nftables redirect: sipp (a SIP UAC calling a SIP UAS, over UDP and over TCP, port 5060) and an H.323
call set-up: a TCP connection to port 1720 carrying a Q.931 SETUP in a TPKT frame (ITU-T H.225.0
clause 7, Q.931 clause 3.1.14), read on the far side by dpkt's H.225 parser.

Topology (all inside namespaces made here):
  client ns  veth 10.204.0.2/30 ── veth 10.204.0.1/30  router ns: regionguard run (WireGuard)
  wg 10.0.0.1 ──── tunnel ────────────────────────────  lo: 10.205.1.1 (a DE connector)
                                                        lo: 10.205.2.1 (an IN connector)
  10.206.0.0/16 via the veth ── nft redirect (1720, 5060) ── regionguard run (transparent)
                                                        lo: 10.206.1.1 (DE), 10.206.2.1 (IN)
The policy opts Europe in (default region DE); overrides place the two connectors.
Skips, saying why, when not root or a tool is missing.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import textwrap
import threading
import time
from pathlib import Path

import dpkt
import pytest

from regionguard.mitm.run import stop
from tests.netns import netns_missing
from tests.proxy_support import Proxy, run_in_netns, sh, tear_down_lab

ALLOWED, DISABLED = "10.205.1.1", "10.205.2.1"     # a DE connector, an IN connector
# the same two, reached through the transparent proxy (routed over the veth, not the tunnel)
T_ALLOWED, T_DISABLED = "10.206.1.1", "10.206.2.1"
ROUTER_IP, CLIENT_IP, CLIENT_WG = "10.204.0.1", "10.204.0.2", "10.0.0.1"
MEETING = "85746382910"


def _missing() -> str | None:
    return netns_missing("wg", "wireguard-go", "sipp")


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")

POLICY = textwrap.dedent("""
    version: 1
    name: crc-test
    account: {type: paid, default_region: DE}
    regions: {opt_in: [Europe]}
    overrides:
      - {match: 10.205.1.0/24, region: DE, zoom: true, note: "a room connector in Frankfurt"}
      - {match: 10.205.2.0/24, region: IN, zoom: true, note: "a room connector in Mumbai"}
      - {match: 10.206.1.0/24, region: DE, zoom: true, note: "a room connector in Frankfurt"}
      - {match: 10.206.2.0/24, region: IN, zoom: true, note: "a room connector in Mumbai"}
""")


# --- an H.323 call set-up ---------------------------------------------------------------------


def q931_setup(called: str, call_reference: int = 0x2A01) -> bytes:
    """A Q.931 SETUP as H.225.0 sends it on TCP 1720, in a TPKT frame (RFC 1006):
    protocol discriminator 0x08, a 2-octet call reference, message type SETUP (0x05), then the
    information elements in ascending order: bearer capability (0x04: unrestricted digital
    information, circuit mode, 64 kbit/s, H.221/H.242 layer 1; the octets H.323 endpoints
    send), display (0x28) and called party number (0x70: type and plan unknown, IA5 digits:
    the meeting ID a room system dials)."""
    ies = (bytes([0x04, 0x03, 0x88, 0x93, 0xA5])
           + bytes([0x28, len("Room 4.12")]) + b"Room 4.12"
           + bytes([0x70, 1 + len(called), 0x81]) + called.encode("ascii"))
    q931 = bytes([0x08, 0x02]) + struct.pack(">H", call_reference) + bytes([0x05]) + ies
    return struct.pack(">BBH", 3, 0, 4 + len(q931)) + q931


class H323Listener:
    """A call-signalling listener on TCP 1720: parses what arrives with dpkt's H.225 parser,
    keeps each SETUP's called number, answers RELEASE COMPLETE."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, 1720))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.setups: list[str] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    data = conn.recv(4096)
                    msg = dpkt.h225.H225(data)
                except (OSError, dpkt.UnpackError):
                    continue
                if msg.type == dpkt.h225.SETUP:
                    called = next(ie for ie in msg.data if ie.type == dpkt.h225.CALLED_PARTY_NUMBER)
                    self.setups.append(called.data[1:].decode("ascii"))
                    # RELEASE COMPLETE (0x5a), call reference flag set: the answer to that call
                    ref = bytes([msg.ref_val[0] | 0x80]) + msg.ref_val[1:]
                    body = bytes([0x08, 0x02]) + ref + bytes([0x5A, 0x08, 0x02, 0x80, 0x90])
                    conn.sendall(struct.pack(">BBH", 3, 0, 4 + len(body)) + body)

    def stop(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()


def h323_call(address: str) -> bytes | None:
    """Send a SETUP to address:1720; the answer (a TPKT frame), or None when the connection was
    refused, reset, closed or left unanswered."""
    try:
        with socket.create_connection((address, 1720), timeout=5) as s:
            s.settimeout(5)
            s.sendall(q931_setup(MEETING))
            answer = s.recv(4096)
            return answer or None
    except OSError:
        return None


# --- SIP: sipp on both sides ------------------------------------------------------------------


def sipp_uas(ns: str, address: str, transport: str, workdir: Path) -> subprocess.Popen:
    log = workdir / f"uas-{address}-{transport}.log"
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, "sipp", "-sn", "uas", "-i", address, "-p", "5060",
         "-t", transport, "-mp", "6100" if transport == "u1" else "6200", "-nostdin",
         "-trace_msg", "-message_file", str(log), "-nd"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)


def sipp_call(ns: str, address: str, transport: str, workdir: Path,
              timeout: str = "8s", source: str = CLIENT_WG) -> subprocess.CompletedProcess:
    """One call from a sipp UAC (INVITE, ACK, BYE): exit 0 when the call completed."""
    return subprocess.run(
        ["ip", "netns", "exec", ns, "sipp", "-sn", "uac", f"{address}:5060", "-s", MEETING,
         "-i", source, "-t", transport, "-m", "1", "-l", "1", "-nostdin", "-nd",
         "-timeout", timeout, "-timeout_error", "-max_reconnect", "0", "-d", "100"],
        capture_output=True, text=True, timeout=30, cwd=workdir)


def messages_received(workdir: Path, address: str, transport: str) -> str:
    path = workdir / f"uas-{address}-{transport}.log"
    return path.read_text(errors="replace") if path.exists() else ""


# --- the lab ------------------------------------------------------------------------------------


def _wg_keys() -> tuple[str, str]:
    key = sh("wg", "genkey").stdout.strip()
    pub = subprocess.run(["wg", "pubkey"], input=key, capture_output=True, text=True,
                         check=True).stdout.strip()
    return key, pub


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Client and router namespaces, the connectors' peers, and regionguard in WireGuard mode."""
    tmp = tmp_path_factory.mktemp("crc")
    n = f"{os.getpid() % 100000}"
    router, client = f"rg-crcr{n}", f"rg-crcc{n}"
    sh("ip", "netns", "add", router)
    sh("ip", "netns", "add", client)
    cleanup: list = []
    try:
        sh("ip", "link", "add", f"rgcr{n}", "netns", router, "type", "veth",
           "peer", "name", f"rgcc{n}", "netns", client)
        sh("ip", "-n", router, "addr", "add", f"{ROUTER_IP}/30", "dev", f"rgcr{n}")
        sh("ip", "-n", client, "addr", "add", f"{CLIENT_IP}/30", "dev", f"rgcc{n}")
        for ns, dev in ((router, f"rgcr{n}"), (client, f"rgcc{n}")):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        connectors = (ALLOWED, DISABLED, T_ALLOWED, T_DISABLED)
        for a in connectors:
            sh("ip", "-n", router, "addr", "add", f"{a}/32", "dev", "lo")
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY)

        h323 = {a: run_in_netns(router, lambda a=a: H323Listener(a)) for a in connectors}
        cleanup += [h.stop for h in h323.values()]
        for a in connectors:
            for transport in ("u1", "t1") if a in (ALLOWED, DISABLED) else ("t1",):
                uas = sipp_uas(router, a, transport, tmp)
                cleanup.append(lambda p=uas: stop(p))

        transparent = Proxy(policy, tmp, "--mode", "transparent", listen_host=ROUTER_IP,
                            prefix=("ip", "netns", "exec", router))
        cleanup.append(transparent.stop)
        redirect = tmp / "redirect.nft"
        redirect.write_text(textwrap.dedent(f"""
            table ip rg_crc_{n} {{
                chain prerouting {{
                    type nat hook prerouting priority dstnat;
                    iifname "rgcr{n}" ip daddr 10.206.0.0/16 tcp dport {{ 1720, 5060 }} redirect to :{transparent.port}
                }}
            }}
        """))
        sh("ip", "netns", "exec", router, "nft", "-f", str(redirect))
        sh("ip", "-n", client, "route", "add", "10.206.0.0/16", "via", ROUTER_IP)

        server_key, server_pub = _wg_keys()
        client_key, _ = _wg_keys()
        conf = tmp / "wireguard.conf"
        conf.write_text(json.dumps({"server_key": server_key, "client_key": client_key}))
        proxy = Proxy(policy, tmp, "--mode", f"wireguard:{conf}@51820", listen_host=ROUTER_IP,
                      prefix=("ip", "netns", "exec", router))
        cleanup.append(proxy.stop)

        dev = f"rgwc{os.getpid() % 100000}"   # its UAPI socket (/var/run/wireguard) is not per namespace
        env = {**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
        wg = subprocess.Popen(["ip", "netns", "exec", client, "wireguard-go", "-f", dev],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        cleanup.append(lambda: stop(wg))
        deadline = time.monotonic() + 30
        while sh("ip", "-n", client, "link", "show", dev, check=False).returncode != 0:
            assert time.monotonic() < deadline and wg.poll() is None, "wireguard-go did not start"
            time.sleep(0.1)
        keyfile = tmp / "client.key"
        keyfile.write_text(client_key + "\n")
        sh("ip", "netns", "exec", client, "wg", "set", dev, "private-key", str(keyfile),
           "peer", server_pub, "endpoint", f"{ROUTER_IP}:51820", "allowed-ips", "10.205.0.0/16")
        sh("ip", "-n", client, "addr", "add", f"{CLIENT_WG}/32", "dev", dev)
        sh("ip", "-n", client, "link", "set", dev, "up")
        sh("ip", "-n", client, "route", "add", "10.205.0.0/16", "dev", dev)
        yield {"router": router, "client": client, "proxy": proxy, "h323": h323, "tmp": tmp,
               "transparent": transparent}
    finally:
        tear_down_lab(cleanup, client, router)


def test_h323_setup_reaches_an_allowed_connector_and_not_a_disabled_one(lab):
    answer = run_in_netns(lab["client"], lambda: h323_call(ALLOWED))
    assert answer is not None, lab["proxy"].output()
    reply = dpkt.h225.H225(answer)
    assert reply.type == 0x5A                      # RELEASE COMPLETE, from the connector
    assert lab["h323"][ALLOWED].setups == [MEETING]
    assert run_in_netns(lab["client"], lambda: h323_call(DISABLED)) is None
    assert lab["h323"][DISABLED].setups == []
    expected = {(ALLOWED, 1720, "allow", "crc"), (DISABLED, 1720, "block", "crc")}
    # the lab's log holds other tests' lines too
    assert lab["proxy"].seen(("address", "port", "action", "service"), expected,
                             keep=lambda d: d["port"] == 1720) == expected


@pytest.mark.parametrize("transport, proto", [("u1", "udp"), ("t1", "tcp")])
def test_a_sip_call_reaches_an_allowed_connector_and_not_a_disabled_one(lab, transport, proto):
    ok = sipp_call(lab["client"], ALLOWED, transport, lab["tmp"])
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:] + lab["proxy"].output()[-3000:]
    received = messages_received(lab["tmp"], ALLOWED, transport)
    assert f"INVITE sip:{MEETING}@{ALLOWED}:5060 SIP/2.0" in received
    assert "BYE sip:" in received
    # (over UDP a refused INVITE is met with silence: sipp gives up after its timeout)
    refused = sipp_call(lab["client"], DISABLED, transport, lab["tmp"], timeout="3s")
    assert refused.returncode != 0
    assert "INVITE sip:" not in messages_received(lab["tmp"], DISABLED, transport)
    expected = {(ALLOWED, "allow", "crc"), (DISABLED, "block", "crc")}
    # a refused call over UDP: one line or more
    assert lab["proxy"].seen(("address", "action", "service"), expected,
                             keep=lambda d: d["port"] == 5060 and d["transport"] == proto) == expected


def test_transparent_mode_relays_sip_and_h323_to_the_allowed_connector_only(lab):
    client = lab["client"]
    answer = run_in_netns(client, lambda: h323_call(T_ALLOWED))
    assert answer is not None and dpkt.h225.H225(answer).type == 0x5A, lab["transparent"].output()
    assert lab["h323"][T_ALLOWED].setups == [MEETING]
    assert run_in_netns(client, lambda: h323_call(T_DISABLED)) is None
    assert lab["h323"][T_DISABLED].setups == []
    ok = sipp_call(client, T_ALLOWED, "t1", lab["tmp"], source=CLIENT_IP)
    assert ok.returncode == 0, ok.stdout[-2000:] + lab["transparent"].output()[-3000:]
    assert f"INVITE sip:{MEETING}@{T_ALLOWED}:5060 SIP/2.0" in messages_received(lab["tmp"], T_ALLOWED, "t1")
    refused = sipp_call(client, T_DISABLED, "t1", lab["tmp"], timeout="3s", source=CLIENT_IP)
    assert refused.returncode != 0
    assert "INVITE sip:" not in messages_received(lab["tmp"], T_DISABLED, "t1")
    expected = {(a, port, action, "crc", "transparent") for a, action in
                ((T_ALLOWED, "allow"), (T_DISABLED, "block")) for port in (1720, 5060)}
    assert lab["transparent"].seen(("address", "port", "action", "service", "mode"),
                                   expected) == expected
