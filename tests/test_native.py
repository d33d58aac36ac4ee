"""The compiled DNS hot path (regionguard/_native.py): it runs where it was built, never stale,
and it gives the same answers as its source."""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import dns.message
import pytest
from dns_support import ZONE, zone_answer

import regionguard
from regionguard import _native
from regionguard.core import hostnames
from regionguard.dns import wire as dnscache

PACKAGE = Path(regionguard.__file__).resolve().parent
COMPILED = _native.status() == "compiled"
needs_build = pytest.mark.skipif(not any(PACKAGE.glob(f"*{_native.extension_suffix()}")),
                                 reason="nothing compiled here (no C compiler at install time)")


def _build_is_current() -> bool:
    """Worked out here, not by _native: every hot module has an extension for this Python beside
    its source, and the build's stamp records this suffix and each source's sha256 as it is now."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    try:
        stamp = json.loads((PACKAGE / "_native.json").read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("suffix") == suffix and all(
        (PACKAGE / f"{name}{suffix}").is_file()
        and stamp["sources"].get(name) == hashlib.sha256((PACKAGE / f"{name}.py").read_bytes()).hexdigest()
        for name in _native.MODULES)


def test_each_hot_module_runs_compiled_exactly_when_a_current_build_is_there():
    pure_asked = os.environ.get("REGIONGUARD_PURE_PYTHON", "") not in ("", "0")
    compiled = _build_is_current() and not pure_asked
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0] if compiled else ".py"
    for name in _native.MODULES:
        module = importlib.import_module(f"regionguard.{name}")
        # (by name: mypyc's grouped modules report a __file__ one "regionguard/" too deep)
        assert Path(module.__file__).name == f"{name}{suffix}", (name, module.__file__)
    assert (_native.status() == "compiled") == compiled, _native.status()


BUILT = sorted(p.name for p in PACKAGE.glob(f"*{importlib.machinery.EXTENSION_SUFFIXES[0]}"))


@pytest.mark.skipif(not BUILT, reason=f"NO COMPILED BUILD in {PACKAGE}: the compiled DNS hot path "
                    "is not tested here (no C compiler at install time, or a source checkout "
                    "never installed); `./dev setup` builds it")
def test_a_build_present_is_the_one_that_runs():
    """Wherever a build is present (./dev test's set-up always makes one) it must be the code
    that runs: current and loaded, unless the pure-Python switch is set."""
    if os.environ.get("REGIONGUARD_PURE_PYTHON", "") not in ("", "0"):
        assert _native.status() == "pure (REGIONGUARD_PURE_PYTHON is set)"
        return
    assert _native.status() == "compiled", (
        f"a build is here ({', '.join(BUILT)}) but the sources run: {_native.status()}; "
        "rebuild with ./dev setup")


def _copy_of_the_package(tmp_path: Path) -> Path:
    shutil.copytree(PACKAGE, tmp_path / "regionguard",
                    ignore=shutil.ignore_patterns("__pycache__", "_bundled_config"))
    return tmp_path


def _import_in(root: Path, **env: str) -> tuple[str, str, str]:
    """(the file regionguard.dns.wire came from, the status, stderr) in a fresh interpreter that
    imports regionguard from `root`."""
    environ = {k: v for k, v in os.environ.items() if k != _native.PURE_ENV}
    environ.update(env, PYTHONPATH=str(root))
    done = subprocess.run([sys.executable, "-W", "always", "-c",
                           "import regionguard, regionguard.dns.wire as m;"
                           "print(m.__file__); print(regionguard._native.status())"],
                          cwd=root, env=environ, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    where, status = done.stdout.splitlines()
    return where, status, done.stderr


@needs_build
def test_a_current_build_is_used(tmp_path):
    root = _copy_of_the_package(tmp_path)
    where, status, _ = _import_in(root)
    assert status == "compiled"
    assert where == str(root / "regionguard" / f"dnscache{_native.extension_suffix()}")


@needs_build
def test_an_edited_source_is_never_shadowed_by_its_old_build(tmp_path):
    root = _copy_of_the_package(tmp_path)
    with open(root / "regionguard" / "dnscache.py", "a") as f:
        f.write("\nEDITED = True\n")
    where, status, stderr = _import_in(root)
    assert where == str(root / "regionguard" / "dnscache.py")
    assert status == "pure (stale: dnscache.py changed since the build)"
    assert "RuntimeWarning" in stderr and "Rebuild: ./dev setup" in stderr


@needs_build
def test_a_build_for_another_python_is_not_used(tmp_path):
    root = _copy_of_the_package(tmp_path)
    stamp = root / "regionguard" / _native.STAMP
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "suffix": ".cpython-399-x.so"}))
    where, status, _ = _import_in(root)
    assert where.endswith("dnscache.py") and status == "pure (compiled for another Python)"


@needs_build
def test_the_pure_python_switch(tmp_path):
    root = _copy_of_the_package(tmp_path)
    where, status, stderr = _import_in(root, **{_native.PURE_ENV: "1"})
    assert where.endswith("dnscache.py")
    assert status == f"pure ({_native.PURE_ENV} is set)" and "Warning" not in stderr


# --- the compiled wire functions answer as their source does ------------------------------------

def _source_module(name: str):
    """regionguard.<name> run from its source, under another name, beside the compiled one."""
    spec = importlib.util.spec_from_file_location(f"_source_{name}", PACKAGE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _outcome(fn, *args):
    try:
        result = fn(*args)
    except Exception as e:  # noqa: BLE001 - the kind of failure is part of the answer
        return ("raised", type(e).__name__)
    return _plain(result)


def _plain(value):
    """Named tuples of either module as plain nested tuples, so the two compare equal."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _corpus(rng: random.Random, n: int) -> list[bytes]:
    """Answers and queries for the test zone, then mutated: bits flipped, cut, bytes spliced."""
    seeds = []
    for name in ZONE:
        for rdtype in ("A", "AAAA", "CNAME", "HTTPS"):
            query = dns.message.make_query(name.replace("*", "x"), rdtype, use_edns=0)
            seeds += [query.to_wire(), zone_answer(query).to_wire(max_size=65535)]
    query = dns.message.make_query("nx.zoom.us", "A")
    seeds.append(zone_answer(query).to_wire())
    packets = list(seeds)
    while len(packets) < n:
        wire = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            kind = rng.random()
            if kind < 0.5 and wire:
                wire[rng.randrange(len(wire))] ^= 1 << rng.randrange(8)
            elif kind < 0.7 and wire:
                del wire[rng.randrange(len(wire)):]
            elif kind < 0.9 and wire:
                at = rng.randrange(len(wire))
                wire[at:at] = rng.randbytes(rng.randint(1, 3))
            else:
                wire[rng.randrange(12, max(13, len(wire))):] = b"\xc0\x0c" + rng.randbytes(10)
        packets.append(bytes(wire))
    return packets


@pytest.mark.skipif(not COMPILED, reason="the hot path runs from its source here: nothing to compare")
def test_compiled_wire_functions_match_their_source_on_20k_packets():
    source = _source_module("dnscache")
    assert dnscache.__file__.endswith(_native.extension_suffix()) and source.__file__.endswith(".py")
    rng = random.Random(20261129)
    scanned = 0
    for wire in _corpus(rng, 20_000):
        for fn in ("parse_query", "scan_response", "ttl_fields", "wire_name"):
            assert _outcome(getattr(dnscache, fn), wire) == _outcome(getattr(source, fn), wire), \
                (fn, wire.hex())
        assert _outcome(dnscache.skip_name, wire, 12) == _outcome(source.skip_name, wire, 12)
        scan = source.scan_response(wire)
        if scan is None:
            continue
        scanned += 1
        drop = {i for i in range(len(scan.records)) if rng.random() < 0.4}
        for fn in ("remove_records", "scan_ttls"):
            args = (wire, scan, drop) if fn == "remove_records" else (scan, 3600, drop)
            assert _outcome(getattr(dnscache, fn), *args) == _outcome(getattr(source, fn), *args), \
                (fn, wire.hex(), drop)
    assert scanned > 500   # the corpus reaches the record-level functions, not just the errors


@pytest.mark.skipif(not COMPILED, reason="the hot path runs from its source here: nothing to compare")
def test_compiled_hostname_matching_matches_its_source():
    source = _source_module("hostnames")
    names = [n.rstrip(".") for n in ZONE] + ["ZOOM.US.", " [zoom.us] ", "a.b.zoom.com.cn", "", ".",
                                               "xzoom.us", "zoom.us.evil.example", "é.zoom.us"]
    domains = ["zoom.us", "zoom.com", "zoom.com.cn", "zoomgov.com"]
    compiled_set, source_set = hostnames.DomainSet(domains), source.DomainSet(domains)
    for name in names:
        assert hostnames.normalise_host(name) == source.normalise_host(name)
        assert compiled_set.match(name) == source_set.match(name), name
        assert hostnames.in_domains(name, domains) == source.in_domains(name, domains)
