"""Shared fixtures: the project root, the venv's executables, and policy files written per test."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import settings

from tests.ports import free_port  # noqa: F401 - the tests import it from here

# Hypothesis fails an example that takes over 200 ms as "flaky": one stall of a busy CI machine
# (the suite runs a second time under coverage) would fail a property that holds. Speed is the
# benchmarks' business (bench/), never a test's.
settings.register_profile("regionguard", deadline=None)
settings.load_profile("regionguard")

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
BIN = Path(sys.executable).parent


def pytest_report_header(config) -> str:
    """Which code the run tests: the compiled modules or their sources (REGIONGUARD_COMPILED)."""
    from regionguard import _compiled
    return (f"regionguard compiled modules: {_compiled.status()} "
            f"({_compiled.ENV}={os.environ.get(_compiled.ENV) or 'auto'})")


@pytest.fixture(autouse=True, scope="session")
def _private_state_home(tmp_path_factory):
    """Learned evidence (regionguard/core/learned.py) is kept under $XDG_STATE_HOME by default: the
    processes the tests start use a private one, never the user's."""
    old = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg-state"))
    yield
    if old is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = old


@pytest.fixture(autouse=True, scope="session")
def _bundled_data_without_age_warnings():
    """The processes the tests start read the bundled data, never a set the user updated
    (REGIONGUARD_DATA_DIR; the default is under the private state home above), and do not warn
    that it is old: how old it is depends on the day the tests run. Tests of the warning
    (tests/test_data_update.py) set the threshold themselves."""
    saved = {k: os.environ.pop(k, None) for k in ("REGIONGUARD_DATA_DIR", "REGIONGUARD_DATA_MAX_AGE_DAYS")}
    os.environ["REGIONGUARD_DATA_MAX_AGE_DAYS"] = "0"
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def write_policy(tmp_path):
    """Write a policy YAML (dedented) into tmp_path and return its path."""
    counter = iter(range(1000))

    def write(text: str, name: str | None = None) -> Path:
        path = tmp_path / (name or f"policy{next(counter)}.yaml")
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    return write
