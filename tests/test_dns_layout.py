"""The DNS package's shape (issue 17): imports go one way, the hot path's leaves stay free of
asyncio, and the reroute and the answer's audit record are written once, in dns.filter."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DNS = Path(__file__).resolve().parent.parent / "regionguard" / "dns"
MITM_DNS = DNS.parent / "mitm" / "dns_filter.py"


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def calls(path: Path) -> set[str]:
    """The names of the attributes and functions called in `path`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            found.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
    return found


def test_the_server_never_imports_the_command_line():
    for module in ("server", "miss", "upstream", "tcp", "cache", "filter", "wire"):
        assert not imported(DNS / f"{module}.py") & {"regionguard.cli", "regionguard.dns.cli"}, module
    assert "regionguard.dns.server" in imported(DNS / "cli.py")


def test_the_hot_paths_leaves_do_no_io():
    for module in ("wire", "cache", "filter", "miss"):
        found = imported(DNS / f"{module}.py")
        assert not found & {"asyncio", "regionguard.dns.server", "regionguard.dns.upstream"}, module


@pytest.mark.parametrize("front_end", [DNS / "server.py", DNS / "miss.py", MITM_DNS])
def test_the_reroute_and_the_audit_record_are_made_by_the_filter_only(front_end):
    made = calls(front_end)
    assert not made & {"reroute_response", "block_response", "audit_decision", "audited"}
    assert "record" not in made        # audit lines: dns.filter.audit_answer
