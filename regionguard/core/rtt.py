"""Round-trip-time measurements, kept with the learned evidence, and the `rtt` evidence source.

A measurement is the minimum RTT seen from one client site (the policy's `client.site`) to one
address, with its sample count and times. The proxy's own TCP connects feed it (`evidence.rtt:
passive`), and so do probes (`regionguard probe`, or the proxy before deciding an address no
trusted source places, `evidence.rtt: probe`). regionguard.core.physics turns it into evidence.

Design rules:
- Only the minimum is kept (and the count, first and last time): physics uses nothing else.
- Persistence is a small sqlite file beside the learned store (`rtt.sqlite3` in the state
  directory): the proxy, `regionguard probe` and `explain` share it. Writes are batched (at
  most one per FLUSH_SECONDS, and at close) so a connection never waits on the disk; another
  process's writes are read at the next flush. An unusable file turns persistence off (logged),
  never the service: measurements then live in memory.
- Subscribers are told which address changed, and only when its minimum fell or it is new:
  a steady stream of slower samples changes nothing and clears no memo.
- The evidence for an address is computed once per measurement set and kept (keyed by the
  identity of the tuple the store holds), so a locator lookup is two dictionary reads.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import MethodType
from typing import NamedTuple

from regionguard.core.evidence import Evidence
from regionguard.core.physics import (
    MARGIN_MS,
    SPEED_KM_PER_MS,
    ClientSite,
    Outcome,
    Reach,
    ZoomSite,
    constrain,
    intersect,
    zoom_sites,
)

log = logging.getLogger(__name__)

SOURCE = "rtt"
CONFIDENCE = 0.9          # physics: as high as the operators' own range data
DB_NAME = "rtt.sqlite3"
FLUSH_SECONDS = 1.0
MAX_ADDRESSES = 100_000


class Measurement(NamedTuple):
    site: ClientSite
    address: str
    min_ms: float
    samples: int
    first: float       # Unix time of the first sample
    last: float        # and of the latest
    how: str           # passive | probe: what gave the minimum

    def describe(self) -> str:
        when = _dt.datetime.fromtimestamp(self.last, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return (f"min RTT {self.min_ms:.2f} ms from {self.site.name} ({self.samples} samples, "
                f"{self.how}, last {when})")


def canonical(address: str) -> str | None:
    """An address as sockets print it (IPv6 compressed, lower case). Dotted IPv4 from a socket
    is already canonical: kept as it is, unparsed."""
    if ":" not in address and address.count(".") == 3 and address.replace(".", "").isdigit():
        return address
    try:
        return str(ipaddress.ip_address(address.partition("%")[0]))
    except ValueError:
        return None


class RttStore:
    """Minimum RTTs per (client site, address); `by_address` is what the source reads."""

    def __init__(self, path: Path | None, *, clock: Callable[[], float] = time.time,
                 max_addresses: int = MAX_ADDRESSES) -> None:
        self.path = path
        self.clock = clock
        self.max_addresses = max_addresses
        self.problem: str | None = None
        self.by_address: dict[str, tuple[Measurement, ...]] = {}
        self._dirty: dict[tuple[ClientSite, str], Measurement] = {}
        self._listeners: list[weakref.WeakMethod | Callable[[str], None]] = []
        self._listening = threading.Lock()
        self._flushed = 0.0
        self._data_version = -1
        self.generation = 0   # moves whenever an address's bound changes (readers compare it)
        self._db: sqlite3.Connection | None = None
        if path is not None:
            try:
                self._db = sqlite3.connect(str(path), timeout=2, isolation_level=None,
                                           check_same_thread=False)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS rtt (site TEXT, latitude REAL, longitude REAL, "
                    "address TEXT, min_ms REAL, samples INTEGER, first REAL, last REAL, how TEXT, "
                    "PRIMARY KEY (site, latitude, longitude, address))")
                self._read()
            except (sqlite3.Error, OSError) as e:
                self._db = None
                self.problem = f"cannot use {path}: {e}"
                log.warning("regionguard: RTT measurements kept in memory only: %s", self.problem)

    @classmethod
    def in_memory(cls, **kw) -> RttStore:
        return cls(None, **kw)

    # --- reading ------------------------------------------------------------------------------

    def measurements(self, address: str) -> tuple[Measurement, ...]:
        return self.by_address.get(address) or self.by_address.get(canonical(address) or "", ())

    def measured(self, site: ClientSite, address: str) -> Measurement | None:
        return next((m for m in self.measurements(address) if m.site == site), None)

    def describe(self) -> str:
        where = str(self.path) if self.path is not None and self._db is not None else "in memory"
        return f"rtt: {len(self.by_address)} addresses measured [{where}]"

    # --- writing ------------------------------------------------------------------------------

    def observe(self, site: ClientSite, address: str, rtt_ms: float, how: str,
                when: float | None = None) -> bool:
        """One sample. True when it is the address's first from this site or a new minimum."""
        if not rtt_ms >= 0 or rtt_ms == float("inf"):
            return False
        address = canonical(address) or address
        when = self.clock() if when is None else when
        changed = self._merge(Measurement(site, address, rtt_ms, 1, when, when, how))
        if self._db is not None and when - self._flushed >= FLUSH_SECONDS:
            self.flush()
        return changed

    def _merge(self, new: Measurement, from_disk: bool = False) -> bool:
        address = new.address
        known = self.by_address.get(address, ())
        old = next((m for m in known if m.site == new.site), None)
        if old is None:
            merged = new
        elif from_disk:
            if new.samples <= old.samples and new.min_ms >= old.min_ms:
                return False
            merged = new if new.min_ms < old.min_ms else old._replace(samples=new.samples,
                                                                      last=max(old.last, new.last))
        else:
            lower = new.min_ms < old.min_ms
            merged = old._replace(min_ms=min(old.min_ms, new.min_ms),
                                  samples=old.samples + new.samples,
                                  last=max(old.last, new.last), how=new.how if lower else old.how)
        if not from_disk:
            self._dirty[(new.site, address)] = merged
        if old is not None and merged.min_ms == old.min_ms:
            # the same bound: no one is told (the sources' outcome memo is keyed by bounds)
            self.by_address[address] = tuple(merged if m is old else m for m in known)
            return False
        if old is None and len(self.by_address) >= self.max_addresses:
            self._evict()
        self.by_address[address] = tuple(merged if m is old else m for m in known) \
            if old is not None else known + (merged,)
        self._notify(address)
        return True

    def _evict(self) -> None:
        oldest = sorted(self.by_address, key=lambda a: max(m.last for m in self.by_address[a]))
        for address in oldest[:max(1, len(oldest) // 10)]:
            del self.by_address[address]

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """`callback(address)` whenever an address's bound changes. Bound methods are held
        weakly (an engine replaced by a reload is not kept alive by its store)."""
        ref = weakref.WeakMethod(callback) if isinstance(callback, MethodType) else callback
        with self._listening:   # a reload builds its engine in a worker thread
            self._listeners.append(ref)   # type: ignore[arg-type]

    def _notify(self, address: str) -> None:
        self.generation += 1
        with self._listening:
            refs = list(self._listeners)
        called = 0
        for ref in refs:
            fn = ref() if isinstance(ref, weakref.WeakMethod) else ref
            if fn is not None:
                fn(address)
                called += 1
        if called < len(refs):   # forget the engines a reload replaced
            with self._listening:
                self._listeners = [r for r in self._listeners
                                   if not (isinstance(r, weakref.WeakMethod) and r() is None)]

    # --- persistence --------------------------------------------------------------------------

    def flush(self) -> None:
        """Write what changed; read what other processes wrote meanwhile."""
        if self._db is None:
            return
        self._flushed = self.clock()
        # swapped first, read after: a measurement another thread adds meanwhile goes into the
        # dict taken (and is written) or into the new one (written next time), never lost
        dirty, self._dirty = self._dirty, {}
        rows = list(dirty.values())
        try:
            if rows:
                self._db.executemany(
                    "INSERT INTO rtt VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT "
                    "(site, latitude, longitude, address) DO UPDATE SET "
                    "min_ms=min(min_ms, excluded.min_ms), samples=max(samples, excluded.samples), "
                    "last=max(last, excluded.last), how=CASE WHEN excluded.min_ms < min_ms "
                    "THEN excluded.how ELSE how END",
                    [(m.site.name, m.site.latitude, m.site.longitude, m.address, m.min_ms,
                      m.samples, m.first, m.last, m.how) for m in rows])
            self._read()
        except sqlite3.Error as e:
            log.warning("regionguard: RTT measurements not saved: %s", e)

    def _read(self) -> None:
        assert self._db is not None
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version == self._data_version:
            return
        self._data_version = version
        for row in self._db.execute("SELECT site, latitude, longitude, address, min_ms, samples, "
                                    "first, last, how FROM rtt"):
            site = ClientSite(row[0], row[1], row[2])
            self._merge(Measurement(site, *row[3:]), from_disk=True)

    def close(self) -> None:
        self.flush()
        if self._db is not None:
            self._db.close()
            self._db = None


class RttSource:
    """The `rtt` evidence source: an address's measurements, through physics."""

    name = SOURCE
    def __init__(self, store: RttStore, sites: Sequence[ZoomSite] | None = None,
                 countries: Callable[[str], str | None] | None = None,
                 margin_ms: float = MARGIN_MS, speed_km_per_ms: float = SPEED_KM_PER_MS,
                 measuring: Iterable[ClientSite] = ()) -> None:
        self.store = store
        self.sites = tuple(sites) if sites is not None else zoom_sites()
        self._country = countries or (lambda region: None)
        self.margin_ms = margin_ms
        self.speed = speed_km_per_ms
        self.dataset = "config/data/zoom-sites.csv"
        # address → (its measurements, their evidence); (site, minimum)s → outcome
        self._evidence: dict[str, tuple[tuple[Measurement, ...], Evidence]] = {}
        self._outcomes: dict[tuple, Outcome] = {}
        self.all_regions = frozenset(s.region for s in self.sites)
        self._reaches: dict[ClientSite, Reach] = {}   # one per measuring site (few: the policy's)
        for site in measuring:   # built now (a policy load), not at a first contact
            self._reach(site)

    def _reach(self, site: ClientSite) -> Reach:
        reach = self._reaches.get(site)
        if reach is None:
            reach = self._reaches[site] = Reach(site, self.sites)
        return reach

    def points(self) -> list[str]:
        """The measured addresses: the only ones this source says anything about (so an
        address-by-address compiler, such as `regionguard nft`, can cut its ranges there)."""
        return list(self.store.by_address)

    def evidence_of(self, address: str) -> Evidence | None:
        """The evidence last given for an address (before a new measurement is looked up)."""
        hit = self._evidence.get(address)
        return hit[1] if hit is not None else None

    def outcome(self, address: str) -> tuple[Outcome, tuple[Measurement, ...]] | None:
        """The physics of an address's measurements (for `explain`), or None if unmeasured."""
        found = self.store.measurements(address)
        if not found:
            return None
        return self._outcome(found), found

    def lookup(self, address: str) -> Evidence | None:
        found = self.store.by_address.get(address)
        if not found:
            return None
        hit = self._evidence.get(address)
        if hit is not None and hit[0] is found:
            return hit[1]
        ev = self._make(found, self._outcome(found))
        if len(self._evidence) >= MAX_ADDRESSES:
            self._evidence.clear()
        self._evidence[address] = (found, ev)
        return ev

    def _outcome(self, found: tuple[Measurement, ...]) -> Outcome:
        key = tuple((m.site, m.min_ms) for m in found)
        outcome = self._outcomes.get(key)
        if outcome is None:
            outcome = intersect(constrain(m.site, m.min_ms, self._reach(m.site), self.margin_ms,
                                          self.speed) for m in found)
            assert outcome is not None
            if len(self._outcomes) >= MAX_ADDRESSES:
                self._outcomes.clear()
            self._outcomes[key] = outcome
        return outcome

    def _make(self, found: tuple[Measurement, ...], outcome: Outcome) -> Evidence:
        tightest = min(found, key=lambda m: m.min_ms)
        placed = outcome.placed
        matched = (f"min RTT {tightest.min_ms:.2f} ms from {tightest.site.name} → within "
                   f"{outcome.radius_km:.0f} km")
        if placed:
            note = "every Zoom site within reach is in " + placed
        elif outcome.regions:
            note = "Zoom sites of several regions within reach: " + ", ".join(sorted(outcome.regions))
        else:
            note = "no Zoom site within reach"
        near = sorted({(d.site.city, round(d.km)) for d in outcome.inside}, key=lambda x: x[1])[:3]
        if near:
            note += "; nearest: " + ", ".join(f"{c} {km} km" for c, km in near)
        day = _dt.datetime.fromtimestamp(max(m.last for m in found), _dt.UTC).date().isoformat()
        return Evidence(SOURCE, placed, self._country(placed) if placed else None,
                        f"{sum(m.samples for m in found)} round trip(s) measured; {self.dataset}", day,
                        matched, CONFIDENCE, note, None, outcome.regions)


def open_rtt(state_dir: Path | None) -> RttStore:
    """The persistent store in `state_dir` (beside learned.sqlite3), or in memory for None."""
    if state_dir is None:
        return RttStore.in_memory()
    return RttStore(Path(state_dir) / DB_NAME)


__all__ = ["CONFIDENCE", "DB_NAME", "Measurement", "RttSource", "RttStore", "SOURCE", "open_rtt"]
