"""The package's layering, checked from its sources (issue 17).

- the core (regionguard.core) loads without mitmproxy and without asyncio, names neither (nor
  prometheus_client) in any import of its sources, inside functions included, and imports
  nothing of the package outside itself;
- no import cycle among regionguard's modules, imports inside functions included (a lazy
  import that closes a loop is still a loop: it only hides it until run time);
- only `regionguard.__main__` imports the command line, regionguard.cli;
- the wheel installs one top-level package, regionguard (no `addons`).

The import graph is read with `ast`, so a module is never run to be checked. Each check is a
function of a source tree, and each is also run on a deliberately broken copy of the package
(tests below named `..._is_caught`), so none of them can pass by finding nothing.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "regionguard"
FORBIDDEN_IN_CORE = ("mitmproxy", "asyncio", "prometheus_client")   # metrics stay out of the core
ONLY_IMPORTER_OF_CLI = f"{PACKAGE}.__main__"


# --- the import graph ---------------------------------------------------------------------------


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package under `root`."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _importing_package(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The package module `target` names, or its deepest package-module prefix (an attribute
    imported from a module); None outside the package."""
    while target:
        if target in modules:
            return target
        target = target.rpartition(".")[0]
    return None


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports anywhere in its file: top level, inside functions,
    under `if TYPE_CHECKING`, and through importlib.import_module("...") with a literal name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from the importing module's package
                package = _importing_package(name, path).split(".")
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod; `from mod import attr`, mod
            targets = [f"{base}.{alias.name}" for alias in node.names]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (getattr(node.func, "attr", None) == "import_module"
                   or getattr(node.func, "id", None) in ("import_module", "__import__"))):
            targets = [node.args[0].value]
        for target in targets:
            resolved = _resolve(target, modules)
            if resolved is not None and resolved != name:
                found.add(resolved)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = module_files(root)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None. Depth-first, in sorted order (stable)."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def core_reaching_out(graph: dict[str, set[str]]) -> list[str]:
    """Imports from the core to the rest of the package, as "importer -> imported"."""
    core = f"{PACKAGE}.core"
    return sorted(f"{m} -> {d}" for m, deps in graph.items() if m == core or m.startswith(core + ".")
                  for d in deps if d != core and not d.startswith(core + "."))


def cli_importers(graph: dict[str, set[str]]) -> list[str]:
    return sorted(m for m, deps in graph.items()
                  if f"{PACKAGE}.cli" in deps and m != ONLY_IMPORTER_OF_CLI)


# --- the checks, each a function of a source tree -------------------------------------------------


def core_loads_without(root: Path) -> list[str]:
    """Import every module of regionguard.core in a fresh interpreter (this tree's sources, not
    the compiled copies); the forbidden top-level modules that got loaded."""
    core = sorted(m for m in module_files(root) if m == f"{PACKAGE}.core"
                  or m.startswith(f"{PACKAGE}.core."))
    script = ("import importlib, json, sys\n"
              f"for m in {core!r}: importlib.import_module(m)\n"
              "print(json.dumps(sorted({k.split('.')[0] for k in sys.modules})))\n")
    # the sources, whatever is compiled: the switch's old name and its new one (REGIONGUARD_COMPILED)
    env = {"PYTHONPATH": str(root), "REGIONGUARD_COMPILED": "off",
           "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120, env=env, cwd=root)
    assert r.returncode == 0, r.stderr
    loaded = set(json.loads(r.stdout.splitlines()[-1]))
    return [m for m in FORBIDDEN_IN_CORE if m in loaded]


def core_naming_forbidden(root: Path) -> list[str]:
    """Imports of a forbidden library anywhere in a core module's source, inside functions and
    under `if TYPE_CHECKING` included, as "module -> library": loading the core proves only what
    runs at import time; a lazy import waits for its first call."""
    modules = module_files(root)
    found = set()
    for name, path in modules.items():
        if name != f"{PACKAGE}.core" and not name.startswith(f"{PACKAGE}.core."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                targets = [node.module or ""]
            elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)
                  and (getattr(node.func, "attr", None) == "import_module"
                       or getattr(node.func, "id", None) in ("import_module", "__import__"))):
                targets = [node.args[0].value]
            found |= {f"{name} -> {t.split('.')[0]}" for t in targets
                      if t.split(".")[0] in FORBIDDEN_IN_CORE}
    return sorted(found)


