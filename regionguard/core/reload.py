"""Keep an Engine in step with its policy file: reload on change, keep the old one on error.

Front ends hold an EngineHolder and read `.engine` per decision (an atomic attribute read).
`check()` is cheap (one stat) and may be called often; a changed file is parsed and, only if
valid, swapped in. An invalid file never replaces a running policy: the error is returned and
logged, naming the file and field.

Front ends running an event loop (the proxy addon, `regionguard dns`) hold the subclass in
regionguard.async_reload instead, whose `check_async()` reads the policy in a worker thread: the
core itself knows no event loop.

A reload that fails in any way, an unexpected exception included, keeps the running policy and
leaves the holder watching: the next change of the file is loaded as usual.

The data set in force (regionguard.core.datasets: `regionguard data update` or `rollback`
switched it) counts as a change too: the engine is rebuilt over the new data, the same way and
with the same guarantee. An updated set that is not whole is never half read: the running
engine, and its data, stay. At start-up the holder says which data set is in force, and warns
when a source is older than the threshold (datasets.max_age_days).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from regionguard.core import datasets, sources
from regionguard.core.decision import Engine
from regionguard.core.errors import ConfigError
from regionguard.core.learned import LearnedStore
from regionguard.core.paths import bundled_data_dir, data_dir, data_root
from regionguard.core.policy import load_policy

log = logging.getLogger(__name__)

_Stamp = tuple[int, int, int] | None


class EngineHolder:
    # where reloads are reported; regionguard.async_reload's holder reports on a logger of its own
    _log = log

    def __init__(self, path: str | Path, learned: LearnedStore | None = None) -> None:
        self.path = Path(path)
        self.learned = learned   # learned evidence, shared by every engine this holder makes
        self._stamp = self._stat()
        self._data_stamp = datasets.set_stamp(data_root())
        self._data_changed = False
        self.engine = Engine(load_policy(self.path), learned=learned)  # the first load must succeed
        self.last_error: ConfigError | None = None
        self.reloads_ok = 0       # policies swapped in after the first (for metrics)
        self.reloads_failed = 0   # changes that did not load: the running policy stayed
        _report_data()

    def _stat(self) -> _Stamp:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _changed(self) -> tuple[bool, _Stamp]:
        stamp = self._stat()
        data = datasets.set_stamp(data_root())
        if stamp == self._stamp and data == self._data_stamp:
            return False, stamp
        self._data_changed = data != self._data_stamp
        self._stamp = stamp
        self._data_stamp = data
        return True, stamp

    def check(self) -> ConfigError | None:
        """Reload if the file changed, here and now. Returns the error if the new file is invalid."""
        changed, stamp = self._changed()
        if not changed:
            return None
        if stamp is None:
            return self._gone()
        return self._apply(self._build())

    def reload(self) -> ConfigError | None:
        """Load the file now, changed or not."""
        self._stamp = self._stat()
        return self._apply(self._build())

    def _build(self) -> Engine | ConfigError:
        """The new Engine, or why there is none. Never raises: whatever goes wrong, the running
        policy stays and the holder keeps watching."""
        try:
            if self._data_changed:
                problem = _unusable_set()
                if problem is not None:
                    return _error(f"the new data set is not used: {problem}")
            return Engine(load_policy(self.path), learned=self.learned)
        except ConfigError as e:
            return e
        except OSError as e:
            return _error(f"{self.path}: cannot load data: {e}")
        except Exception as e:  # noqa: BLE001 - a bug here must not end the reloads
            self._log.debug("regionguard: loading %s failed", self.path, exc_info=True)
            return _error(f"{self.path}: cannot load the policy: {type(e).__name__}: {e} "
                          "(unexpected: please report it as a bug in regionguard)")

    def _apply(self, result: Engine | ConfigError) -> ConfigError | None:
        if isinstance(result, ConfigError):
            return self._keep(result)
        old = self.engine.policy.version_id
        self.engine = result
        self.last_error = None
        self.reloads_ok += 1
        self._log.info("regionguard: policy %s reloaded (%s → %s)", self.path, old, result.policy.version_id)
        if self._data_changed:
            self._data_changed = False
            _forget_old_sets()
            self._log.info("regionguard: data reloaded: %s",
                     datasets.describe_set(data_dir(), bundled_data_dir()))
        return None

    def _gone(self) -> ConfigError:
        # deleted or unreadable (an editor saving by rename passes through here too): say so
        # once, keep enforcing; the file's return counts as a change and is loaded
        return self._keep(_error(f"{self.path}: the policy file is gone"))

    def _keep(self, error: ConfigError) -> ConfigError:
        """Record and log why the running policy stays in force."""
        self.last_error = error
        self.reloads_failed += 1
        self._log.error("regionguard: policy %s not reloaded, the running policy %s stays in force:\n%s",
                  self.path, self.engine.policy.version_id, error)
        return error


def _unusable_set() -> str | None:
    """Why the updated data set now in force cannot be read, or None (whole, or none at all:
    the bundled snapshot)."""
    root = data_root()
    if datasets.set_stamp(root) is None:
        return None
    return datasets.check_set((root / datasets.CURRENT).resolve())


def _forget_old_sets() -> None:
    """Drop the sources' cached tables of updated sets no longer in force: each update is a new
    directory, and without this a long-running server would keep every set it ever read."""
    root = str(data_root())
    keep = str(data_dir())
    cache = sources._file_cache
    for key in [k for k in cache if k[0].startswith(root) and not k[0].startswith(keep)]:
        del cache[key]


def _report_data() -> None:
    """Which data set a front end starts with, and a warning per source older than the
    threshold."""
    directory = data_dir()
    log.info("regionguard: %s", datasets.describe_set(directory, bundled_data_dir()))
    for message in datasets.stale_sources(directory):
        log.warning("regionguard: %s", message)


def _error(message: str) -> ConfigError:
    """A ConfigError with a message of its own rather than a list of problems."""
    error = ConfigError([])
    error.args = (message,)
    return error
