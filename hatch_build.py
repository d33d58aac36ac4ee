"""Build hook: compile the DNS hot path (regionguard/_native.py lists the modules) with mypyc.

Runs for wheels and editable installs alike and builds in place: the extension modules land
beside their sources, where an editable install finds them too, and are shipped in the wheel
(with the sources, which stay the fallback). Without a C compiler, or when mypyc fails, the
build warns (pip shows it with -v) and installs pure Python, unless REGIONGUARD_REQUIRE_NATIVE=1
(./dev test sets it, so a broken compile fails loudly instead of quietly making every cache
miss slower).
REGIONGUARD_PURE_PYTHON=1 skips compiling.
"""

from __future__ import annotations

import os
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


class NativeBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        native = runpy.run_path(str(root / "regionguard" / "_native.py"))
        self._clean(root, native)
        if native["pure_requested"]():
            return
        try:
            self._compile(root, native)
        except Exception as e:  # noqa: BLE001 - any failure: fall back to the sources
            self._clean(root, native)
            if os.environ.get("REGIONGUARD_REQUIRE_NATIVE", "") not in ("", "0"):
                raise
            self.app.display_warning(f"regionguard: compiling the DNS hot path failed, installing "
                                     f"pure Python (slower cache misses):\n{e}")
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        build_data["artifacts"].extend(f"/{p.relative_to(root).as_posix()}"
                                       for p in self._outputs(root, native))

    @staticmethod
    def _outputs(root: Path, native: dict) -> list[Path]:
        package = root / "regionguard"
        return [*package.glob(f"{native['GROUP']}__mypyc.*"),
                *(p for m in native["MODULES"]
                  for p in native["module_path"](package, m).parent.glob(m.rpartition(".")[2] + ".*")
                  if p.suffix in (".so", ".pyd")),
                package / native["STAMP"]]

    def _clean(self, root: Path, native: dict) -> None:
        for path in self._outputs(root, native):
            path.unlink(missing_ok=True)

    def _compile(self, root: Path, native: dict) -> None:
        with tempfile.TemporaryDirectory(prefix="regionguard-mypyc-") as tmp:
            sources = [native["module_path"](Path("regionguard"), m).as_posix() for m in native["MODULES"]]
            # the generated C goes to tmp too, not to ./build in the project
            cmd = [sys.executable, "-c", _SETUP, f"regionguard.{native['GROUP']}",
                   str(Path(tmp) / "c"), *_MYPY_ARGS,
                   "--cache-dir", str(Path(tmp) / "mypy"), *sources, "--",
                   "build_ext", "--inplace", "--build-temp", str(Path(tmp) / "temp"),
                   "--build-lib", str(Path(tmp) / "lib")]
            done = subprocess.run(cmd, cwd=root, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
            if done.returncode:
                raise RuntimeError(done.stdout[-4000:])
        native["write_stamp"](root / "regionguard")