def wheel_top_level_packages(pyproject: Path) -> list[str]:
    """The top-level names the wheel installs: its packages and its force-included targets."""
    wheel = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["hatch"]["build"]["targets"]["wheel"]
    names = [p.split("/")[0] for p in wheel.get("packages", [])]
    names += [dest.split("/")[0] for dest in wheel.get("force-include", {}).values()]
    names += [p.split("/")[0] for p in wheel.get("only-include", [])]
    return sorted(set(names))


# --- on this tree -------------------------------------------------------------------------------


def test_the_core_imports_neither_mitmproxy_nor_asyncio():
    assert core_loads_without(ROOT) == []


def test_no_core_module_names_a_front_end_library_even_inside_a_function():
    assert core_naming_forbidden(ROOT) == []


def test_the_core_imports_nothing_of_the_package_above_it():
    assert core_reaching_out(import_graph(ROOT)) == []


def test_no_import_cycle_among_the_package_modules():
    cycle = find_cycle(import_graph(ROOT))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_only_main_imports_the_command_line():
    assert cli_importers(import_graph(ROOT)) == []
    assert f"{PACKAGE}.cli" in import_graph(ROOT)[ONLY_IMPORTER_OF_CLI]   # the graph sees it


def test_the_wheel_installs_regionguard_alone():
    assert wheel_top_level_packages(ROOT / "pyproject.toml") == [PACKAGE]


# --- on a broken copy: each check must catch what it is there for ------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package, config and pyproject.toml to break."""
    shutil.copytree(ROOT / PACKAGE, tmp_path / PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
    shutil.copytree(ROOT / "config", tmp_path / "config")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")


@pytest.mark.parametrize("forbidden", FORBIDDEN_IN_CORE)
def test_a_core_module_that_loads_a_front_end_library_is_caught(tree, forbidden):
    _append(tree / PACKAGE / "core" / "hostnames.py", f"\nimport {forbidden}  # noqa\n")
    assert core_loads_without(tree) == [forbidden]


@pytest.mark.parametrize("statement", ["import asyncio", "from mitmproxy import ctx",
                                       "import prometheus_client.core",
                                       'importlib.import_module("asyncio")'])
def test_a_lazy_import_of_a_front_end_library_in_the_core_is_caught(tree, statement):
    # the shape core/reload.py had: asyncio imported inside check_async(), after loading
    _append(tree / PACKAGE / "core" / "reload.py", f"\n\ndef _f():\n    {statement}  # noqa\n")
    assert core_loads_without(tree) == []          # invisible to a load ...
    library = statement.split('"')[1] if '"' in statement else statement.split()[1].split(".")[0]
    assert core_naming_forbidden(tree) == [f"regionguard.core.reload -> {library}"]   # ... seen here


def test_a_core_module_reaching_up_to_a_front_end_is_caught(tree):
    _append(tree / PACKAGE / "core" / "zoom.py", "\n\ndef _f():\n    from regionguard.audit import line  # noqa\n")
    assert core_reaching_out(import_graph(tree)) == ["regionguard.core.zoom -> regionguard.audit.line"]


def test_a_loop_through_a_lazy_import_is_caught(tree):
    # the shape the report package had: the model imports a renderer inside a function
    _append(tree / PACKAGE / "report" / "summary.py",
            "\n\ndef _render():\n    from regionguard.report.html import render_html\n"
            "    return render_html\n")
    cycle = find_cycle(import_graph(tree))
    assert cycle is not None and {"regionguard.report.summary", "regionguard.report.html"} <= set(cycle)


def test_a_loop_through_importlib_is_caught(tree):
    # the shape the command line had: cli imports the commands by name, they import cli back
    _append(tree / PACKAGE / "cli.py", '\nimportlib.import_module("regionguard.coverage")\n')
    _append(tree / PACKAGE / "coverage.py", "\nfrom regionguard.cli import main  # noqa\n")
    cycle = find_cycle(import_graph(tree))
    assert cycle is not None and {"regionguard.cli", "regionguard.coverage"} <= set(cycle)


@pytest.mark.parametrize("statement", ["from regionguard.cli import main",
                                       "from regionguard import cli",
                                       "import regionguard.cli"])
def test_an_engine_module_importing_the_command_line_is_caught(tree, statement):
    _append(tree / PACKAGE / "dns" / "resolve.py", f"\n\ndef _f():\n    {statement}  # noqa\n")
    assert cli_importers(import_graph(tree)) == ["regionguard.dns.resolve"]


def test_a_top_level_addons_package_in_the_wheel_is_caught(tree):
    pyproject = tree / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    pyproject.write_text(text.replace('packages = ["regionguard"]', 'packages = ["regionguard", "addons"]'),
                         encoding="utf-8")
    assert wheel_top_level_packages(pyproject) == ["addons", PACKAGE]
