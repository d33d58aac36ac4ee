"""Build hook: compile the modules regionguard/_compiled.py lists with mypyc.

Runs for wheels and editable installs alike and builds in place: the extension modules land
beside their sources, where an editable install finds them too, and are shipped in the wheel
(with the sources, which stay the fallback). REGIONGUARD_COMPILED (see _compiled.py): auto, the
default, warns when the compile fails (pip shows it with -v) and installs pure Python; require
fails the build instead (./dev sets it, so a broken compile is loud); off compiles nothing.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

# mypy's view of the rest of regionguard and its dependencies: checked as far as the compiled
# modules need, missing stubs (PyYAML, dnspython in an isolated build) read as Any.
_MYPY_ARGS = ["--follow-imports=silent", "--ignore-missing-imports", "--python-version",
              f"{sys.version_info.major}.{sys.version_info.minor}"]

_SETUP = """\
import sys
from setuptools import setup
from mypyc.build import mypycify
group, target_dir, *args = sys.argv[1:sys.argv.index("--")]
del sys.argv[1:sys.argv.index("--") + 1]
# packages=[]: only the extensions (the project's own pyproject.toml is read from the cwd too)
setup(name="regionguard", packages=[], py_modules=[],
      ext_modules=mypycify(args, opt_level="3", group_name=group, target_dir=target_dir))
"""


class CompileHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        loader = runpy.run_path(str(root / "regionguard" / "_compiled.py"))
        clean(root)
        wanted = loader["mode"]()
        if wanted == "off":
            return
        try:
            compile_in_place(root, loader)
        except Exception as e:  # noqa: BLE001 - any failure: fall back to the sources
            clean(root)
            if wanted == "require":
                raise
            self.app.display_warning(f"regionguard: compiling {', '.join(loader['MODULES'])} "
                                     f"failed, installing pure Python (slower cache misses):\n{e}")
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        build_data["artifacts"].extend(f"/{p.relative_to(root).as_posix()}" for p in outputs(root))


def outputs(root: Path) -> list[Path]:
    """Every build output in the package: all extension modules, whichever list built them (so a
    module taken off the list loses its old extension), and the stamps, this one and the one
    builds wrote before the loader was renamed (_native.json)."""
    package = root / "regionguard"
    stamps = [package / name for name in ("_compiled.json", "_native.json")]
    return [*(p for p in package.rglob("*") if p.suffix in (".so", ".pyd")),
            *(p for p in stamps if p.exists())]


def clean(root: Path) -> None:
    for path in outputs(root):
        path.unlink(missing_ok=True)


def compile_in_place(root: Path, loader: dict) -> None:
    """Compile loader["MODULES"] beside their sources and write the stamp; raises on failure.
    `loader` is regionguard/_compiled.py run as a script (runpy.run_path): the build cannot
    import regionguard itself."""
    with tempfile.TemporaryDirectory(prefix="regionguard-mypyc-") as tmp:
        sources = [loader["module_path"](Path("regionguard"), m).as_posix() for m in loader["MODULES"]]
        # the generated C goes to tmp too, not to ./build in the project
        cmd = [sys.executable, "-c", _SETUP, f"regionguard.{loader['GROUP']}",
               str(Path(tmp) / "c"), *_MYPY_ARGS,
               "--cache-dir", str(Path(tmp) / "mypy"), *sources, "--",
               "build_ext", "--inplace", "--build-temp", str(Path(tmp) / "temp"),
               "--build-lib", str(Path(tmp) / "lib")]
        done = subprocess.run(cmd, cwd=root, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        if done.returncode:
            raise RuntimeError(done.stdout[-4000:])
    loader["write_stamp"](root / "regionguard")
