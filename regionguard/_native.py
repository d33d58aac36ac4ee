"""The DNS hot path, compiled: which modules mypyc compiles, and when their source runs instead.

A cache miss of `regionguard dns` spends most of its time in a few pure modules: the wire scan,
the answer filter, hostname matching. The build (hatch_build.py at the project root) compiles
them with mypyc into extension modules beside their sources, and Python's import prefers an
extension to a source of the same name. The source stays the reference and the fallback; it runs
instead of the compiled module when
- nothing was compiled (no C compiler at install time: the build goes on without it);
- REGIONGUARD_PURE_PYTHON=1 is set (the test suite runs the DNS tests both ways);
- a source changed after the build. An edited .py must never be shadowed by an old .so, so the
  build records each source's hash (STAMP) and a mismatch falls back to the source, with a
  warning that says how to rebuild.

All or nothing: the compiled modules share one library, so either all run compiled or none.
This module is imported by regionguard/__init__.py before any of them; it imports nothing of
regionguard. Run as a script (`python regionguard/_native.py`) it prints the status and exits
0 only when the compiled modules are current; with --sources it lists the compiled modules'
sources, whose change makes ./dev install (and so compile) again.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from pathlib import Path

# The modules of the miss path that compile as they are (typed, no dynamic tricks).
MODULES = ("dns.wire", "core.hostnames", "dns.filter", "core.decision", "core.sources",
           "dns.server", "core.zoom", "audit.line")
GROUP = "_native"            # their shared library: regionguard/_native__mypyc<suffix>
STAMP = "_native.json"       # written by the build: {"suffix": ..., "sources": {module: sha256}}
PURE_ENV = "REGIONGUARD_PURE_PYTHON"

_HERE = Path(__file__).resolve().parent
_PACKAGE = __name__.rpartition(".")[0] or "regionguard"
_status: str | None = None


def module_path(package_dir: Path, module: str, suffix: str = ".py") -> Path:
    """The file of `module` (dotted, below the package) with `suffix`: dns.wire -> dns/wire.py."""
    return package_dir.joinpath(*module.split(".")).with_suffix(suffix)


def source_hashes(package_dir: Path = _HERE) -> dict[str, str]:
    """The sha256 of each compiled module's source, as the build records it."""
    return {m: hashlib.sha256(module_path(package_dir, m).read_bytes()).hexdigest() for m in MODULES}


def extension_suffix() -> str:
    """The file suffix of an extension module for this Python (.cpython-313-x86_64-linux-gnu.so)."""
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def pure_requested() -> bool:
    """Is REGIONGUARD_PURE_PYTHON set (to anything but 0)? Then nothing compiles or runs compiled."""
    return os.environ.get(PURE_ENV, "") not in ("", "0")


def write_stamp(package_dir: Path) -> None:
    """Record what was just compiled in `package_dir`: for this Python, from these sources."""
    stamp = {"suffix": extension_suffix(), "sources": source_hashes(package_dir)}
    (package_dir / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")


def _check(package_dir: Path = _HERE) -> str:
    """What would run: "compiled", or "pure (<why>)"."""
    if pure_requested():
        return f"pure ({PURE_ENV} is set)"
    built = [m for m in MODULES if module_path(package_dir, m, extension_suffix()).exists()]
    if not built:
        return "pure (not compiled at install time: `pip install -v -e .` shows why)"
    try:
        stamp = json.loads((package_dir / STAMP).read_text())
        recorded = stamp["sources"]
        if stamp["suffix"] != extension_suffix():
            return "pure (compiled for another Python)"
    except (OSError, ValueError, KeyError, TypeError):
        return f"pure (compiled modules without a readable {STAMP})"
    current = source_hashes(package_dir)
    changed = [m for m in MODULES if recorded.get(m) != current[m] or m not in built]
    if changed:
        files = ", ".join(module_path(Path(), m).as_posix() for m in changed)
        return f"pure (stale: {files} changed since the build)"
    return "compiled"


class _SourceFinder:
    """Finds the compiled modules' sources first, so the extensions beside them are not used.
    (A meta path finder needs only find_spec; importlib.abc would cost ~30 ms of imports.)"""

    def __init__(self, package_dir: Path) -> None:
        self._names = {f"{_PACKAGE}.{m}": module_path(package_dir, m) for m in MODULES}

    def find_spec(self, fullname: str, path=None, target=None):
        source = self._names.get(fullname)
        return importlib.util.spec_from_file_location(fullname, source) if source else None


def install() -> str:
    """Decide, once per process and before any compiled module is imported, whether they run
    compiled; when not, make their imports find the sources. Returns status()."""
    global _status
    if _status is None:
        _status = _check()
        if _status != "compiled":
            sys.meta_path.insert(0, _SourceFinder(_HERE))
            if _status.startswith("pure (stale"):
                warnings.warn(f"regionguard: the compiled DNS hot path is {_status}; running the "
                              "sources (slower). Rebuild: ./dev setup, or pip install -e .",
                              RuntimeWarning, stacklevel=2)
    return _status


def status() -> str:
    """"compiled", or "pure (<why>)": how the DNS hot path runs in this process."""
    return _status if _status is not None else _check()


if __name__ == "__main__":
    if sys.argv[1:] == ["--sources"]:     # for ./dev: the files whose change needs a rebuild
        print("\n".join(str(module_path(_HERE, m)) for m in MODULES))
        sys.exit(0)
    found = _check()
    print(found)
    sys.exit(0 if found == "compiled" else 1)
