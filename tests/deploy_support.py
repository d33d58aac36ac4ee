"""Test support for deploy/: run a front end's command line exactly as a service definition
(systemd unit, container image, Kubernetes manifest) gives it, on loopback, with the service's
fixed paths (/etc/regionguard, /var/lib/regionguard, /var/log/regionguard) mapped into a
temporary directory, and check that it serves with its policy in force."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx

from regionguard.mitm.run import stop
from tests.dns_support import BIN, ZoneServer, addresses, ask
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SERVICE_PATHS = ("/etc/regionguard", "/var/lib/regionguard", "/var/log/regionguard")
# A real Zoom address that Zoom's own data places in China: outside every policy shipped here.
CN_ZOOM_ADDRESS = "221.122.88.195"
STARTUP_TIMEOUT = 60.0


def map_paths(argv: list[str], tmp: Path, policy: Path) -> list[str]:
    """argv with the service paths moved under tmp; the policy the service would read is
    `policy` copied to where the service expects it."""
    roots = {p: tmp / p.strip("/").replace("/", "-") for p in SERVICE_PATHS}
    for r in roots.values():
        r.mkdir(parents=True, exist_ok=True)
    shutil.copy(policy, roots["/etc/regionguard"] / "policy.yaml")
    out = []
    for arg in argv:
        for fixed, local in roots.items():
            arg = arg.replace(fixed, str(local))
        out.append(arg)
    return out


def option_values(argv: list[str], name: str) -> list[str]:
    """Every value of option `name` in argv, as `--name VALUE` or `--name=VALUE`."""
    values = []
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(name + "="):
            values.append(arg.split("=", 1)[1])
    return values


def replace_option(argv: list[str], name: str, value: str) -> list[str]:
    """argv with every value of option `name` replaced (the option must be there)."""
    assert option_values(argv, name), f"{name} is not in {argv}"
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == name:
            out[i + 1] = value
        elif arg.startswith(name + "="):
            out[i] = f"{name}={value}"
    return out


def _check_health(argv: list[str]) -> None:
    """When the arguments serve metrics (`--metrics HOST:PORT`), /healthz and /readyz answer 200
    there: the probes the manifests and units point at really answer."""
    (metrics,) = option_values(argv, "--metrics") or [None]
    if metrics is None:
        return
    base = f"http://{metrics}"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:   # bounded: the listener may come up just after the log line
        try:
            ready = httpx.get(base + "/readyz", timeout=2)
            if ready.status_code == 200 or time.monotonic() > deadline:
                break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)
    assert ready.status_code == 200, ready.text
    assert httpx.get(base + "/healthz", timeout=2).status_code == 200
    assert "regionguard_decisions_total" in httpx.get(base + "/metrics", timeout=2).text


def _wait_output(proc: subprocess.Popen, log: Path, text: str) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        out = log.read_text(errors="replace")
        if text in out:
            return out
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    stop(proc)
    raise AssertionError(f"no {text!r} from {proc.args}:\n{log.read_text(errors='replace')}")


def check_dns_serves(argv: list[str], tmp: Path, policy: Path) -> None:
    """`regionguard dns` with a service's arguments (after `regionguard`) answers on loopback:
    a name that is not Zoom's is relayed, a Zoom name whose address the policy does not allow
    is answered without it."""
    assert argv[0] == "dns", argv
    port = free_port()
    local = replace_option(map_paths(argv, tmp, policy), "--listen", f"127.0.0.1:{port}")
    upstream = ZoneServer()
    upstream.answer = _answers_with_cn_address
    log = tmp / "dns.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "regionguard"), *local, "--upstream", upstream.address],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_output(proc, log, f"listening on 127.0.0.1:{port}")
        assert addresses(ask(port, "www.example.org")) == {"192.0.2.80"}
        assert CN_ZOOM_ADDRESS not in addresses(ask(port, "cn-test.zoom.us"))
        _check_health(local)
        assert proc.poll() is None
    finally:
        stop(proc)
        upstream.close()


def _answers_with_cn_address(query, transport):
    """The test zone, but cn-test.zoom.us is in China (a real Zoom address)."""
    import dns.message
    import dns.rrset

    from tests.dns_support import zone_answer
    name = query.question[0].name.to_text().lower()
    if name != "cn-test.zoom.us.":
        return zone_answer(query).to_wire()
    reply = dns.message.make_response(query)
    if query.question[0].rdtype == dns.rdatatype.A:
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "A", CN_ZOOM_ADDRESS))
    return reply.to_wire()


def check_proxy_serves(argv: list[str], tmp: Path, policy: Path) -> None:
    """`regionguard run` with a service's arguments (after `regionguard`) serves on loopback: its
    PAC file, and a 403 for a Zoom address in a region the policy does not allow (decided before
    any connection to it is made, so nothing leaves the machine)."""
    assert argv[0] == "run", argv
    port = free_port()
    local = map_paths(argv, tmp, policy)
    local = replace_option(local, "--listen-host", "127.0.0.1")
    local = replace_option(local, "--listen-port", str(port))
    log = tmp / "proxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "regionguard"), *local], stdout=out, stderr=subprocess.STDOUT,
                                cwd=tmp)
    try:
        _wait_output(proc, log, f"listening at 127.0.0.1:{port}")
        pac = httpx.get(f"http://127.0.0.1:{port}/proxy.pac", timeout=30)
        assert pac.status_code == 200 and "FindProxyForURL" in pac.text
        with httpx.Client(proxy=f"http://127.0.0.1:{port}", timeout=30) as client:
            blocked = client.get(f"http://{CN_ZOOM_ADDRESS}/")
        assert blocked.status_code == 403, blocked.text
        assert blocked.headers["X-Regionguard-Region"] == "CN"
        _check_health(local)
        assert proc.poll() is None
    finally:
        stop(proc)
