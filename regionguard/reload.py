"""Keep an Engine in step with its policy file: reload on change, keep the old one on error.

Front ends hold an EngineHolder and read `.engine` per decision (an atomic attribute read).
`check()` is cheap (one stat) and may be called often; a changed file is parsed and, only if
valid, swapped in. An invalid file never replaces a running policy: the error is returned and
logged, naming the file and field.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .decision import Engine
from .errors import ConfigError
from .learned import LearnedStore
from .policy import load_policy

log = logging.getLogger(__name__)


class EngineHolder:
    def __init__(self, path: str | Path, learned: LearnedStore | None = None) -> None:
        self.path = Path(path)
        self.learned = learned   # learned evidence, shared by every engine this holder makes
        self._stamp = self._stat()
        self.engine = Engine(load_policy(self.path), learned=learned)  # the first load must succeed
        self.last_error: ConfigError | None = None

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def check(self) -> ConfigError | None:
        """Reload if the file changed. Returns the error if the new file is invalid."""
        stamp = self._stat()
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        if stamp is None:
            # deleted or unreadable (an editor saving by rename passes through here too): say so
            # once, keep enforcing; the file's return counts as a change and is loaded
            return self._keep(ConfigError([]), f"{self.path}: the policy file is gone")
        return self.reload()

    def reload(self) -> ConfigError | None:
        try:
            engine = Engine(load_policy(self.path), learned=self.learned)
        except ConfigError as e:
            return self._keep(e)
        except OSError as e:
            return self._keep(ConfigError([]), f"{self.path}: cannot load data: {e}")
        old = self.engine.policy.version_id
        self.engine = engine
        self.last_error = None
        log.info("regionguard: policy %s reloaded (%s → %s)", self.path, old, engine.policy.version_id)
        return None

    def _keep(self, error: ConfigError, message: str | None = None) -> ConfigError:
        """Record and log why the running policy stays in force; `message` replaces the text of
        an error that has no problems of its own to list."""
        if message is not None:
            error.args = (message,)
        self.last_error = error
        log.error("regionguard: policy %s not reloaded, the running policy %s stays in force:\n%s",
                  self.path, self.engine.policy.version_id, error)
        return error
