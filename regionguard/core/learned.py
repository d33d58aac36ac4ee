"""Learned evidence: where Zoom's own names put the addresses regionguard resolved them to.

Zoom names its servers by site (`HOST.SITE.zoom.us`, `zoomam104zc.zoom.us`). When regionguard
*itself* resolves such a name (the proxy's resolver, the DNS filter's upstream, a capture's own
DNS answers), the answer ties the name's site to the returned addresses. This module remembers
those ties and turns them into evidence (source `learned`) for later connections to the same
address by IP alone, as Zoom's media goes.

Safety rules (why the design is as it is):
- Only answers regionguard received are observed: callers are the resolver and the filters, never
  a front end passing on a name a client claimed (SNI, Host, CONNECT name).
- A name's site is read from `config/data/site-codes.csv` when the store is read, not when it is
  written, so a corrected site table corrects what was learned; codes whose own confidence is
  below MIN_SITE_CONFIDENCE (inferred by analogy, never observed) teach nothing.
- Two sites of different regions for one address are two answers: the locator shows a conflict.
- Spreading to the surrounding block (SPREAD_V4 / SPREAD_V6) happens at SPREAD_CONFIDENCE only,
  only when every learned address in the block agrees; the locator adds that no other source
  may disagree.
- Persistence is sqlite (WAL) in a state directory shared by `regionguard run` and `regionguard
  dns`. A corrupt or unwritable store is logged and turns the source off: nothing learned is
  used, so what it alone placed stays unknown (blocked by default), never the other way round.
- Lookups are dictionary reads on an in-memory snapshot keyed like the locator's tables; a
  background thread writes batches and notices other processes' writes with
  `PRAGMA data_version`, so no connection ever waits for sqlite.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

from regionguard.core.evidence import Evidence
from regionguard.core.hostnames import normalise_host
from regionguard.core.paths import data_dir, state_dir
from regionguard.core.prefixes import address_key
from regionguard.core.rtt import RttStore, open_rtt

log = logging.getLogger(__name__)

SOURCE = "learned"
CONFIDENCE = 0.75          # above hostname-only hints, below Zoom's labelled addresses (0.85+)
SPREAD_CONFIDENCE = 0.55   # a neighbour in the same block: above min_confidence 0.5, below all else
MIN_SITE_CONFIDENCE = 0.5  # site codes below this are guesses: they never place an address
SPREAD_V4 = 24             # the block a learned placement may spread over
SPREAD_V6 = 48
DEFAULT_TTL_DAYS = 30.0
DEFAULT_MAX_ENTRIES = 100_000
POLL_SECONDS = 0.5         # how often writes are flushed and other processes' writes noticed
DB_NAME = "learned.sqlite3"

_DAY = 86400.0


def default_state_dir() -> Path:
    """The state directory (core.paths.state_dir): `$XDG_STATE_HOME/regionguard` and so on."""
    return state_dir()


def block_of(key: int) -> tuple[int, int]:
    """(first key, prefix length) of the spread block holding an address key."""
    if key >> 32 == 0xFFFF:
        return (key >> (32 - SPREAD_V4)) << (32 - SPREAD_V4), SPREAD_V4
    return (key >> (128 - SPREAD_V6)) << (128 - SPREAD_V6), SPREAD_V6


def block_text(start: int, length: int) -> str:
    if start >> 32 == 0xFFFF:
        return f"{ipaddress.IPv4Address(start & 0xFFFF_FFFF)}/{length}"
    return f"{ipaddress.IPv6Address(start)}/{length}"


def block_end(start: int, length: int) -> int:
    return start + (1 << ((32 if start >> 32 == 0xFFFF else 128) - length)) - 1


class Sighting(NamedTuple):
    """One name regionguard resolved to one address: the fact the store keeps."""

    address: str
    name: str
    source: str        # who received the answer: "proxy resolver 10.0.0.53:53", "capture x.pcap"
    first_seen: float
    last_seen: float


_RDTYPES = {1: "A", 28: "AAAA", 5: "CNAME"}


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SiteCodes:
    """A name → its site's Evidence (hostname source), or None when it has no trusted site code."""

    def __init__(self) -> None:
        from regionguard.core.regions import load_catalogue
        from regionguard.core.sources import HostnameSource
        from regionguard.core.zoom import ZoomCatalogue

        zoom = ZoomCatalogue.load()
        self._source = HostnameSource(data_dir() / "site-codes.csv", zoom.domain_regions,
                                      zoom.domains, load_catalogue())
        self._memo: dict[str, Evidence | None] = {}
        self._zoom_domains = zoom.domains
        self._site_labels = self._source.site_labels()

    def is_zoom(self, name: str) -> bool:
        return name in self._zoom_domains

    def site_of(self, name: str) -> Evidence | None:
        try:
            return self._memo[name]
        except KeyError:
            pass
        lower = name.lower()
        # A site code is a whole label or sits in a first label `zoom<code>…`: most names have
        # neither, and are turned away without the hostname source's full parse.
        if not lower.startswith("zoom") and self._site_labels.isdisjoint(lower.split(".")[1:]):
            return None
        ev = self._source.site_of(name)
        if ev is not None and (ev.confidence < MIN_SITE_CONFIDENCE or not ev.places):
            ev = None
        if len(self._memo) > 10_000:
            self._memo.clear()
        self._memo[name] = ev
        return ev


