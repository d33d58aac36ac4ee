"""Real processes for the proxy tests: origin servers on loopback addresses, a `regionguard run`
subprocess, curl. Everything binds port 0 (or a port found free at runtime) and is torn down."""

from __future__ import annotations

import contextlib
import datetime
import http.server
import ipaddress
import json
import os
import re
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from pathlib import Path

from regionguard.mitm.run import stop
from tests.conftest import BIN, ROOT
from tests.ports import free_port

STARTUP_TIMEOUT = 60.0    # a shared 2-core machine: generous, and only an upper bound
SETTLE = 1.0              # an audit log unchanged this long holds every line (4 × the flush interval)
CURL_TIMEOUT = 30


# --- the hook-level tests' lab policy ------------------------------------------------------------

# Loopback addresses the lab policy places: DE (allowed), IN (allowed only when `more` adds it),
# and a host that is not Zoom's.
LAB_DE, LAB_IN, LAB_OTHER = "127.0.1.1", "127.0.2.1", "127.0.3.1"

_LAB_POLICY = """
version: 1
account: {type: paid, default_region: US}
regions: {opt_in: [US, DE%(more)s]}
overrides:
  - {match: 127.0.1.0/24, region: DE, zoom: true}
  - {match: 127.0.2.0/24, region: IN, zoom: true}
resolver:
  nameservers: ["127.0.0.1:%(dead_port)d"]   # nothing answers: names come from `hosts` only
  timeout: 1
  hosts: {de.zoom.us: 127.0.1.1, in.zoom.us: 127.0.2.1, plain.example: 127.0.3.1}
"""


def lab_policy_text(more: str = "") -> str:
    """The lab policy, with `more` appended to its opt-in list (e.g. ", IN")."""
    return _LAB_POLICY % {"more": more, "dead_port": free_port()}


# --- certificates ---------------------------------------------------------------------------


def make_cert(directory: Path, names: list[str], addresses: list[str] = ()) -> tuple[Path, Path]:
    """A self-signed certificate for these names/addresses: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "origin-cert.pem", directory / "origin-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# --- origin servers -------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        ctx = self.server.tls_context  # type: ignore[attr-defined]
        if ctx is not None:
            self.request.settimeout(20)
            self.request = ctx.wrap_socket(self.request, server_side=True)
        super().setup()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        origin = self.server  # type: ignore[assignment]
        origin.requests.append({"path": self.path, "host": self.headers.get("Host")})
        body = json.dumps({"origin": origin.label, "host": self.headers.get("Host"),
                           "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class Origin(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """An HTTP (or HTTPS) server on one address that counts every TCP connection it accepts."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: str, port: int, tls: tuple[Path, Path] | None = None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.label = address
        self.connections = 0
        self.requests: list[dict] = []
        self.server_names: list[str | None] = []   # the TLS SNI of each handshake
        self.tls_context = None
        if tls is not None:
            self.tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls_context.load_cert_chain(*tls)
            self.tls_context.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
        super().__init__((address, port), _Handler)
        self.port = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def get_request(self):
        conn = super().get_request()
        self.connections += 1
        return conn

    def handle_error(self, request, client_address) -> None:
        pass   # a client that gave up (e.g. a refused TLS handshake) is not a test failure

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def origins_on_one_port(addresses: list[str], tls: tuple[Path, Path] | None = None,
                        attempts: int = 20) -> dict[str, Origin]:
    """Origins on several addresses sharing one port (a name's answers differ only in address)."""
    for _ in range(attempts):
        first = Origin(addresses[0], 0, tls)
        started = {addresses[0]: first}
        try:
            for a in addresses[1:]:
                started[a] = Origin(a, first.port, tls)
            return started
        except OSError:
            for o in started.values():
                o.stop()
    raise RuntimeError(f"no common free port on {addresses}")


