"""The compile step: which modules mypyc compiles, and whether this process runs them compiled.

The build (hatch_build.py) compiles MODULES into extension modules beside their sources. The
sources stay the reference and the fallback, and run instead when nothing was compiled, when
REGIONGUARD_COMPILED=off, or when a source changed after the build: an edited .py is never
shadowed by an old .so (the build records each source's sha256 in STAMP; a mismatch runs the
sources, with a warning that says how to rebuild).

REGIONGUARD_COMPILED steers the build, the import and the test suite alike:
    auto     (the default) compile where a C compiler is; run compiled when the build is current
    off      compile nothing, run the sources
    require  a failed compile fails the install, and importing regionguard fails unless the
             compiled modules are current (./dev test and ./dev bench set it)

Imported by regionguard/__init__.py before anything else of regionguard; imports nothing of it.
`python regionguard/_compiled.py` prints the status (exit 0 only when compiled); `--sources`
lists the files whose change needs a rebuild.
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

# Dotted below the package: the DNS miss path's modules, each kept only while bench/ shows it pays
# (README, Speed); the rest of the core stays plain Python.
# server and upstream hold sockets but run on every miss: 33 µs of CPU a miss with them, 44 without.
MODULES = ("dns.wire", "dns.cache", "dns.filter", "dns.miss", "core.hostnames", "dns.server", "dns.upstream")
GROUP = "_compiled"          # their shared library: regionguard/_compiled__mypyc<suffix>
STAMP = "_compiled.json"     # written by the build: {"suffix": ..., "sources": {module: sha256}}
ENV = "REGIONGUARD_COMPILED"
CHOICES = ("auto", "off", "require")
REBUILD = "Rebuild: ./dev setup, or pip install -e ."

_HERE = Path(__file__).resolve().parent
_PACKAGE = __name__.rpartition(".")[0] or "regionguard"
_status: str | None = None


def module_path(package_dir: Path, module: str, suffix: str = ".py") -> Path:
    """The file of `module` (dotted, below the package) with `suffix`: dns.wire -> dns/wire.py."""
    path = package_dir.joinpath(*module.split("."))
    return path.with_name(path.name + suffix)


def source_hashes(package_dir: Path = _HERE) -> dict[str, str]:
    """The sha256 of each compiled module's source, as the build records it."""
    return {m: hashlib.sha256(module_path(package_dir, m).read_bytes()).hexdigest() for m in MODULES}


def extension_suffix() -> str:
    """The file suffix of an extension module for this Python (.cpython-313-x86_64-linux-gnu.so)."""
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def mode() -> str:
    """REGIONGUARD_COMPILED: auto (also when unset or empty), off or require."""
    value = os.environ.get(ENV, "").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={os.environ[ENV]!r} is not a choice: set it to auto (the default), "
                         "off (run the sources) or require (compiled or fail), or unset it")
    return value


def write_stamp(package_dir: Path) -> None:
    """Record what was just compiled in `package_dir`: for this Python, from these sources."""
    stamp = {"suffix": extension_suffix(), "sources": source_hashes(package_dir)}
    (package_dir / STAMP).write_text(json.dumps(stamp, indent=1) + "\n")


def _check(package_dir: Path = _HERE) -> str:
    """What would run: "compiled", or "pure (<why>)"."""
    if mode() == "off":
        return f"pure ({ENV}=off)"
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
    """Finds a module's source before the extension beside it, for every module of the package
    that does not run compiled: a build that is not current, or an extension an older build left
    for a module no longer listed. (A meta path finder needs only find_spec; importlib.abc would
    cost ~30 ms of imports.)"""

    def __init__(self, package_dir: Path, compiled: frozenset[str]) -> None:
        self._dir = package_dir
        self._prefix = _PACKAGE + "."
        self._compiled = compiled
        self._suffix = extension_suffix()

    def find_spec(self, fullname: str, path=None, target=None):
        if not fullname.startswith(self._prefix):
            return None
        module = fullname[len(self._prefix):]
        if module in self._compiled or not module_path(self._dir, module, self._suffix).exists():
            return None
        source = module_path(self._dir, module)
        return importlib.util.spec_from_file_location(fullname, source) if source.is_file() else None


def install() -> str:
    """Decide, once per process and before any compiled module is imported, whether they run
    compiled; make every other module's import find its source. Returns status()."""
    global _status
    if _status is None:
        wanted = mode()
        _status = _check()
        compiled = _status == "compiled"
        if wanted == "require" and not compiled:
            raise ImportError(f"regionguard: {ENV}=require, but the compiled modules are {_status}. "
                              f"{REBUILD}; or set {ENV}=auto to run the sources")
        sys.meta_path.insert(0, _SourceFinder(_HERE, frozenset(MODULES if compiled else ())))
        if _status.startswith("pure (stale"):
            warnings.warn(f"regionguard: the compiled modules are {_status}; running the sources "
                          f"(slower). {REBUILD}", RuntimeWarning, stacklevel=2)
    return _status


def status() -> str:
    """"compiled", or "pure (<why>)": how the compiled modules run in this process."""
    return _status if _status is not None else _check()


if __name__ == "__main__":
    if sys.argv[1:] == ["--sources"]:     # for ./dev: the files whose change needs a rebuild
        print("\n".join(str(module_path(_HERE, m)) for m in MODULES))
        sys.exit(0)
    found = _check()
    print(found)
    sys.exit(0 if found == "compiled" else 1)
