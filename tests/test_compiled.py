"""The compile step (regionguard/_compiled.py): compiled modules run where they were built, never
stale, REGIONGUARD_COMPILED steers it, and they give the same answers as their sources."""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import random
import runpy
import shutil
import subprocess
import sys
import types
from pathlib import Path

import dns.message
import pytest
from dns_support import ZONE, zone_answer

import regionguard
from regionguard import _compiled
from regionguard.core import hostnames
from regionguard.dns import wire as dnscache

PACKAGE = Path(regionguard.__file__).resolve().parent
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
COMPILED = _compiled.status() == "compiled"
MODE = os.environ.get(_compiled.ENV, "").strip().lower() or "auto"


def _file(name: str, suffix: str = ".py") -> Path:
    """Worked out here, not by _compiled: dns.wire -> PACKAGE/dns/wire<suffix>."""
    *parents, last = name.split(".")
    return PACKAGE.joinpath(*parents, last + suffix)


def _build_is_current() -> bool:
    """Worked out here, not by _compiled: every listed module has an extension for this Python
    beside its source, and the build's stamp records this suffix and each source's sha256."""
    try:
        stamp = json.loads((PACKAGE / "_compiled.json").read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("suffix") == SUFFIX and all(
        _file(name, SUFFIX).is_file()
        and stamp["sources"].get(name) == hashlib.sha256(_file(name).read_bytes()).hexdigest()
        for name in _compiled.MODULES)


needs_build = pytest.mark.skipif(not _build_is_current(),
                                 reason="no current build here (./dev setup compiles one)")


def test_each_listed_module_runs_compiled_exactly_when_a_current_build_is_there():
    compiled = _build_is_current() and MODE != "off"
    for name in _compiled.MODULES:
        module = importlib.import_module(f"regionguard.{name}")
        # (by name: mypyc's grouped modules report a __file__ one "regionguard/" too deep)
        assert Path(module.__file__).name == _file(name, SUFFIX if compiled else ".py").name, \
            (name, module.__file__)
    assert (_compiled.status() == "compiled") == compiled, _compiled.status()


def test_the_core_stays_plain_python():
    """Only the DNS miss path is compiled (issue 17), and of the core only the hostname matcher,
    which measured worth it: the rule modules are read and edited as plain Python."""
    assert {m.partition(".")[0] for m in _compiled.MODULES} <= {"dns", "core"}
    assert {m for m in _compiled.MODULES if m.startswith("core.")} <= {"core.hostnames"}


BUILT = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob(f"*{SUFFIX}"))


@pytest.mark.skipif(not BUILT, reason=f"NO COMPILED BUILD in {PACKAGE}: the compiled modules are "
                    "not tested here (no C compiler at install time, or a source checkout never "
                    "installed); `./dev setup` builds them")
def test_a_build_present_is_the_one_that_runs():
    """Wherever a build is present (./dev test's set-up always makes one) it must be the code
    that runs: current and loaded, unless REGIONGUARD_COMPILED=off."""
    if MODE == "off":
        assert _compiled.status() == f"pure ({_compiled.ENV}=off)"
        return
    assert _compiled.status() == "compiled", (
        f"a build is here ({', '.join(BUILT)}) but the sources run: {_compiled.status()}; "
        "rebuild with ./dev setup")


def test_the_suite_under_require_runs_compiled():
    """./dev test runs the suite with REGIONGUARD_COMPILED=require: then nothing runs from source."""
    if MODE != "require":
        pytest.skip(f"{_compiled.ENV}={MODE}")
    assert _compiled.status() == "compiled"


def _copy_of_the_package(tmp_path: Path, with_build: bool = True) -> Path:
    ignore = ["__pycache__", "_bundled_config"] + ([] if with_build else ["*.so", "*.pyd", "_compiled.json"])
    shutil.copytree(PACKAGE, tmp_path / "regionguard", ignore=shutil.ignore_patterns(*ignore))
    return tmp_path


def _run_in(root: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != _compiled.ENV}
    environ.update(env, PYTHONPATH=str(root))
    return subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=root, env=environ,
                          capture_output=True, text=True, timeout=60)


def _import_in(root: Path, **env: str) -> tuple[str, str, str]:
    """(the file regionguard.dns.wire came from, the status, stderr) in a fresh interpreter that
    imports regionguard from `root`."""
    done = _run_in(root, "import regionguard, regionguard.dns.wire as m;"
                         "print(m.__file__); print(regionguard._compiled.status())", **env)
    assert done.returncode == 0, done.stderr
    where, status = done.stdout.splitlines()
    return where, status, done.stderr


def test_require_without_a_build_fails_the_import_and_says_how_to_rebuild(tmp_path):
    root = _copy_of_the_package(tmp_path, with_build=False)
    done = _run_in(root, "import regionguard", **{_compiled.ENV: "require"})
    assert done.returncode == 1
    assert "ImportError" in done.stderr and "REGIONGUARD_COMPILED=require" in done.stderr
    assert "not compiled at install time" in done.stderr and "Rebuild: ./dev setup" in done.stderr
    where, status, stderr = _import_in(root)        # auto, the default: the sources, quietly
    assert where == str(root / "regionguard" / "dns" / "wire.py") and status.startswith("pure (not")
    assert "Warning" not in stderr


