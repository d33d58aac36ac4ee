"""The DNS filter inside mitmproxy: a real mitmdump in reverse DNS mode in front of the test
upstream, with addons/dns_filter.py alone and with the proxy addon that includes it."""

from __future__ import annotations

import json
import os
import subprocess
import time

import dns.exception
import dns.rcode
import pytest
from dns_support import BIN, POLICY, ROOT, ZoneServer, addresses, ask

from tests.conftest import free_port


def _mitmdump(script: str, upstream: int, policy, *extra: str):
    port = free_port()
    cmd = [str(BIN / "mitmdump"), "-q", "--set", "listen_host=127.0.0.1",
           "--mode", f"reverse:dns://127.0.0.1:{upstream}@{port}",
           "-s", str(ROOT / "addons" / script), "--set", f"regionguard_policy={policy}", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:   # bounded: mitmdump needs a few seconds to start
        if proc.poll() is not None:
            raise RuntimeError("mitmdump exited:\n" + proc.stdout.read())
        try:
            ask(port, "www.example.org", timeout=1)
            return proc, port
        except (dns.exception.Timeout, OSError):
            continue
    proc.kill()
    raise RuntimeError("mitmdump did not answer DNS")


def _stop(proc) -> str:
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=15)
    return out or ""


@pytest.fixture
def zone():
    z = ZoneServer()
    yield z
    z.close()


@pytest.mark.parametrize("script", ["dns_filter.py", "regionguard_addon.py"])
def test_mitmproxy_dns_flows_are_filtered(tmp_path, zone, script):
    policy = tmp_path / "policy.yaml"
    # the addon resolves a reroute's alternative with the policy's resolver: the test upstream
    policy.write_text(POLICY + f'resolver: {{nameservers: ["127.0.0.1:{zone.port}"]}}\n')
    audit = tmp_path / "audit.jsonl"
    extra = ("--set", f"regionguard_audit={audit}") if script == "regionguard_addon.py" else ()
    proc, port = _mitmdump(script, zone.port, policy, *extra)
    try:
        assert addresses(ask(port, "multi.zoom.us")) == {"198.51.100.11"}
        assert addresses(ask(port, "multi.zoom.us", source="127.0.0.2")) == {"198.51.100.11", "203.0.113.11"}
        blocked = ask(port, "us.zoom.us")
        assert blocked.rcode() == dns.rcode.NXDOMAIN and not blocked.answer
        assert addresses(ask(port, "us.zoom.us", source="127.0.0.4")) == {"198.51.100.10"}   # reroute
        # the alternative is asked with the type asked, so AAAA gets AAAA
        assert addresses(ask(port, "us.zoom.us", "AAAA", source="127.0.0.4")) == {"2001:db8:de::10"}
        assert addresses(ask(port, "www.example.org")) == {"192.0.2.80"}
    finally:
        out = _stop(proc)
    assert "Traceback" not in out, out
    if script == "regionguard_addon.py":
        lines = [json.loads(x) for x in audit.read_text().splitlines()]
        dns_lines = [x for x in lines if x.get("front_end") == "dns"]
        assert any(x["dns_qname"] == "us.zoom.us" and x["action"] == "block" and x["client"] == "127.0.0.1"
                   for x in dns_lines), lines


@pytest.mark.parametrize("script", ["dns_filter.py", "regionguard_addon.py"])
def test_policy_declared_zoom_name_is_filtered_in_mitmproxy(tmp_path, zone, script):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("overrides:\n", "overrides:\n  - {match: www.example.org, "
                                     "region: US, zoom: true}\n", 1))
    proc, port = _mitmdump(script, zone.port, policy)
    try:
        blocked = ask(port, "www.example.org")
        assert blocked.rcode() == dns.rcode.NXDOMAIN and not blocked.answer
    finally:
        _stop(proc)


def test_unusable_policy_refuses_zoom_names(tmp_path, zone):
    policy = tmp_path / "broken.yaml"
    policy.write_text("version: 1\naccount: {type: paid}\n")
    proc, port = _mitmdump("dns_filter.py", zone.port, policy)
    try:
        assert ask(port, "de.zoom.us").rcode() == dns.rcode.REFUSED
        # not a Zoom name, but its chain leads into Zoom's domains: refused as well
        assert ask(port, "meet.customer.example").rcode() == dns.rcode.REFUSED
        assert addresses(ask(port, "www.example.org")) == {"192.0.2.80"}
    finally:
        _stop(proc)


# Loaded first in the mitmdump process (a sitecustomize on PYTHONPATH): the package's DNS addon
# module cannot be imported, as when it is not installed or is broken.
_NO_DNS_FILTER = """
import importlib.abc, importlib.util, sys

class _Broken(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise RuntimeError("half-installed")

class _NoDnsFilter(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "regionguard.mitm.dns_filter":
            return None
        if {broken}:
            return importlib.util.spec_from_loader(name, _Broken())
        raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

sys.meta_path.insert(0, _NoDnsFilter())
"""


@pytest.mark.parametrize("dns_filter", ["missing", "broken"])
def test_without_its_dns_filter_the_proxy_refuses_dns_rather_than_relay_it(tmp_path, zone, dns_filter):
    # The package's DNS addon (regionguard.mitm.dns_filter) missing or failing to import in the
    # mitmdump process: DNS through the proxy must never be relayed unfiltered, or a CN address
    # reaches the client.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_NO_DNS_FILTER.format(broken=dns_filter == "broken"))
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    port = free_port()
    cmd = [str(BIN / "mitmdump"), "--set", "listen_host=127.0.0.1",
           "--mode", f"reverse:dns://127.0.0.1:{zone.port}@{port}",
           "-s", str(ROOT / "addons" / "regionguard_addon.py"), "--set", f"regionguard_policy={policy}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline, reply = time.monotonic() + 90, None
        while reply is None and proc.poll() is None and time.monotonic() < deadline:   # bounded
            try:
                reply = ask(port, "x.cn.zoom.us", timeout=1)
            except (dns.exception.Timeout, OSError):
                continue
        if reply is None:
            # A load error logged at start-up makes mitmdump exit: closed too, and said why.
            assert proc.wait(timeout=30) != 0, "mitmdump neither answered nor stopped"
        else:
            assert reply.rcode() == dns.rcode.REFUSED and not reply.answer
            assert ask(port, "www.example.org").rcode() == dns.rcode.REFUSED
    finally:
        out = _stop(proc)
    if reply is None:
        assert dns_filter == "broken" and "regionguard.mitm.dns_filter failed to load" in out, out
    else:
        assert "every DNS query through the proxy is refused" in out, out