_site_codes: SiteCodes | None = None


def site_codes() -> SiteCodes:
    global _site_codes
    if _site_codes is None:
        _site_codes = SiteCodes()
    return _site_codes


_SCHEMA = """
CREATE TABLE IF NOT EXISTS learned (
    address TEXT NOT NULL,
    name TEXT NOT NULL,
    source TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    written REAL NOT NULL,  -- when a process last wrote the row: what the others read anew
    PRIMARY KEY (address, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS learned_last_seen ON learned (last_seen);
CREATE INDEX IF NOT EXISTS learned_written ON learned (written);
"""
_SELECT = ("SELECT address, name, source, first_seen, last_seen FROM learned "
           "WHERE last_seen >= ?")
_SELECT_WRITTEN = ("SELECT address, name, source, first_seen, last_seen FROM learned "
                   "WHERE written >= ?")
WRITE_SLACK = 5.0   # seconds: a row committed late by another process is still read anew
_UPSERT = ("INSERT INTO learned (address, name, source, first_seen, last_seen, written) "
           "VALUES (?,?,?,?,?,?) "
           "ON CONFLICT (address, name) DO UPDATE SET source = excluded.source, "
           "written = excluded.written, "
           "first_seen = min(first_seen, excluded.first_seen), "
           "last_seen = max(last_seen, excluded.last_seen)")