class UdpEcho:
    """A UDP echo server that counts the datagrams it receives."""

    def __init__(self, address: str, port: int = 0) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received += 1
            self.sock.sendto(b"echo:" + data, peer)

    def stop(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        self.sock.close()


# --- network namespaces --------------------------------------------------------------------


def run_in_netns(ns: str, fn, timeout: float = 120.0):
    """Call fn in a thread that has joined network namespace `ns` (setns is per thread), so
    sockets it creates live there. Returns fn's result or raises its exception."""
    result: dict = {}

    def target() -> None:
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            os.setns(fd, os.CLONE_NEWNET)
        finally:
            os.close(fd)
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"call in netns {ns} did not finish in {timeout}s")
    if "error" in result:
        raise result["error"]
    return result.get("value")


def tear_down_lab(cleanup: list, *namespaces: str) -> None:
    """Undo a namespace lab: its cleanup steps, last first (each tried whatever the others
    did), then its namespaces."""
    for fn in reversed(cleanup):
        try:
            fn()
        except Exception:  # noqa: BLE001 - tear everything down regardless
            pass
    for ns in namespaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def sh(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


# --- the proxy under test -------------------------------------------------------------------


class Proxy:
    """`regionguard run` (or mitmdump -s addons/regionguard_addon.py) as a subprocess."""

    def __init__(self, policy: Path, workdir: Path, *extra: str, audit: bool = True,
                 listen_host: str = "127.0.0.1", command: str = "run",
                 env: dict | None = None, prefix: tuple[str, ...] = (),
                 script: Path | None = None) -> None:
        self.audit = workdir / f"audit-{time.monotonic_ns()}.jsonl"
        self.log_path = workdir / f"proxy-{time.monotonic_ns()}.log"
        if command in ("run", "run-no-policy"):   # run-no-policy: the test passes it itself
            cmd = [str(BIN / "regionguard"), "run"]
            if command == "run":
                cmd += ["--policy", str(policy)]
            if audit:
                cmd += ["--audit", str(self.audit)]
        elif command == "bare":   # mitmproxy without regionguard (e.g. an upstream proxy)
            cmd = [str(BIN / "mitmdump"), "--set", "ignore_hosts=.*"]
        else:   # bare mitmdump with the addon script, as the README documents
            cmd = [str(BIN / "mitmdump"), "-s", str(script or ROOT / "addons" / "regionguard_addon.py"),
                   "--set", f"regionguard_policy={policy}"]
            if audit:
                cmd += ["--set", f"regionguard_audit={self.audit}"]
        cmd += ["--listen-host", listen_host, "--listen-port", "0",
                "--set", f"confdir={workdir / 'mitmproxy-conf'}", *extra]
        self.cmd = cmd = [*prefix, *cmd]
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=workdir, env={**os.environ, **(env or {})})
        self.host = listen_host
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            text = self.output()
            m = re.search(r"listening at (?:\*|\[?[0-9a-fA-F:.]+\]?):(\d+)", text)
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited {self.proc.returncode}:\n{text}")
            time.sleep(0.1)
        raise RuntimeError(f"proxy did not start in {STARTUP_TIMEOUT}s:\n{self.output()}")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def audit_lines(self, count: int | None = None, timeout: float = 60.0) -> list[dict]:
        """The audit log's lines. The proxy writes them from a thread, every
        regionguard_audit_flush_ms (250 ms by default), so a line may land a moment after its
        response: with `count`, wait (bounded) until there are at least that many; without,
        until the log has not changed for SETTLE seconds."""
        if count is not None:
            return self._wait_lines(lambda lines: len(lines) >= count, timeout)
        return self._settled(timeout)

    def decisions(self, count: int | None = None, timeout: float = 60.0,
                  until=None) -> list[dict]:
        """The decision lines (not events such as policy reloads), once there are at least
        `count` of them, or once `until(decisions)` holds (bounded: the caller's assertion says
        what is missing). One is needed: a log unchanged for SETTLE seconds may still lack the
        last line when its writer thread is held up on a busy machine."""
        if until is None:
            assert count is not None, "decisions() needs a count or an until"

            def until(decided: list[dict]) -> bool:
                return len(decided) >= count
        return _decisions(self._wait_lines(lambda lines: until(_decisions(lines)), timeout))

    def seen(self, fields: tuple[str, ...], expected: set[tuple], keep=lambda d: True,
             timeout: float = 60.0) -> set[tuple]:
        """The decisions (those `keep` accepts) as tuples of `fields`, once every tuple of
        `expected` is among them (bounded): the caller compares, so an extra one still shows."""
        def project(decided: list[dict]) -> set[tuple]:
            return {tuple(d[f] for f in fields) for d in decided if keep(d)}
        return project(self.decisions(until=lambda decided: expected <= project(decided),
                                      timeout=timeout))

    def _read_audit(self) -> list[dict]:
        if not self.audit.exists():
            return []
        text = self.audit.read_text()
        text = text[:text.rfind("\n") + 1]   # a batch being appended: whole lines only
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def _wait_lines(self, enough, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self._read_audit()
            if enough(lines) or time.monotonic() > deadline:
                return lines   # the caller's assertion says what is missing
            time.sleep(0.05)

    def _settled(self, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            size = self.audit.stat().st_size if self.audit.exists() else -1
            if size != last:
                last, since = size, time.monotonic()
            elif time.monotonic() - since >= SETTLE:
                break
            time.sleep(0.05)
        return self._read_audit()

    def wait_for_audit(self, predicate, timeout: float = 60.0) -> list[dict]:
        """Poll the audit log until a line satisfies predicate (bounded; no timing assumptions)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self._read_audit()
            if any(predicate(r) for r in lines):
                return lines
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited:\n{self.output()}")
            time.sleep(0.2)
        raise AssertionError(f"no matching audit line within {timeout}s: {self._read_audit()}")

    def wait_for_output(self, text: str, timeout: float = 60.0) -> str:
        """Poll the proxy's output until it contains text (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            if text in out:
                return out
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not in the proxy's output within {timeout}s:\n{self.output()}")

    def stop(self) -> None:
        stop(self.proc, timeout=15)
        self._log.close()


def _decisions(lines: list[dict]) -> list[dict]:
    return [r for r in lines if "event" not in r]


def curl(*args: str, timeout: float = CURL_TIMEOUT) -> subprocess.CompletedProcess:
    """curl with no environment proxy settings, headers in the output, bounded in time."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run(["curl", "-s", "-S", "--max-time", str(int(timeout)), "-i", *args],
                          capture_output=True, text=True, timeout=timeout + 10, env=env)


def status_of(result: subprocess.CompletedProcess) -> int | None:
    """The last HTTP status line in curl -i output (after a CONNECT's own status line)."""
    codes = re.findall(r"^HTTP/[\d.]+ (\d{3})", result.stdout, flags=re.M)
    return int(codes[-1]) if codes else None


def body_json(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.replace("\r\n", "\n").rsplit("\n\n", 1)[-1])


# --- the addons in process (mitmproxy.test.taddons) -----------------------------------------


class AddonSet:
    """One `make_addons()` set, as `regionguard run` loads it, each addon by its concern."""

    def __init__(self) -> None:
        from regionguard.mitm.addon import make_addons
        from regionguard.mitm.connections import ConnectionEnforcer
        from regionguard.mitm.gateway import GatewayAccess
        from regionguard.mitm.pac_server import PacServer
        from regionguard.mitm.policy_loader import PolicyLoader
        from regionguard.mitm.tls_passthrough import TlsPassthrough

        self.all = make_addons()
        by_type = {type(a): a for a in self.all}
        self.policy: PolicyLoader = by_type[PolicyLoader]
        self.gateway: GatewayAccess = by_type[GatewayAccess]
        self.tls: TlsPassthrough = by_type[TlsPassthrough]
        self.pac: PacServer = by_type[PacServer]
        self.connections: ConnectionEnforcer = by_type[ConnectionEnforcer]


@contextlib.contextmanager
def enforcing_addons(policy: Path, audit: Path | None = None, **options):
    """An AddonSet in a taddons master, configured with this policy (and audit log, written at
    once), enforcing; its policy addon is done() on the way out, as at mitmproxy's shutdown."""
    from mitmproxy.test import taddons

    addons = AddonSet()
    with taddons.context(*addons.all) as tctx:
        extra = {"regionguard_audit": str(audit), "regionguard_audit_flush_ms": 0} if audit else {}
        tctx.configure(addons.policy, regionguard_policy=str(policy), **{**extra, **options})
        assert addons.policy.not_enforcing() is None
        try:
            yield addons, tctx
        finally:
            addons.policy.done()


def audit_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
