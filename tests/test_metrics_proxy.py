"""`regionguard run --metrics HOST:PORT` (issue 13, part 1): a real proxy on loopback, curl through
it, its endpoint scraped with httpx. Decisions are counted by action, rule, region, service,
scope and client group; many destinations add no series; /readyz is 503 while no proxy
listener is up; a bad --metrics or one on the proxy's port is exit 2 with the fix."""

from __future__ import annotations

import datetime
import os
import subprocess
import textwrap
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import BIN, free_port
from tests.data_mirror import dated_set
from tests.proxy_support import Proxy, curl, origins_on_one_port, status_of

DE, IN = "127.0.1.1", "127.0.2.1"

POLICY = textwrap.dedent("""
    version: 1
    name: metrics-test
    account: {type: paid, default_region: US}
    regions: {opt_in: [US, DE]}
    actions: {disallowed: block, unknown: block}
    overrides:
      - {match: 127.0.1.0/24, region: DE, zoom: true}
      - {match: 127.0.2.0/24, region: IN, zoom: true}
    groups:
      - {name: office, clients: [127.0.0.9/32], regions: {opt_in: [IN]}}
    resolver:
      nameservers: ["127.0.0.1:%d"]
      timeout: 1
      hosts: {de.zoom.us: 127.0.1.1, in.zoom.us: 127.0.2.1}
""")


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert r.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


@pytest.fixture(scope="module")
def web():
    servers = origins_on_one_port([DE, IN])
    yield servers
    for s in servers.values():
        s.stop()


@pytest.fixture
def proxy(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY % free_port())
    port = free_port()
    # the data in force: the bundled files, AWS's dated today, Zoom's ranges fetched long ago
    dated_set(tmp_path / "data", datetime.datetime.now(datetime.UTC).date().isoformat(), "2020-01-01")
    started = Proxy(policy, tmp_path, "--metrics", f"127.0.0.1:{port}",
                    env={"REGIONGUARD_DATA_DIR": str(tmp_path / "data"),
                         "REGIONGUARD_DATA_MAX_AGE_DAYS": "90"})
    started.metrics = port
    # the endpoint starts in the `running` hook, which may come a moment after "listening at"
    assert _wait(lambda: _healthy(port, started.proc), 30), started.output()
    yield started
    started.stop()