class LearnedStore:
    """Sightings of site-coded Zoom names and their addresses, and the evidence they give.

    `exact` (address key → answers) and `spread` (block start → (answer,)) are what the locator
    reads; both are plain dicts, replaced or updated atomically. `generation` changes whenever
    what they say changes, and subscribers (locators, engines) are told so they drop memos."""

    def __init__(self, path: Path | None, *, ttl_days: float = DEFAULT_TTL_DAYS,
                 max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.path = path
        self.ttl_days = float(ttl_days)
        self.max_entries = int(max_entries)
        self.clock = clock
        self.problem: str | None = None
        self.generation = 0
        self.exact: dict[int, tuple[Evidence, ...]] = {}
        # one answer per block, as a 1-tuple: the locator's memo knows it by identity
        self.spread: dict[int, tuple[Evidence]] = {}
        self._by_address: dict[str, dict[str, Sighting]] = {}   # address → name → sighting
        self._count = 0
        self._by_block: dict[int, set[str]] = {}       # block start → learned addresses in it
        self._flush_requests: list[threading.Event] = []
        self._lock = threading.RLock()
        self._pending: list[Sighting] = []
        self._listeners: list[weakref.WeakMethod] = []
        self._sites = site_codes()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._resettle = False
        self._data_version = 0
        self._synced = 0.0
        self._newest = 0.0   # in memory: the newest sighting's time (see _now)
        self._rtt: RttStore | None = None
        if path is not None:
            try:
                rows = self._open_db()
            except (sqlite3.Error, OSError) as e:
                # A warning, not an error: the front end runs on without this source (an error
                # at start-up makes mitmproxy exit).
                self._fail(f"cannot open: {e}", logging.WARNING)
                return
            self._load(rows)
            self._thread = threading.Thread(target=self._run, name="regionguard-learned",
                                            daemon=True)
            self._thread.start()

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def open(cls, state_dir: Path | None = None, *, ttl_days: float = DEFAULT_TTL_DAYS,
             max_entries: int = DEFAULT_MAX_ENTRIES) -> LearnedStore:
        """The persistent store in `state_dir` (default: default_state_dir()). Never raises for
        a bad store: it comes back switched off, with `problem` saying why (and logged)."""
        directory = Path(state_dir) if state_dir is not None else default_state_dir()
        return cls(directory / DB_NAME, ttl_days=ttl_days, max_entries=max_entries)

    @classmethod
    def in_memory(cls, *, ttl_days: float = DEFAULT_TTL_DAYS,
                  max_entries: int = DEFAULT_MAX_ENTRIES) -> LearnedStore:
        """A store that lives as long as this object (replay, tests). Ages count from its newest
        sighting (`observe(..., when=)`), not from the wall clock: a capture replayed a year
        later learns what it would have learned live."""
        return cls(None, ttl_days=ttl_days, max_entries=max_entries)

    def _now(self) -> float:
        """The time ages are measured from: the clock; for an in-memory store (replay), its
        newest sighting, so a capture made long ago is judged by its own time."""
        if self.path is None and self._newest:
            return self._newest
        return self.clock()

    @property
    def enabled(self) -> bool:
        return self.problem is None

    @property
    def rtt(self) -> RttStore:
        """Round-trip-time measurements, kept beside this store (rtt.sqlite3), opened on
        first use: only policies with `evidence.rtt` on measure anything."""
        if self._rtt is None:
            self._rtt = open_rtt(self.path.parent if self.path is not None else None)
        return self._rtt

    def describe(self) -> str:
        where = str(self.path) if self.path is not None else "in memory"
        if self.problem:
            return f"learned: OFF ({self.problem}) [{where}]"
        return (f"learned: {self._count} sightings, {len(self.exact)} addresses, "
                f"{len(self.spread)} spread blocks; ttl {self.ttl_days:g} days [{where}]")

    def set_ttl(self, ttl_days: float) -> None:
        """Change how long a sighting is believed (the policy's evidence.learned_ttl_days)."""
        ttl_days = float(ttl_days)
        if ttl_days == self.ttl_days:
            return
        longer = ttl_days > self.ttl_days
        self.ttl_days = ttl_days
        if longer and self.path is not None and self.problem is None:
            # Sightings the shorter TTL left on disk unread count again.
            try:
                db = self._connect()
                try:
                    self._load(db.execute(_SELECT, (self.clock() - ttl_days * _DAY,)).fetchall())
                finally:
                    db.close()
            except (sqlite3.Error, OSError) as e:
                self._fail(f"cannot read: {e}")
                return
            self._notify()
        else:
            self.expire()

    # --- observing ------------------------------------------------------------------------

    def observe(self, name: str, addresses: Iterable[str], source: str,
                when: float | None = None) -> int:
        """Record that regionguard's own resolution of `name` gave `addresses`. Returns how many
        placements it recorded: 0 for a name without a trusted site code, or when the store is
        off. Cheap: memory only; the disk write happens in the background."""
        if self.problem is not None:
            return 0
        name = normalise_host(name)
        if self._sites.site_of(name) is None:
            return 0
        now = self.clock() if when is None else float(when)
        if self.path is None and now > self._newest:
            self._newest = now
        if now < self._now() - self.ttl_days * _DAY:
            return 0   # already expired: remembering it would only be evicted again
        recorded = 0
        changed: set[str] = set()
        with self._lock:
            for text in addresses:
                try:
                    address = ipaddress.ip_address(str(text).split("%", 1)[0]).compressed
                except ValueError:
                    continue
                names = self._by_address.get(address)
                if names is None:
                    names = self._by_address[address] = {}
                old = names.get(name)
                if old is None:
                    s = Sighting(address, name, source, now, now)
                    changed.add(address)
                    self._count += 1
                else:
                    s = Sighting(address, name, source, min(old.first_seen, now),
                                 max(old.last_seen, now))
                names[name] = s
                if self.path is not None:
                    self._pending.append(s)
                recorded += 1
            if changed:
                if self._count > self.max_entries:
                    changed.update(self._evict())
                for address in changed:
                    self._recompute(address)
                self.generation += 1
        if changed:
            self._notify()
        if len(self._pending) > 1000:
            self._wake.set()   # a burst: write it now rather than at the next tick
        return recorded

    def observe_records(self, records: Iterable[tuple[str, str, str]], source: str) -> int:
        """Observe a DNS answer given as (owner, type, value) records (CNAME chains followed):
        every name of a chain is tied to the A/AAAA addresses at its end, as long as the chain
        stays in Zoom's domains (a site-coded name aliased to a CDN says nothing of the CDN)."""
        cname: dict[str, str] = {}
        found: dict[str, list[str]] = {}
        for owner, rdtype, value in records:
            if rdtype == "CNAME":
                cname[normalise_host(owner)] = normalise_host(value)
            elif rdtype in ("A", "AAAA"):
                found.setdefault(normalise_host(owner), []).append(value)
        if not found:
            return 0
        total = 0
        names = set(found) | set(cname)
        for name in names:
            if self._sites.site_of(name) is None:
                continue
            end, hops = name, 0
            while end in cname and hops < 16 and self._sites.is_zoom(end):
                end, hops = cname[end], hops + 1
            if end in found and self._sites.is_zoom(end):
                total += self.observe(name, found[end], source)
        return total

    def observe_scan(self, records: Iterable, source: str) -> int:
        """Observe a scanned wire answer (regionguard.dns.wire.Record: section, owner, rdtype,
        value): the DNS filter's miss path, so a name without a site code costs one memoised
        look-up."""
        if self.problem is not None:
            return 0
        site_of = self._sites.site_of
        for r in records:   # most answers hold no site-coded name: site_of turns them away fast
            if r.section == 0 and (site_of(r.owner) is not None
                                   or (r.rdtype == 5 and site_of(r.value) is not None)):
                break
        else:
            return 0
        return self.observe_records([(r.owner, _RDTYPES.get(r.rdtype, ""), r.value)
                                     for r in records if r.section == 0], source)

    def observe_message(self, response, source: str) -> int:  # a dns.message.Message
        """Observe a parsed DNS answer (dnspython)."""
        if self.problem is not None:
            return 0
        return self.observe_records(
            [(rrset.name.to_text(omit_final_dot=True), _RDTYPES.get(rrset.rdtype, ""),
              rd.to_text()) for rrset in response.answer for rd in rrset], source)

    # --- what the locator reads -----------------------------------------------------------

    def sightings(self, address: str | None = None) -> list[Sighting]:
        with self._lock:
            if address is None:
                return sorted(s for names in self._by_address.values() for s in names.values())
            address = ipaddress.ip_address(address).compressed
            return sorted(self._by_address.get(address, {}).values())

    def subscribe(self, callback: Callable[[], None]) -> None:
        """Call `callback` (a bound method, held weakly) whenever the evidence changes."""
        with self._lock:
            self._listeners = [w for w in self._listeners if w() is not None]
            self._listeners.append(weakref.WeakMethod(callback))  # type: ignore[arg-type]

    def _notify(self) -> None:
        for ref in list(self._listeners):
            fn = ref()
            if fn is not None:
                try:
                    fn()
                except Exception:  # noqa: BLE001 - one listener's bug must not stop the others
                    log.exception("regionguard: learned evidence listener failed")

    # --- evidence ---------------------------------------------------------------------------

    def _evidence_for(self, address: str) -> tuple[Evidence, ...]:
        """One answer per region the address's sightings name (two regions: a conflict)."""
        by_region: dict[tuple[str | None, str | None], list[tuple[Sighting, Evidence]]] = {}
        for s in self._by_address.get(address, {}).values():
            site = self._sites.site_of(s.name)
            if site is None:
                continue
            by_region.setdefault((site.region, site.country), []).append((s, site))
        out = []
        for (region, country), items in sorted(by_region.items(), key=lambda kv: str(kv[0])):
            items.sort(key=lambda it: -it[0].last_seen)
            s, site = items[0]
            first = min(it[0].first_seen for it in items)
            last = s.last_seen
            more = f"; and {len(items) - 1} more name(s)" if len(items) > 1 else ""
            note = (f"{s.name} resolved to it by {s.source}; {site.note.split(';')[0]}; "
                    f"first seen {_iso(first)}, last seen {_iso(last)}{more}")
            out.append(Evidence(SOURCE, region, country, f"learned from {s.source}",
                                _iso(last)[:10], f"{s.name} → {address}", CONFIDENCE, note))
        return tuple(out)

    def _recompute(self, address: str) -> None:
        """Refresh one address's answers and its block's spread (lock held)."""
        key = address_key(address)
        evidence = self._evidence_for(address)
        if evidence:
            self.exact[key] = evidence
        else:
            self.exact.pop(key, None)
        start, length = block_of(key)
        members = self._by_block.setdefault(start, set())
        if address in self._by_address:
            members.add(address)
        else:
            members.discard(address)
        self._respread(start, length)

    def _respread(self, start: int, length: int) -> None:
        members = self._by_block.get(start, set())
        regions: dict[tuple[str | None, str | None], list[str]] = {}
        for address in sorted(members):
            for ev in self.exact.get(address_key(address), ()):
                regions.setdefault((ev.region, ev.country), []).append(address)
        if len(regions) != 1:
            self.spread.pop(start, None)   # nothing learned, or learned addresses disagree
            return
        (region, country), addresses = next(iter(regions.items()))
        block = block_text(start, length)
        shown = ", ".join(addresses[:3]) + (f" and {len(addresses) - 3} more"
                                              if len(addresses) > 3 else "")
        self.spread[start] = (Evidence(
            SOURCE, region, country, "learned (spread to the block)", None, block,
            SPREAD_CONFIDENCE,
            f"spread: every learned address in {block} ({shown}) is {region or country}; "
            f"not this address itself"),)

    def _rebuild(self) -> None:
        """Recompute every answer from the sightings (lock held)."""
        by_address = self._by_address
        exact: dict[int, tuple[Evidence, ...]] = {}
        by_block: dict[int, set[str]] = {}
        for address in by_address:
            key = address_key(address)
            evidence = self._evidence_for(address)
            if evidence:
                exact[key] = evidence
            by_block.setdefault(block_of(key)[0], set()).add(address)
        self.exact = exact
        self._by_block = by_block
        self.spread = {}
        for start, _members in by_block.items():
            self._respread(start, SPREAD_V4 if start >> 32 == 0xFFFF else SPREAD_V6)

    def _low_water(self) -> int:
        """Evicting goes a tenth below the bound, so a full store sorts once per many sightings,
        not once per sighting."""
        return self.max_entries - max(1, self.max_entries // 10)

    def _evict(self) -> set[str]:
        """Drop the oldest sightings (by last seen) when over the bound (lock held); returns
        the addresses whose answers must be recomputed."""
        if self._count <= self.max_entries:
            return set()
        excess = self._count - self._low_water()
        every = [s for names in self._by_address.values() for s in names.values()]
        gone = sorted(every, key=lambda s: s.last_seen)[:excess]
        for s in gone:
            self._forget(s)
        return {s.address for s in gone}

    def _forget(self, s: Sighting) -> None:
        names = self._by_address[s.address]
        del names[s.name]
        self._count -= 1
        if not names:
            del self._by_address[s.address]

    def expire(self, now: float | None = None) -> int:
        """Forget sightings older than the TTL; returns how many."""
        now = self._now() if now is None else now
        limit = now - self.ttl_days * _DAY
        with self._lock:
            old = [s for names in self._by_address.values() for s in names.values()
                   if s.last_seen < limit]
            for s in old:
                self._forget(s)
            if old:
                self._rebuild()
                self.generation += 1
        if old:
            self._notify()
        return len(old)

    def _oldest(self) -> float | None:
        with self._lock:
            return min((s.last_seen for names in self._by_address.values()
                        for s in names.values()), default=None)

    # --- persistence ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None
        db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None,
                             check_same_thread=False)
        return db

    def _open_db(self) -> list[tuple]:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = self._connect()
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            check = db.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check[0] if check else '?'}")
            # Writable? A read-only file or directory shows here, not at the first observation.
            db.execute("BEGIN IMMEDIATE")
            db.execute("COMMIT")
            limit = self.clock() - self.ttl_days * _DAY
            rows = db.execute(_SELECT, (limit,)).fetchall()
            self._data_version = db.execute("PRAGMA data_version").fetchone()[0]
            self._synced = time.time()
        except BaseException:
            db.close()
            raise
        self._db = db
        return rows

    def _load(self, rows: list[tuple]) -> None:
        by_address: dict[str, dict[str, Sighting]] = {}
        count = 0
        with self._lock:
            every = [Sighting(a, n, src, float(f), float(la)) for a, n, src, f, la in rows]
            for s in every + self._pending:   # pending: observed here and not yet written
                try:
                    address = ipaddress.ip_address(s.address).compressed
                except ValueError:
                    continue
                names = by_address.setdefault(address, {})
                count += s.name not in names
                names[s.name] = s._replace(address=address)
            self._by_address = by_address
            self._count = count
            self._evict()
            self._rebuild()
            self.generation += 1

    def _merge(self, rows: list[tuple]) -> bool:
        """Take in rows another process wrote; True when the evidence changed."""
        limit = self.clock() - self.ttl_days * _DAY
        changed: set[str] = set()
        with self._lock:
            for address, name, source, first, last in rows:
                if last < limit:
                    continue
                try:
                    address = ipaddress.ip_address(address).compressed
                except ValueError:
                    continue
                names = self._by_address.setdefault(address, {})
                old = names.get(name)
                if old is None:
                    self._count += 1
                    changed.add(address)
                elif old.last_seen >= last and old.first_seen <= first:
                    continue
                names[name] = Sighting(address, name, source,
                                       min(first, old.first_seen) if old else first,
                                       max(last, old.last_seen) if old else last)
                changed.add(address)
            if not changed:
                return False
            if self._count > self.max_entries:
                changed.update(self._evict())
            for address in changed:
                self._recompute(address)
            self.generation += 1
        return True

    def _fail(self, why: str, level: int = logging.ERROR) -> None:
        """Switch the source off: nothing learned is used, so nothing it placed stays placed."""
        where = self.path if self.path is not None else "memory"
        self.problem = why
        log.log(level, "regionguard: learned evidence store %s is unusable (%s): the `learned` source "
                  "is OFF, and addresses only it could place stay unknown (blocked by default). "
                  "fix: move the file away (a new one is made) or give a writable --state-dir",
                  where, why)
        with self._lock:
            self._count = 0
            self._pending = []
            self.exact = {}
            self.spread = {}
            self._by_block = {}
            self._by_address = {}
            self.generation += 1
        self._stop.set()
        self._notify()

    def flush(self) -> None:
        """Write pending sightings now (tests and shutdown; the background thread does it too)."""
        if self._thread is not None and self.problem is None:
            done = threading.Event()
            self._flush_requests.append(done)
            self._wake.set()
            done.wait(10)

    def _tick(self, db: sqlite3.Connection) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            db.execute("BEGIN IMMEDIATE")
            try:
                written = time.time()
                db.executemany(_UPSERT, [(*s, written) for s in pending])
                db.execute("DELETE FROM learned WHERE last_seen < ?",
                           (self.clock() - self.ttl_days * _DAY,))
                count = db.execute("SELECT count(*) FROM learned").fetchone()[0]
                if count > self.max_entries:
                    db.execute("DELETE FROM learned WHERE (address, name) IN (SELECT address, name "
                               "FROM learned ORDER BY last_seen LIMIT ?)",
                               (count - self.max_entries,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK") if db.in_transaction else None
                raise
        rtt = self._rtt
        if rtt is not None:
            # the round trips kept beside this store: ours written, those other processes
            # (a proxy, `regionguard probe`) measured read, so a long-running DNS filter or
            # nft watcher sees them without a restart
            rtt.flush()
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:   # another process wrote: read what it wrote
            self._data_version = version
            since, self._synced = self._synced - WRITE_SLACK, time.time()
            if self._merge(db.execute(_SELECT_WRITTEN, (since,)).fetchall()):
                self._resettle = True
                self._notify()
        elif self._resettle:
            # A lookup that raced with the swap above may have memoised the old answer: tell the
            # subscribers once more, a tick later.
            self._resettle = False
            self._notify()
        oldest = self._oldest()
        if oldest is not None and oldest < self.clock() - self.ttl_days * _DAY:
            self.expire()
            self._resettle = True

    def _run(self) -> None:
        db = self._db
        try:
            while not self._stop.is_set():
                self._wake.wait(POLL_SECONDS)
                self._wake.clear()
                requests, self._flush_requests = self._flush_requests, []
                try:
                    self._tick(db)
                except (sqlite3.Error, OSError) as e:
                    self._fail(f"cannot write: {e}")
                finally:
                    for r in requests:
                        r.set()
            if self.problem is None:
                self._tick(db)
        except (sqlite3.Error, OSError) as e:
            self._fail(f"cannot write: {e}")
        finally:
            for r in self._flush_requests:
                r.set()
            db.close()

    def close(self) -> None:
        """Write what is pending and stop the background thread."""
        if self._rtt is not None:
            self._rtt.close()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)


# --- front ends -------------------------------------------------------------------------------

OFF = "off"


def open_state(state_dir: str | Path | None) -> LearnedStore | None:
    """The store a front end uses: None for --state-dir off, else the persistent store (which
    is switched off, with a logged reason, when it cannot be used)."""
    if state_dir is not None and str(state_dir).strip().lower() == OFF:
        return None
    return LearnedStore.open(Path(state_dir) if state_dir else None)


__all__ = ["LearnedStore", "Sighting", "default_state_dir", "SOURCE", "CONFIDENCE",
           "SPREAD_CONFIDENCE"]
