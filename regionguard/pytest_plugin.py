"""pytest plugin: "this recorded session complies with our policy", as a test in your repository.

Installed with regionguard (entry point `pytest11`), so the fixture is there in any project that
has regionguard installed:

    def test_standup_recording_complies(regionguard_replay):
        result = regionguard_replay("recordings/standup.mitm", "recordings/standup.har",
                                    policy="policy/eu-only.yaml")
        result.assert_complies()            # fails listing every blocked connection

    def test_no_unknown_regions(regionguard_replay):
        result = regionguard_replay("audit.jsonl", policy="policy.yaml", fail_on={"block", "monitor"})
        assert not result.failing

Relative paths are taken from the test file's directory. `--regionguard-policy FILE` (or the ini
option `regionguard_policy`) sets the policy for calls that name none; without either, the
bundled default policy is used. Replay is offline: no test using this fixture touches the network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("regionguard")
    group.addoption("--regionguard-policy", metavar="FILE", default=None,
                    help="policy for the regionguard_replay fixture when a test names none")
    parser.addini("regionguard_policy", "policy for the regionguard_replay fixture", default="")


@pytest.fixture
def regionguard_replay(request: pytest.FixtureRequest) -> Callable[..., object]:
    """Replay recorded files under a policy; returns a ReplayResult with `.assert_complies()`."""
    from regionguard.replay import DEFAULT_FAIL_ON, ReplayResult, replay

    base = Path(request.node.path).parent
    configured = (request.config.getoption("--regionguard-policy")
                  or request.config.getini("regionguard_policy") or None)

    def run(*files: str | Path, policy: str | Path | None = None, client: str | None = None,
            fail_on: Iterable[str] = DEFAULT_FAIL_ON) -> ReplayResult:
        if not files:
            raise ValueError("regionguard_replay: name at least one recorded file")
        paths = [p if Path(p).is_absolute() else base / p for p in map(Path, files)]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"regionguard_replay: no such recording: {', '.join(missing)}")
        chosen = policy or configured
        if chosen is not None and not Path(chosen).is_absolute():
            chosen = (base / chosen) if policy else Path(request.config.rootpath) / chosen
        return replay(paths, chosen, client=client, fail_on=fail_on)

    return run