def scrape_until(port: int, name: str, at_least: float, timeout: float = 30.0) -> dict:
    """A scrape once `name` has reached `at_least` (the proxy audits from a writer thread)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if total(samples, name) >= at_least or time.monotonic() > deadline:
            return samples
        time.sleep(0.2)


def _wait(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_decisions_through_the_proxy_are_counted_with_their_labels(proxy, web):
    port = web[DE].port
    assert status_of(curl("-x", proxy.url, f"http://in.zoom.us:{port}/")) == 403
    assert status_of(curl("-x", proxy.url, f"http://de.zoom.us:{port}/")) == 200
    # a client of the `office` group, for which IN is allowed
    assert status_of(curl("--interface", "127.0.0.9", "-x", proxy.url,
                          f"http://in.zoom.us:{port}/")) == 200
    samples = scrape_until(proxy.metrics, "regionguard_audit_lines_written_total", 3)
    assert total(samples, "regionguard_audit_lines_written_total") == 3
    assert total(samples, "regionguard_decisions_total", action="block", rule="region-disallowed",
                 region="IN", group="default", scope="governed") == 1
    assert total(samples, "regionguard_decisions_total", action="allow", region="DE",
                 group="default") == 1
    assert total(samples, "regionguard_decisions_total", action="allow", region="IN",
                 group="office") == 1
    assert total(samples, "regionguard_audit_lines_dropped_total") == 0
    assert total(samples, "regionguard_policy_loaded") == 1
    assert total(samples, "regionguard_policy_reloads_total", result="ok") == 0
    assert any(n == "regionguard_policy_info" for n, _ in samples)
    assert any(n == "regionguard_dataset_age_seconds" for n, _ in samples)
    # every dataset's staleness against the threshold: Zoom's old ranges are, AWS's are not
    assert total(samples, "regionguard_dataset_stale", dataset="zoom-ranges.csv") == 1
    assert total(samples, "regionguard_dataset_stale", dataset="aws-ip-ranges.json") == 0
    assert total(samples, "regionguard_dataset_age_seconds", dataset="zoom-ranges.csv") > 5 * 365 * 86400
    assert total(samples, "regionguard_dataset_max_age_seconds") == 90 * 86400
    assert httpx.get(f"http://127.0.0.1:{proxy.metrics}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{proxy.metrics}/readyz", timeout=10).status_code == 200


def test_many_destinations_add_no_series(proxy, web):
    port = web[DE].port

    def visit(addresses):
        for a in addresses:   # closed ports on addresses nothing listens on: decided, refused
            curl("-x", proxy.url, "--max-time", "5", f"http://127.0.1.{a}:{port}/")
            curl("-x", proxy.url, "--max-time", "5", f"http://127.0.2.{a}:{port}/")

    visit(range(2, 5))
    first = scrape_until(proxy.metrics, "regionguard_decisions_total", 6)
    visit(range(5, 45))
    second = scrape_until(proxy.metrics, "regionguard_decisions_total", 86)
    assert total(first, "regionguard_decisions_total") == 6
    assert total(second, "regionguard_decisions_total") == 86
    assert set(second) == set(first)
    assert "127.0." not in " ".join(str(ls) for _, ls in second)


def test_policy_reloads_are_counted(proxy, tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(path.read_text().replace("name: metrics-test", "name: metrics-test-2"))
    assert _wait(lambda: total(scrape(proxy.metrics), "regionguard_policy_reloads_total",
                               result="ok") == 1)
    path.write_text("version: 1\nregions: {opt_in: [NOWHERE]}\n")
    assert _wait(lambda: total(scrape(proxy.metrics), "regionguard_policy_reloads_total",
                               result="failed") == 1)


def _healthy(port: int, proc: subprocess.Popen) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        assert proc.poll() is None, "the proxy exited"
        return False


def test_readyz_is_503_while_no_proxy_listener_is_up(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY % free_port())
    port = free_port()
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    # mitmproxy's `server=false`: the addons run, nothing listens
    proc = subprocess.Popen([str(BIN / "regionguard"), "run", "--policy", str(policy),
                             "--metrics", f"127.0.0.1:{port}", "--set", "server=false",
                             "--set", f"confdir={tmp_path / 'conf'}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        assert _wait(lambda: _healthy(port, proc), 60)
        r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert r.status_code == 503 and "no proxy listener" in r.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _run(*args: str, tmp_path) -> subprocess.CompletedProcess:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY % free_port())
    return subprocess.run([str(BIN / "regionguard"), "run", "--policy", str(policy), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, said", [
    (["--metrics", "localhost:x"], "--metrics: 'localhost:x' is not HOST:PORT"),
    (["--metrics", "127.0.0.1:8080"], "port 8080 is the proxy's port"),
    (["--listen-port", "18181", "--metrics", "127.0.0.1:18181"], "port 18181 is the proxy's port"),
    (["--metrics", "127.0.0.1:9000", "--set", "regionguard_metrics=127.0.0.1:9001"],
     "given twice"),
    (["--set", "regionguard_metrics=nowhere"], "regionguard_metrics: 'nowhere' is not HOST:PORT"),
    (["--dns", "127.0.0.1:18253", "--metrics", "127.0.0.1:18253"],
     "port 18253 is the DNS server's (--dns) port"),
    (["--dns-metrics", "127.0.0.1:18254"], "--dns-metrics is the DNS server's endpoint: it needs --dns"),
    (["--dns", "127.0.0.1:18253", "--metrics", "127.0.0.1:18254", "--dns-metrics",
      "127.0.0.1:18254"], "port 18254 is the proxy's metrics (--metrics) port"),
    (["--dns", "127.0.0.1:18253", "--dns-metrics", "127.0.0.1:18253"],
     "port 18253 is the DNS server's (--dns) port"),
])
def test_a_bad_metrics_option_is_exit_2_before_anything_listens(tmp_path, args, said):
    r = _run(*args, tmp_path=tmp_path)
    assert r.returncode == 2, r.stderr
    assert said in r.stderr


def test_the_addon_script_serves_metrics_too(tmp_path, web):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY % free_port())
    port = free_port()
    proxy = Proxy(policy, tmp_path, "--set", f"regionguard_metrics=127.0.0.1:{port}",
                  command="script")
    try:
        assert _wait(lambda: _healthy(port, proxy.proc), 30), proxy.output()
        assert status_of(curl("-x", proxy.url, f"http://in.zoom.us:{web[DE].port}/")) == 403
        samples = scrape_until(port, "regionguard_decisions_total", 1)
        assert total(samples, "regionguard_decisions_total", action="block", region="IN") == 1
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
    finally:
        proxy.stop()
