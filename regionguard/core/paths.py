"""Where the bundled configuration lives: `config/` in a checkout, or inside the wheel."""

from __future__ import annotations

import os
from pathlib import Path


def config_dir() -> Path:
    """The directory holding regions.yaml, zoom.yaml, policy.yaml and data/.

    REGIONGUARD_CONFIG_DIR wins; then the checkout's `config/`; then the copy in the wheel.
    """
    env = os.environ.get("REGIONGUARD_CONFIG_DIR")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parent.parent   # regionguard/
    for candidate in (package.parent / "config", package / "_bundled_config"):
        if (candidate / "regions.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        "regionguard's bundled config (regions.yaml) was not found next to the package; "
        "set REGIONGUARD_CONFIG_DIR to the project's config/ directory"
    )


def data_dir() -> Path:
    return config_dir() / "data"


def default_policy_path() -> Path:
    return config_dir() / "policy.yaml"


def policy_path(given: str | os.PathLike[str] | None) -> Path:
    """The policy file a command reads: the one it was given (--policy), else the default."""
    return Path(given) if given else default_policy_path()
