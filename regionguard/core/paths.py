"""Where regionguard's files live: the bundled configuration (`config/` in a checkout, or inside
the wheel), the state directory, and the data set in force (an updated one, else the bundled)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from regionguard.core.datasets import active_set


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


def bundled_data_dir() -> Path:
    """The data snapshot shipped with regionguard (config/data)."""
    return config_dir() / "data"


def state_dir() -> Path:
    """Where regionguard keeps what it learns and the data it updates:
    `$XDG_STATE_HOME/regionguard`; else systemd's `$STATE_DIRECTORY` (a unit's StateDirectory=);
    else `~/.local/state/regionguard`; for a user with no home at all (a dynamic system user
    without $HOME), a directory of its own under the temporary directory, rather than no start."""
    if xdg := os.environ.get("XDG_STATE_HOME"):
        return Path(xdg) / "regionguard"
    if systemd := os.environ.get("STATE_DIRECTORY"):
        return Path(systemd.split(":")[0])
    try:
        return Path.home() / ".local" / "state" / "regionguard"
    except RuntimeError:   # no $HOME and no passwd entry
        return Path(tempfile.gettempdir()) / f"regionguard-{os.getuid()}"


def data_root() -> Path:
    """Where `regionguard data update` keeps its data sets: REGIONGUARD_DATA_DIR, else
    STATE_DIR/data. Outside the installed package, so an update needs no write access to it."""
    env = os.environ.get("REGIONGUARD_DATA_DIR")
    return Path(env) if env else state_dir() / "data"


def data_dir() -> Path:
    """The data set in force: the updated one when present and whole, else the bundled snapshot
    (so with no update ever run, or none that succeeded, nothing changes)."""
    updated = active_set(data_root())
    return updated if updated is not None else bundled_data_dir()


def default_policy_path() -> Path:
    return config_dir() / "policy.yaml"


def policy_path(given: str | os.PathLike[str] | None) -> Path:
    """The policy file a command reads: the one it was given (--policy), else the default."""
    return Path(given) if given else default_policy_path()
