"""Policy reloads in a running `regionguard dns` and proxy: a big policy is read off the event loop
(answers keep flowing meanwhile), and a reload that fails, even by crashing the loader, leaves
the server watching for the next change."""

from __future__ import annotations

import json
import time

import dns.exception

from regionguard.core.decision import Engine
from regionguard.core.policy import load_policy
from tests.dns_support import POLICY, DnsProcess, ZoneServer, addresses, ask
from tests.proxy_support import Proxy, curl, origins_on_one_port, status_of

BOTH = {"198.51.100.11", "203.0.113.11"}   # multi.zoom.us once US is allowed beside DE
DE_ONLY = {"198.51.100.11"}


def _wait_for(port: int, expected: set[str], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if addresses(ask(port, "multi.zoom.us", timeout=2)) == expected:
                return True
        except dns.exception.Timeout:
            pass
        time.sleep(0.2)
    return False


def big_policy(overrides: int, text: str = POLICY, regions: str = "[DE]",
               bigger: str = "[DE, US]") -> str:
    """`text` with its regions changed (so the switch shows) and many overrides of addresses no
    test asks about: a valid policy, legitimately slow to read (seconds)."""
    bulk = "".join(f"  - {{match: 10.{i >> 8 & 255}.{i & 255}.0/24, region: US, zoom: true, "
                   f"note: branch office {i}}}\n" for i in range(overrides))
    return (text.replace(f"regions: {{opt_in: {regions}}}", f"regions: {{opt_in: {bigger}}}", 1)
            .replace("overrides:\n", "overrides:\n" + bulk, 1))


def _reading_time(path) -> float:
    """What a reload of this file costs here: parse, check and build, in this process."""
    started = time.monotonic()
    Engine(load_policy(path))
    return time.monotonic() - started


def _swapped_in(log: list[str]) -> str:
    """The console lines saying a new policy went into force."""
    return "".join(line for line in log if " reloaded (" in line)


def _assert_no_long_gap(answered: list[float], reading: float) -> None:
    gaps = [b - a for a, b in zip(answered, answered[1:], strict=False)]
    # on the loop, the read stalled every answer for its whole length: `reading` seconds
    assert reading > 1.0, f"the big policy reads in {reading:.2f}s here: make it bigger"
    # (the swap itself stalls one answer a little: a fifth of `reading` here, more when busy)
    assert max(gaps) < reading / 2, (f"an answer waited {max(gaps):.2f}s while the policy "
                                     f"was read (reading takes {reading:.2f}s)")


def test_answers_keep_flowing_while_a_big_policy_is_read(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    big = tmp_path / "big.yaml"
    big.write_text(big_policy(30_000))
    reading = _reading_time(big)
    zone = ZoneServer()
    server = DnsProcess(policy, [zone.address])
    try:
        assert addresses(ask(server.port, "multi.zoom.us")) == DE_ONLY
        big.replace(policy)   # one atomic change: the server reads the whole new file
        written = time.monotonic()
        answered = [written]
        switched = None
        deadline = written + 60 + 10 * reading
        while switched is None and time.monotonic() < deadline:
            try:   # a cached name: answered from the loop as long as the loop runs
                ask(server.port, "de.zoom.us", timeout=5)
                answered.append(time.monotonic())
            except dns.exception.Timeout:
                pass
            if len(answered) % 10 == 0:
                try:
                    if addresses(ask(server.port, "multi.zoom.us", timeout=5)) == BOTH:
                        switched = time.monotonic()
                except dns.exception.Timeout:
                    pass
            time.sleep(0.01)
        assert switched is not None, "the big policy was never applied"
        _assert_no_long_gap(answered, reading)
        assert server.proc.poll() is None
    finally:
        server.close()
        zone.close()


def test_the_server_keeps_watching_after_a_reload_that_crashed(tmp_path):
    """... and its audit log says so, as the proxy's does: the rejected file, then the new
    version in force."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    zone = ZoneServer()
    audit = tmp_path / "audit.jsonl"
    server = DnsProcess(policy, [zone.address], "--audit-flush-ms", "0", audit=audit)
    try:
        assert addresses(ask(server.port, "multi.zoom.us")) == DE_ONLY
        # nesting deep enough to crash a recursive YAML loader (RecursionError, not a YAML error)
        deep = tmp_path / "deep.yaml"
        deep.write_text("version: 1\nx: " + "[" * 900 + "]" * 900 + "\n")
        deep.replace(policy)
        deadline = time.monotonic() + 30
        while "not reloaded" not in "".join(server.log):    # the bad file has been read
            assert time.monotonic() < deadline, "".join(server.log)
            time.sleep(0.1)
        assert addresses(ask(server.port, "multi.zoom.us")) == DE_ONLY   # the old policy holds
        good = tmp_path / "good.yaml"
        good.write_text(POLICY.replace("regions: {opt_in: [DE]}", "regions: {opt_in: [DE, US]}", 1))
        good.replace(policy)
        assert _wait_for(server.port, BOTH), "a valid policy after the failed one was never applied"
        assert server.proc.poll() is None
        log = "".join(server.log)
        assert "not reloaded" in log and "nested more than" in log and "Traceback" not in log
        # the console says a policy went in as it says one was refused (as the proxy's does)
        deadline = time.monotonic() + 10
        while not _swapped_in(server.log) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"policy {policy} reloaded" in _swapped_in(server.log), "".join(server.log)
        reloads = [json.loads(line) for line in audit.read_text().splitlines()
                   if '"policy-reload"' in line]
        assert [r["ok"] for r in reloads] == [False, True], reloads
        assert "nested more than" in reloads[0]["error"] and reloads[0]["policy"] == str(policy)
        assert reloads[1]["previous_version"] == reloads[0]["policy_version"] != \
            reloads[1]["policy_version"]
    finally:
        server.close()
        zone.close()



def test_the_proxy_keeps_answering_while_a_big_policy_is_read(tmp_path):
    from tests.test_proxy import DE, IN, policy_text
    web = origins_on_one_port([DE, IN])
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text())
    big = tmp_path / "big.yaml"
    big.write_text(big_policy(30_000, policy.read_text(), "[US, DE]", "[US, DE, IN]"))
    reading = _reading_time(big)
    proxy = Proxy(policy, tmp_path, command="mitmdump")
    try:
        def status(address: str, name: str) -> int | None:
            return status_of(curl("-x", proxy.url, f"http://{name}:{web[address].port}/", timeout=5))

        assert status(DE, "de.zoom.us") == 200 and status(IN, "in.zoom.us") == 403
        big.replace(policy)
        answered = [time.monotonic()]
        switched = False
        deadline = answered[0] + 60 + 10 * reading
        while not switched and time.monotonic() < deadline:
            if status(DE, "de.zoom.us") == 200:
                answered.append(time.monotonic())
            if len(answered) % 5 == 0:
                switched = status(IN, "in.zoom.us") == 200    # IN allowed by the big policy
        assert switched, "the big policy was never applied:\n" + proxy.output()
        _assert_no_long_gap(answered, reading)
    finally:
        proxy.stop()
        for server in web.values():
            server.stop()
