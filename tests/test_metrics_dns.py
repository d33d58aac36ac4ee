"""`regionguard dns --metrics HOST:PORT` (issue 13, part 1): a real `regionguard dns` on loopback,
queried with dnspython, its endpoint scraped with httpx. The counts move with the queries; no
host name or address ever becomes a label; /healthz and /readyz say what they promise; a bad
--metrics is exit 2 with the fix."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import time

import httpx
import pytest
from dns_support import BIN, POLICY, DnsProcess, ZoneServer, addresses, ask
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from regionguard.async_reload import AsyncEngineHolder
from regionguard.core.reload import EngineHolder
from regionguard.dns.metrics import endpoint
from regionguard.dns.server import Config, DnsServer
from regionguard.metrics.address import exposure_warning, parse_metrics_address
from regionguard.metrics.common import FrontEndCollector
from tests.data_mirror import dated_set
from tests.ports import free_port

DEFAULT, DETOUR = "127.0.0.1", "127.0.0.4"


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics: (name, sorted labels) → value."""
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


@pytest.fixture
def served(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    zone = ZoneServer()
    port = free_port()
    server = DnsProcess(policy, [zone.address], "--metrics", f"127.0.0.1:{port}",
                        "--audit-flush-ms", "0", "--state-dir", "off",
                        audit=tmp_path / "audit.jsonl")
    yield server, port, policy
    server.close()
    zone.close()


def test_queries_cache_decisions_and_upstream_latency_are_counted(served):
    server, port, _ = served
    before = scrape(port)
    assert addresses(ask(server.port, "us.zoom.us", source=DEFAULT)) == set()        # blocked
    assert addresses(ask(server.port, "us.zoom.us", source=DEFAULT)) == set()        # a hit
    assert addresses(ask(server.port, "multi.zoom.us", source=DEFAULT)) == {"198.51.100.11"}
    assert addresses(ask(server.port, "www.example.org", source=DEFAULT))             # not Zoom's
    assert addresses(ask(server.port, "unknown.zoom.us", source=DEFAULT)) == set()   # unplaceable
    assert addresses(ask(server.port, "de.zoom.us", source=DEFAULT)) == {"198.51.100.10"}
    after = scrape(port)

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("regionguard_dns_queries_total") == 6
    assert moved("regionguard_dns_cache_hits_total", cache="replies") == 1
    assert moved("regionguard_dns_upstream_queries_total") == 5
    assert moved("regionguard_dns_answers_total", outcome="blocked") == 2
    assert moved("regionguard_dns_answers_total", outcome="filtered") == 1
    assert moved("regionguard_dns_answers_total", outcome="pass") == 1
    assert moved("regionguard_dns_answers_total", outcome="allowed") == 1
    assert moved("regionguard_dns_filtered_answers_total") == 3
    assert moved("regionguard_dns_upstream_latency_seconds_count") == 5
    assert moved("regionguard_dns_upstream_latency_seconds_bucket", le="+Inf") == 5
    assert 0 < moved("regionguard_dns_upstream_latency_seconds_sum") < 5
    # decisions by action, rule, region, service, scope and client group
    # us.zoom.us, and multi.zoom.us's US address (the decision that stands for its answer)
    # (multi.zoom.us answers US and IN addresses in no fixed order: the first dropped stands)
    assert moved("regionguard_decisions_total", action="block", rule="region-disallowed",
                 group="default", scope="governed") == 2
    assert moved("regionguard_decisions_total", action="block", rule="region-disallowed",
                 region="US", group="default", scope="governed") >= 1
    assert moved("regionguard_decisions_total", action="block", rule="unknown-region") == 1
    assert moved("regionguard_unknown_region_decisions_total", action="block") == 1
    assert moved("regionguard_decisions_total", action="allow", region="DE", group="default") == 1
    assert moved("regionguard_audit_lines_written_total") == 4
    assert value(after, "regionguard_audit_lines_dropped_total") == 0
    assert value(after, "regionguard_policy_loaded") == 1
    assert any(n == "regionguard_policy_info" for n, _ in after)
    sources = {dict(ls)["dataset"] for n, ls in after if n == "regionguard_dataset_age_seconds"}
    assert {"zoom-datacenters.csv", "aws-ip-ranges.json"} <= sources   # the bundled data's dates
    assert value(after, "regionguard_learned_entries", kind="addresses") >= 0
    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.text == "ready\n"
    assert httpx.get(f"http://127.0.0.1:{port}/other", timeout=10).status_code == 404


def test_every_datasets_date_age_and_staleness_is_exported(tmp_path, monkeypatch):
    """A data set in force whose Zoom ranges were fetched long ago and whose AWS file is from
    today: every dataset the start-up warning knows has a date and an age (Zoom's ranges
    too, which no locator source reads), the old one is stale and the fresh one is not, and the
    threshold is exported; the same series the warning names in the log."""
    today = datetime.datetime.now(datetime.UTC).date()
    dated_set(tmp_path / "data", today.isoformat(), "2020-01-01")
    monkeypatch.setenv("REGIONGUARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("REGIONGUARD_DATA_MAX_AGE_DAYS")   # the default threshold (conftest: 0)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    port = free_port()
    server = DnsProcess(policy, ["127.0.0.1:9"], "--metrics", f"127.0.0.1:{port}",
                        "--state-dir", "off")
    try:
        samples = scrape(port)
        log = "".join(server.log)
    finally:
        server.close()
    assert {dict(ls)["dataset"] for n, ls in samples if n == "regionguard_dataset_age_seconds"} \
        == {"zoom-datacenters.csv", "aws-ip-ranges.json", "oracle-public_ip_ranges.json",
            "zoom-ranges.csv"}
    zoom_ranges = {"source": "zoom-ranges", "dataset": "zoom-ranges.csv"}
    aws = {"source": "cloud", "dataset": "aws-ip-ranges.json"}
    assert value(samples, "regionguard_dataset_date_seconds", **zoom_ranges) == datetime.datetime(
        2020, 1, 1, tzinfo=datetime.UTC).timestamp()
    assert value(samples, "regionguard_dataset_age_seconds", **zoom_ranges) > 5 * 365 * 86400
    assert value(samples, "regionguard_dataset_stale", **zoom_ranges) == 1
    assert "zoom-ranges data is" in log                               # and the warning says so
    assert value(samples, "regionguard_dataset_age_seconds", **aws) < 86400
    assert value(samples, "regionguard_dataset_stale", **aws) == 0
    assert "aws data is" not in log
    assert value(samples, "regionguard_dataset_max_age_seconds") == 90 * 86400   # the default
    # zoom-datacenters.csv's newest row says nothing of its freshness: no staleness for it
    assert not any(n == "regionguard_dataset_stale" and dict(ls)["dataset"] == "zoom-datacenters.csv"
                   for n, ls in samples)


@pytest.mark.parametrize("max_days, stale", [("0", 0), ("36500", 0), ("1", 1)])
def test_the_staleness_threshold_comes_from_the_environment(tmp_path, monkeypatch, max_days, stale):
    """REGIONGUARD_DATA_MAX_AGE_DAYS sets the threshold the gauge reports (0: never stale)."""
    dated_set(tmp_path / "data", "2026-01-01", "2020-01-01")
    monkeypatch.setenv("REGIONGUARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("REGIONGUARD_DATA_MAX_AGE_DAYS", max_days)
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    holder = EngineHolder(policy)
    registry = CollectorRegistry()
    registry.register(FrontEndCollector(lambda: holder, lambda: None))
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in
               text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}
    assert value(samples, "regionguard_dataset_max_age_seconds") == float(max_days) * 86400
    assert value(samples, "regionguard_dataset_stale", source="zoom-ranges",
                 dataset="zoom-ranges.csv") == stale


def test_reroutes_and_client_groups_are_labelled_by_the_policys_group_names(served):
    server, port, _ = served
    assert addresses(ask(server.port, "us.zoom.us", source=DETOUR)) == {"198.51.100.10"}
    after = scrape(port)
    assert total(after, "regionguard_decisions_total", action="reroute", group="detour") >= 1
    assert total(after, "regionguard_dns_answers_total", outcome="reroute") == 1


def test_many_distinct_names_add_no_series_and_no_name_or_address_is_a_label(served):
    server, port, _ = served
    for i in range(5):   # every kind of answer once: the series they make
        ask(server.port, f"w{i}.wild.zoom.us", source=DEFAULT)
        ask(server.port, f"p{i}.plain.example.net", source=DEFAULT)
    first = scrape(port)
    deadline = time.monotonic() + 60
    for i in range(5, 205):
        assert time.monotonic() < deadline
        ask(server.port, f"w{i}.wild.zoom.us", source=DEFAULT)
        ask(server.port, f"p{i}.plain.example.net", source=DEFAULT)
    second = scrape(port)
    assert set(second) == set(first)   # 400 more names: not one more series
    assert total(second, "regionguard_dns_queries_total") - total(
        first, "regionguard_dns_queries_total") == 400
    labels = " ".join(str(ls) for _, ls in second)
    for text in ("wild", "plain", "example", "127.0.0.", "198.51.100", "203.0.113"):
        assert text not in labels


def test_policy_reloads_ok_and_failed_are_counted(served):
    server, port, policy = served
    policy.write_text(POLICY.replace("name: dns-test", "name: dns-test-2"))
    deadline = time.monotonic() + 30
    while value(scrape(port), "regionguard_policy_reloads_total", result="ok") < 1:
        assert time.monotonic() < deadline, "the reload was not counted"
        time.sleep(0.3)
    policy.write_text("version: 1\nregions: {opt_in: [NOWHERE]}\n")
    while value(scrape(port), "regionguard_policy_reloads_total", result="failed") < 1:
        assert time.monotonic() < deadline, "the failed reload was not counted"
        time.sleep(0.3)
    assert value(scrape(port), "regionguard_policy_reloads_total", result="ok") == 1
    assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200


def test_upstream_failures_and_timeouts_are_counted(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    dead = ZoneServer(mode="dead")
    port = free_port()
    server = DnsProcess(policy, [dead.address], "--metrics", f"127.0.0.1:{port}",
                        "--timeout", "0.3")
    try:
        ask(server.port, "us.zoom.us", timeout=5)   # SERVFAIL after 0.3 s
        samples = scrape(port)
        assert value(samples, "regionguard_dns_upstream_failures_total") == 1
        assert value(samples, "regionguard_dns_upstream_timeouts_total") == 1
        assert value(samples, "regionguard_dns_servfail_total") == 1
        assert value(samples, "regionguard_dns_upstream_latency_seconds_count") == 0
    finally:
        server.close()
        dead.close()


def test_readyz_is_503_until_the_dns_listener_is_up(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    port = free_port()

    async def check() -> None:
        server = DnsServer(AsyncEngineHolder(policy), Config(("127.0.0.1", 0), (("127.0.0.1", 9),),
                                                        1.0, 1 << 20))
        served = endpoint(server, ("127.0.0.1", port))
        served.start()
        try:
            r = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/readyz", timeout=10)
            assert r.status_code == 503 and "listener is not up" in r.text
            health = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/healthz")
            assert health.status_code == 200
            await server.start()
            r = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/readyz", timeout=10)
            assert r.status_code == 200
            await server.close()
        finally:
            served.stop()

    asyncio.run(check())


def _dns(*args: str, tmp_path) -> subprocess.CompletedProcess:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return subprocess.run([str(BIN / "regionguard"), "dns", "--policy", str(policy),
                           "--upstream", "127.0.0.1:9", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("given, said", [
    ("127.0.0.1:notaport", "'127.0.0.1:notaport' is not HOST:PORT"),
    ("127.0.0.1:70000", "is not HOST:PORT"),
    ("metrics.example:9153", "'metrics.example' is not an IP address"),
])
def test_a_bad_metrics_address_is_exit_2_with_the_fix(tmp_path, given, said):
    r = _dns("--listen", f"127.0.0.1:{free_port()}", "--metrics", given, tmp_path=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "--metrics" in r.stderr and said in r.stderr and "fix:" in r.stderr


def test_the_dns_port_is_not_the_metrics_port(tmp_path):
    port = free_port()
    r = _dns("--listen", f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{port}", tmp_path=tmp_path)
    assert r.returncode == 2, r.stderr
    assert f"port {port} is the DNS port" in r.stderr and "fix:" in r.stderr


def test_a_metrics_port_in_use_is_exit_4(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        r = _dns("--listen", f"127.0.0.1:{free_port()}", "--metrics", f"127.0.0.1:{busy}",
                 tmp_path=tmp_path)
    assert r.returncode == 4, r.stderr
    assert f"cannot serve metrics on 127.0.0.1:{busy}" in r.stderr


def test_metrics_are_off_by_default_and_loopback_unless_told():
    assert parse_metrics_address("9153") == (("127.0.0.1", 9153), None)
    assert parse_metrics_address(":9153") == (("127.0.0.1", 9153), None)
    assert parse_metrics_address("[::1]:9153") == (("::1", 9153), None)
    assert exposure_warning("127.0.0.1", "x") is None and exposure_warning("::1", "x") is None
    assert "beyond loopback" in exposure_warning("0.0.0.0", "x")
    assert "beyond loopback" in exposure_warning("192.0.2.1", "x")
