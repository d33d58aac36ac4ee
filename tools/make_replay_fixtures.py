"""Record the replay fixtures in tests/fixtures/replay/ by running real clients through the real
proxy: origin servers on loopback addresses, `mitmdump -w` with the regionguard addon, curl and
httpx as clients. Nothing leaves the machine: every name is answered by the policy's static
`resolver.hosts`, and every address is in 127.0.0.0/8.

    .venv/bin/python tools/make_replay_fixtures.py [--out tests/fixtures/replay]

For each session it writes NAME.mitm (mitmdump -w), NAME.har (mitmproxy's hardump export of that
file), NAME.audit.jsonl (the addon's audit log, which also holds the CONNECT passthrough flows that
mitmproxy does not save), and manifest.json: what each client asked for, so tests compare the
replay with what really happened. policy-record.yaml is the policy the proxy enforced;
policy-eu.yaml is a stricter one (Europe only) to replay against.

If the addon cannot be loaded, plain mitmdump is used with a tiny static-hosts script (no
enforcement, no audit log) and the manifest says so.
"""

from __future__ import annotations

import argparse
import datetime
import http.server
import ipaddress
import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.ports import free_port  # noqa: E402

BIN = Path(sys.executable).parent
ADDON = ROOT / "addons" / "regionguard_addon.py"
TIMEOUT = 60.0

# Where the loopback "data centers" are: the policy's overrides place them in Zoom regions.
PLACES = {
    "127.0.1.0/24": "DE",
    "127.0.5.0/24": "NL",
    "127.0.2.0/24": "US",
    "127.0.3.0/24": "IN",
    "127.0.4.0/24": "CN",
}
HOSTS = {
    "de01web.zoom.us": "127.0.1.1",
    "nl01web.zoom.us": "127.0.5.1",
    "us01web.zoom.us": "127.0.2.1",
    "in01web.zoom.us": "127.0.3.1",
    "cn01web.zoom.us": "127.0.4.1",
    "intranet.example.test": "127.0.9.1",
}
# What each session's clients do: (client tool, scheme, host, path).
SESSIONS = {
    "eu-session": [
        ("curl", "http", "de01web.zoom.us", "/wc/join/123"),
        ("curl", "http", "de01web.zoom.us", "/wc/123/start"),
        ("httpx", "http", "nl01web.zoom.us", "/signin"),
        ("curl", "http", "intranet.example.test", "/"),
        ("curl", "https", "de01web.zoom.us", "/tls"),
    ],
    "mixed-session": [
        ("curl", "http", "de01web.zoom.us", "/wc/join/456"),
        ("httpx", "http", "us01web.zoom.us", "/wc/456/start"),
        ("curl", "http", "in01web.zoom.us", "/rest/info"),
        ("curl", "http", "cn01web.zoom.us", "/"),
        ("curl", "https", "us01web.zoom.us", "/tls"),
        ("httpx", "http", "intranet.example.test", "/wiki"),
    ],
}


README = """# Replay fixtures (generated: do not edit)

Recorded by `tools/make_replay_fixtures.py` ({recorded_with}): curl and httpx through a real
`mitmdump -w` on loopback, to origin servers on 127.0.x.1 that policy overrides place in Zoom
regions (127.0.1/24 DE, 127.0.5/24 NL, 127.0.2/24 US, 127.0.3/24 IN, 127.0.4/24 CN).

- `*.mitm`: the flow files mitmdump wrote; `*.har`: mitmproxy's hardump export of them;
  `*.audit.jsonl`: the addon's audit log (also holds the HTTPS CONNECT passthrough, which
  mitmproxy does not save).
- `policy-record.yaml`: what the proxy enforced (all regions but CN); `policy-eu.yaml`: Europe only.
- `manifest.json`: what each client asked for and the status it got.
- `eu-session`: only DE/NL endpoints and a non-Zoom host; `mixed-session`: also US, IN and CN (CN
  refused by the proxy with 403).

Regenerate: `.venv/bin/python tools/make_replay_fixtures.py`
"""


def policy_text(name: str, default_region: str, regions: str) -> str:
    overrides = "\n".join(f"  - {{match: {p}, region: {r}, zoom: true, note: loopback test data center}}"
                          for p, r in PLACES.items())
    hosts = "\n".join(f"    {h}: {a}" for h, a in HOSTS.items())
    return (f"# Written by tools/make_replay_fixtures.py: loopback addresses placed in Zoom regions.\n"
            f"version: 1\nname: {name}\naccount: {{type: paid, default_region: {default_region}}}\n"
            f"{regions}client: {{location: outside-china}}\n"
            f"actions: {{disallowed: block, unknown: block}}\n"
            f"overrides:\n{overrides}\nresolver:\n  hosts:\n{hosts}\n")


# --- origin servers ---------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = json.dumps({"origin": self.server.server_address[0], "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Origin(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str, tls: ssl.SSLContext | None = None) -> None:
        super().__init__((address, 0), _Handler)
        self.tls = tls
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def get_request(self):  # type: ignore[no-untyped-def]
        sock, addr = super().get_request()
        if self.tls is not None:
            sock.settimeout(20)
            sock = self.tls.wrap_socket(sock, server_side=True)
        return sock, addr


