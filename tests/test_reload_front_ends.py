"""Policy reloads in a running `regionguard dns`: a big policy is read off the event loop (answers
keep flowing meanwhile), and a reload that fails, even by crashing the loader, leaves the
server watching for the next change."""

from __future__ import annotations

import time

import dns.exception

from regionguard.decision import Engine
from regionguard.policy import load_policy
from tests.dns_support import POLICY, DnsProcess, ZoneServer, addresses, ask

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


def big_policy(overrides: int) -> str:
    """A valid policy allowing DE and US, with many overrides of addresses no test asks about:
    legitimately slow to read (seconds)."""
    bulk = "".join(f"  - {{match: 10.{i >> 8 & 255}.{i & 255}.0/24, region: US, zoom: true, "
                   f"note: branch office {i}}}\n" for i in range(overrides))
    return (POLICY.replace("regions: {opt_in: [DE]}", "regions: {opt_in: [DE, US]}", 1)
            .replace("overrides:\n", "overrides:\n" + bulk, 1))


def test_answers_keep_flowing_while_a_big_policy_is_read(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    big = tmp_path / "big.yaml"
    big.write_text(big_policy(12_000))
    started = time.monotonic()
    Engine(load_policy(big))
    reading = time.monotonic() - started     # what a reload of it costs here, in this process
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
        gaps = [b - a for a, b in zip(answered, answered[1:], strict=False)]
        # on the loop, the read stalled every answer for its whole length: `reading` seconds
        assert reading > 1.0, f"the big policy reads in {reading:.2f}s here: make it bigger"
        assert max(gaps) < reading / 3, (f"an answer waited {max(gaps):.2f}s while the policy "
                                         f"was read (reading takes {reading:.2f}s)")
        assert server.proc.poll() is None
    finally:
        server.close()
        zone.close()


def test_the_server_keeps_watching_after_a_reload_that_crashed(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    zone = ZoneServer()
    server = DnsProcess(policy, [zone.address])
    try:
        assert addresses(ask(server.port, "multi.zoom.us")) == DE_ONLY
        # nesting deep enough to crash a recursive YAML loader (RecursionError, not a YAML error)
        deep = tmp_path / "deep.yaml"
        deep.write_text("version: 1\nx: " + "[" * 900 + "]" * 900 + "\n")
        deep.replace(policy)
        time.sleep(5)     # two reload periods: the bad file has been read
        assert addresses(ask(server.port, "multi.zoom.us")) == DE_ONLY   # the old policy holds
        good = tmp_path / "good.yaml"
        good.write_text(POLICY.replace("regions: {opt_in: [DE]}", "regions: {opt_in: [DE, US]}", 1))
        good.replace(policy)
        assert _wait_for(server.port, BOTH), "a valid policy after the failed one was never applied"
        assert server.proc.poll() is None
        log = "".join(server.log)
        assert "not reloaded" in log and "nested more than" in log and "Traceback" not in log
    finally:
        server.close()
        zone.close()