def test_an_unknown_mode_is_an_error_naming_the_choices(tmp_path):
    root = _copy_of_the_package(tmp_path, with_build=False)
    done = _run_in(root, "import regionguard", **{_compiled.ENV: "yes"})
    assert done.returncode == 1
    assert "REGIONGUARD_COMPILED='yes' is not a choice" in done.stderr
    assert "auto (the default), off (run the sources) or require" in done.stderr


def test_an_extension_left_for_a_module_no_longer_listed_is_never_imported(tmp_path):
    """An older build's extension of a module since taken off the list (or of any module while
    the build is not current) must not shadow the source: here one that would not even load."""
    root = _copy_of_the_package(tmp_path, with_build=False)
    for name in ("decision", "locator"):     # taken off the list; never on it
        (root / "regionguard" / "core" / f"{name}{SUFFIX}").write_bytes(b"not an extension")
    done = _run_in(root, "import regionguard.core.decision as d, regionguard.core.locator as l;"
                         "print(d.__file__); print(l.__file__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(root / "regionguard" / "core" / f"{name}.py")
                                   for name in ("decision", "locator")]


@pytest.mark.skipif(not (PACKAGE.parent / "hatch_build.py").is_file(), reason="not a source checkout")
def test_the_build_first_removes_every_extension_and_stamp_in_the_package(tmp_path, monkeypatch):
    """So a module taken off the list loses the extension an older build left it, whatever the
    list was then (hatchling is the build's, not the test venv's: its base class is stood in)."""
    interface = types.ModuleType("hatchling.builders.hooks.plugin.interface")
    interface.BuildHookInterface = object
    for name in ("hatchling", "hatchling.builders", "hatchling.builders.hooks",
                 "hatchling.builders.hooks.plugin"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, interface.__name__, interface)
    build = runpy.run_path(str(PACKAGE.parent / "hatch_build.py"))
    package = tmp_path / "regionguard"
    (package / "core").mkdir(parents=True)
    (package / "dns").mkdir()
    built = [package / "core" / f"decision{SUFFIX}", package / "dns" / f"wire{SUFFIX}",
             package / f"_native__mypyc{SUFFIX}", package / "_native.json", package / "_compiled.json"]
    kept = [package / "core" / "decision.py", package / "dns" / "wire.py", package / "data.json"]
    for path in built + kept:
        path.write_text("x")
    build["clean"](tmp_path)
    assert [p for p in built if p.exists()] == [] and all(p.exists() for p in kept)


@needs_build
def test_a_current_build_is_used(tmp_path):
    root = _copy_of_the_package(tmp_path)
    where, status, _ = _import_in(root)
    assert status == "compiled"
    assert where == str(root / "regionguard" / "dns" / f"wire{SUFFIX}")


@needs_build
def test_an_edited_source_is_never_shadowed_by_its_old_build(tmp_path):
    root = _copy_of_the_package(tmp_path)
    with open(root / "regionguard" / "dns" / "wire.py", "a") as f:
        f.write("\nEDITED = True\n")
    where, status, stderr = _import_in(root)
    assert where == str(root / "regionguard" / "dns" / "wire.py")
    assert status == "pure (stale: dns/wire.py changed since the build)"
    assert "RuntimeWarning" in stderr and "Rebuild: ./dev setup" in stderr
    done = _run_in(root, "import regionguard", **{_compiled.ENV: "require"})
    assert done.returncode == 1 and "stale: dns/wire.py" in done.stderr


@needs_build
def test_a_build_for_another_python_is_not_used(tmp_path):
    root = _copy_of_the_package(tmp_path)
    stamp = root / "regionguard" / _compiled.STAMP
    stamp.write_text(json.dumps({**json.loads(stamp.read_text()), "suffix": ".cpython-399-x.so"}))
    where, status, _ = _import_in(root)
    assert where.endswith("wire.py") and status == "pure (compiled for another Python)"


@needs_build
def test_off_runs_the_sources(tmp_path):
    root = _copy_of_the_package(tmp_path)
    where, status, stderr = _import_in(root, **{_compiled.ENV: "off"})
    assert where.endswith("wire.py")
    assert status == f"pure ({_compiled.ENV}=off)" and "Warning" not in stderr


# --- the compiled wire functions answer as their source does ------------------------------------

def _source_module(name: str):
    """regionguard.<name> run from its source, under another name, beside the compiled one."""
    spec = importlib.util.spec_from_file_location(f"_source_{name.replace('.', '_')}", _file(name))
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
    source = _source_module("dns.wire")
    assert dnscache.__file__.endswith(SUFFIX) and source.__file__.endswith(".py")
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


@pytest.mark.skipif(not COMPILED or "core.hostnames" not in _compiled.MODULES,
                    reason="hostname matching runs from its source here: nothing to compare")
def test_compiled_hostname_matching_matches_its_source():
    source = _source_module("core.hostnames")
    names = [n.rstrip(".") for n in ZONE] + ["ZOOM.US.", " [zoom.us] ", "a.b.zoom.com.cn", "", ".",
                                               "xzoom.us", "zoom.us.evil.example", "é.zoom.us"]
    domains = ["zoom.us", "zoom.com", "zoom.com.cn", "zoomgov.com"]
    compiled_set, source_set = hostnames.DomainSet(domains), source.DomainSet(domains)
    for name in names:
        assert hostnames.normalise_host(name) == source.normalise_host(name)
        assert compiled_set.match(name) == source_set.match(name), name
        assert hostnames.in_domains(name, domains) == source.in_domains(name, domains)
