"""Shared fixtures: the project root, the venv's executables, and policy files written per test."""

from __future__ import annotations

import random
import socket
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config"
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A loopback port free for UDP and TCP, for a server a test starts later. Taken below
    Linux's ephemeral range (32768-60999): a port from bind(0) is an ephemeral one, which any
    client socket may be given before the server binds it."""
    for _ in range(200):
        port = random.randrange(20000, 32768)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            u.bind(("127.0.0.1", port))
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise RuntimeError("no free port below the ephemeral range")


@pytest.fixture
def write_policy(tmp_path):
    """Write a policy YAML (dedented) into tmp_path and return its path."""
    counter = iter(range(1000))

    def write(text: str, name: str | None = None) -> Path:
        path = tmp_path / (name or f"policy{next(counter)}.yaml")
        path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
        return path

    return write