def tls_context(directory: Path) -> ssl.SSLContext:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "regionguard fixture origin")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName([x509.DNSName(h) for h in HOSTS])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(san, critical=False).sign(key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return ctx


# --- the proxy ------------------------------------------------------------------------------------

STATIC_HOSTS_SCRIPT = """\
# Fallback when the regionguard addon cannot be loaded: answer names from a static table so
# plain mitmdump never asks DNS (loopback only). No enforcement, no audit.
import json, os
HOSTS = json.loads(os.environ["FIXTURE_HOSTS"])
def server_connect(data):
    host, port = data.server.address
    if host in HOSTS:
        data.server.address = (HOSTS[host], port)
"""


def wait_for_port(port: int, proc: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mitmdump exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"mitmdump did not listen on 127.0.0.1:{port} within {TIMEOUT}s")


def start_proxy(work: Path, flows: Path, audit: Path, policy: Path, use_addon: bool
                ) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    log = work / f"mitmdump-{flows.stem}.log"
    cmd = [str(BIN / "mitmdump"), "--listen-host", "127.0.0.1", "--listen-port", str(port),
           "-w", str(flows), "--set", "connection_strategy=lazy"]
    env = None
    if use_addon:
        cmd += ["-s", str(ADDON), "--set", f"regionguard_policy={policy}",
                "--set", f"regionguard_audit={audit}", "--set", "regionguard_audit_pass=true",
                "--set", "regionguard_reload=0"]
    else:
        script = work / "static_hosts.py"
        script.write_text(STATIC_HOSTS_SCRIPT)
        cmd += ["-s", str(script)]
        env = {"FIXTURE_HOSTS": json.dumps(HOSTS), "PATH": "/usr/bin:/bin"}
    out = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work)
    try:
        wait_for_port(port, proc, time.monotonic() + TIMEOUT)
    except RuntimeError:
        stop(proc)
        raise
    return proc, port, log


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)   # mitmdump flushes -w and the addon closes its log
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- clients ------------------------------------------------------------------------------------


def run_client(tool: str, url: str, proxy: str) -> dict:
    if tool == "curl":
        r = subprocess.run(["curl", "-sS", "-k", "--noproxy", "", "-x", proxy, "-o", "/dev/null",
                            "-w", "%{http_code}", "--max-time", "30", url],
                           capture_output=True, text=True, timeout=60)
        status = int(r.stdout.strip() or 0)
        return {"status": status, "error": r.stderr.strip() or None}
    import httpx

    try:
        with httpx.Client(proxy=proxy, trust_env=False, timeout=30, verify=False) as c:
            return {"status": c.get(url).status_code, "error": None}
    except httpx.HTTPError as e:
        return {"status": 0, "error": str(e)}


def record_session(name: str, steps: list, out: Path, work: Path, policy: Path,
                   origins: dict, use_addon: bool) -> dict:
    flows, audit = out / f"{name}.mitm", out / f"{name}.audit.jsonl"
    for f in (flows, audit):
        f.unlink(missing_ok=True)
    proc, port, log = start_proxy(work, flows, audit, policy, use_addon)
    proxy = f"http://127.0.0.1:{port}"
    done = []
    try:
        for tool, scheme, host, path in steps:
            origin = origins[(HOSTS[host], scheme)]
            url = f"{scheme}://{host}:{origin.server_address[1]}{path}"
            result = run_client(tool, url, proxy)
            done.append({"client": tool, "url": url, "host": host, "address": HOSTS[host],
                         "port": origin.server_address[1], "scheme": scheme, **result})
    finally:
        stop(proc)
    if not use_addon:
        audit.unlink(missing_ok=True)
    har = out / f"{name}.har"
    har.unlink(missing_ok=True)
    subprocess.run([str(BIN / "mitmdump"), "-n", "-r", str(flows), "--set", f"hardump={har}"],
                   check=True, capture_output=True, timeout=120, cwd=work)
    return {"requests": done, "proxy_log": log.read_text(errors="replace")[-2000:]}


def addon_works(work: Path, policy: Path) -> bool:
    if not ADDON.is_file():
        return False
    try:
        proc, _, _ = start_proxy(work, work / "probe.mitm", work / "probe.jsonl", policy, True)
    except RuntimeError as e:
        print(f"the regionguard addon does not start ({e}); recording with plain mitmdump",
              file=sys.stderr)
        return False
    stop(proc)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "replay")
    parser.add_argument("--plain", action="store_true", help="do not load the regionguard addon")
    args = parser.parse_args(argv)
    if shutil.which("curl") is None:
        print("curl is needed (apt-get install curl)", file=sys.stderr)
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    record = out / "policy-record.yaml"
    record.write_text(policy_text("fixture-record", "US", ""))
    (out / "policy-eu.yaml").write_text(
        policy_text("fixture-eu-only", "DE", "regions: {opt_in: [Europe]}\n"))
    with tempfile.TemporaryDirectory(prefix="rg-fixtures-") as tmp:
        work = Path(tmp)
        ctx = tls_context(work)
        origins = {}
        for address in sorted(set(HOSTS.values()), key=ipaddress.ip_address):
            origins[(address, "http")] = Origin(address)
            origins[(address, "https")] = Origin(address, ctx)
        try:
            use_addon = not args.plain and addon_works(work, record)
            manifest = {"recorded_with": "mitmdump + addons/regionguard_addon.py" if use_addon
                        else "plain mitmdump (static hosts script)",
                        "policy": record.name, "hosts": HOSTS, "places": PLACES, "sessions": {}}
            for name, steps in SESSIONS.items():
                session = record_session(name, steps, out, work, record, origins, use_addon)
                manifest["sessions"][name] = session["requests"]
                for r in session["requests"]:
                    print(f"{name}: {r['client']:<5} {r['url']:<50} → {r['status']}"
                          f"{'  ' + r['error'] if r['error'] else ''}")
        finally:
            for o in origins.values():
                o.shutdown()
                o.server_close()
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "README.md").write_text(README.format(recorded_with=manifest["recorded_with"]))
    print(f"fixtures written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
