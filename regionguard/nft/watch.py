"""`regionguard nft --watch`: keep table inet regionguard in step with the policy, the data and
what regionguard learned.

- A policy change or a new data set (core/reload.py's EngineHolder notices both; an invalid
  policy keeps the running one) recompiles, and the whole table is replaced in one transaction.
- Learned placements (the state directory `regionguard run` and `regionguard dns` write; the
  store notices other processes' writes itself) recompile too, and when the ruleset keeps its
  shape only the elements that changed are deleted and added, again in one transaction.
- Anything that fails keeps the ruleset in force: nft loads a batch whole or not at all, and
  the watcher says why and tries again on the next change. Stopping the watcher leaves the
  table in place (enforcement stays; `regionguard nft --delete` removes it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from regionguard.core.learned import LearnedStore
from regionguard.core.reload import EngineHolder
from regionguard.nft import apply
from regionguard.nft.ruleset import Compiled, Options, compile_ruleset

log = logging.getLogger(__name__)


class Watcher:
    def __init__(self, holder: EngineHolder, options: Options, *, netns: str | None = None,
                 say: Callable[[str], None] = log.info, learned_every: float = 5.0) -> None:
        self.holder = holder
        # a recompile costs a second or two of CPU: learned changes, which a busy DNS filter
        # makes all the time, are applied at most this often (policy and data changes at once)
        self.learned_every = learned_every
        self._learned_at = float("-inf")
        self.options = options
        self.netns = netns
        self.say = say
        self.loaded: Compiled | None = None
        self._engine = None
        self._generation: tuple[int, int] = (-1, -1)
        self.full_loads = 0
        self.element_updates = 0
        self.failures = 0
        self.last_load_seconds = 0.0

    @property
    def learned(self) -> LearnedStore | None:
        return self.holder.learned

    def _evidence_generation(self) -> tuple[int, int]:
        """Where the learned placements and the round-trip measurements stand; reads what the
        proxy and `regionguard probe` measured since (their store is a file they share)."""
        learned = self.learned
        rtt = self.holder.engine.rtt
        if rtt is not None:
            rtt.flush()
        return (learned.generation if learned is not None else 0,
                rtt.generation if rtt is not None else 0)

    def load(self) -> None:
        """Compile the engine in force and load it whole."""
        engine = self.holder.engine
        generation = self._evidence_generation()
        started = time.monotonic()
        compiled = compile_ruleset(engine, self.options)
        apply.run_batch(compiled.document(), netns=self.netns)
        self.last_load_seconds = time.monotonic() - started
        self.loaded, self._engine, self._generation = compiled, engine, generation
        self.full_loads += 1
        self.say(f"regionguard nft: table loaded (policy {engine.policy.version_id}, "
                 f"{sum(len(s.elements) for s in compiled.sets)} elements in "
                 f"{len(compiled.sets)} sets, {self.last_load_seconds:.2f} s)")

    def step(self) -> None:
        """One look for changes; apply what changed. Never raises for a failed load."""
        self.holder.check()
        try:
            if self.holder.engine is not self._engine:
                self.load()
                return
            generation = self._evidence_generation()
            if (generation != self._generation
                    and time.monotonic() - self._learned_at >= self.learned_every):
                self._learned_at = time.monotonic()
                self._update_elements(generation)
        except (apply.NftError, ValueError) as e:
            self.failures += 1
            log.error("regionguard nft: the ruleset in force stays: %s", e)
        except Exception:  # noqa: BLE001 - a bug must not end the watch: the table in force stays
            self.failures += 1
            log.exception("regionguard nft: compiling failed; the ruleset in force stays")

    def _update_elements(self, generation: tuple[int, int]) -> None:
        compiled = compile_ruleset(self.holder.engine, self.options)
        old = self.loaded
        if old is None or compiled.structure() != old.structure():
            self.load()
            return
        commands = compiled.element_updates(old)
        if commands:
            apply.run_batch({"nftables": commands}, netns=self.netns)
            self.element_updates += 1
            self.say(f"regionguard nft: learned placements changed: {len(commands)} element "
                     "updates applied")
        self.loaded, self._generation = compiled, generation

    def run(self, stop: threading.Event, interval: float = 1.0) -> None:
        self.load()
        while not stop.wait(interval):
            self.step()
