"""`regionguard policy example [NAME]`: the example policies shipped inside the package.

After `pip install .` there is no `config/examples/` directory to copy from: the files sit in the
package (the wheel's `_bundled_config`, or `config/` in a checkout; `core.paths.config_dir()`
finds either). This prints one, so `regionguard policy example eu-only > my.yaml` works anywhere.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from regionguard.core.paths import config_dir
from regionguard.exits import EXIT_CONFIG, EXIT_OK


def examples_dir() -> Path:
    return config_dir() / "examples"


def example_names() -> list[str]:
    """The bundled examples' names (file names without `.yaml`), sorted."""
    return sorted(p.stem for p in examples_dir().glob("*.yaml"))


def _summary(path: Path) -> str:
    """The first sentence of the example's opening comment: what it is for."""
    words = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        words.append(line.lstrip("#").strip())
    text = " ".join(words)
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


def cmd_policy_example(args: argparse.Namespace) -> int:
    names = example_names()
    if args.list or not args.name:
        for name in names:
            print(f"{name:<16} {_summary(examples_dir() / f'{name}.yaml')}")
        return EXIT_OK
    name = args.name.removesuffix(".yaml")
    if name not in names:
        print(f"regionguard: policy example {args.name!r} does not exist\n"
              f"    fix: choose one of {', '.join(names)} (`regionguard policy example --list`)",
              file=sys.stderr)
        return EXIT_CONFIG
    sys.stdout.write((examples_dir() / f"{name}.yaml").read_text(encoding="utf-8"))
    return EXIT_OK


__all__ = ["cmd_policy_example", "example_names", "examples_dir"]
