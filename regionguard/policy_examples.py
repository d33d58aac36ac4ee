"""`regionguard policy example [NAME]`: the example policies shipped inside the package.

After `pip install .` there is no `config/examples/` directory to copy from: the files sit in the
package (the wheel's `_bundled_config`, or `config/` in a checkout; `core.paths.config_dir()`
finds either). This prints one, so `regionguard policy example eu-only > my.yaml` works anywhere.
`default` is the policy every command uses when given none (config/policy.yaml), so it can be
read, and started from, too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from regionguard.core.paths import config_dir, default_policy_path
from regionguard.exits import EXIT_CONFIG, EXIT_OK

DEFAULT = "default"   # the default policy, listed first


def examples_dir() -> Path:
    return config_dir() / "examples"


def example_names() -> list[str]:
    """The bundled examples' names: `default`, then the files of examples/ without `.yaml`,
    sorted."""
    return [DEFAULT] + sorted(p.stem for p in examples_dir().glob("*.yaml") if p.stem != DEFAULT)


def example_path(name: str) -> Path:
    return default_policy_path() if name == DEFAULT else examples_dir() / f"{name}.yaml"


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
            print(f"{name:<16} {_summary(example_path(name))}")
        return EXIT_OK
    name = args.name.removesuffix(".yaml")
    if name not in names:
        print(f"regionguard: policy example {args.name!r} does not exist\n"
              f"    fix: choose one of {', '.join(names)} (`regionguard policy example --list`)",
              file=sys.stderr)
        return EXIT_CONFIG
    sys.stdout.write(example_path(name).read_text(encoding="utf-8"))
    return EXIT_OK


__all__ = ["DEFAULT", "cmd_policy_example", "example_names", "example_path", "examples_dir"]
