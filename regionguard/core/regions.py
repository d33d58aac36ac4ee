"""The region catalogue: Zoom's data-center regions, their countries, groups and aliases.

All of it is data from `config/regions.yaml`; this module only indexes it.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from regionguard.core.errors import ConfigError, Problem
from regionguard.core.paths import config_dir


@dataclass(frozen=True, slots=True)
class Region:
    code: str
    name: str
    countries: tuple[str, ...]
    dialin_countries: tuple[str, ...]


class Catalogue:
    """Region codes, groups and aliases, with lookups by name and by country."""

    def __init__(self, regions: dict[str, Region], groups: dict[str, tuple[str, ...]],
                 aliases: dict[str, str], source: str = "<memory>") -> None:
        self.regions = regions
        self.groups = groups
        self.aliases = aliases
        self.source = source
        self._by_country = {c: r.code for r in regions.values() for c in r.countries}
        self._names: dict[str, frozenset[str]] = {}
        for code in regions:
            self._names[code.casefold()] = frozenset({code})
        for name, codes in groups.items():
            self._names[name.casefold()] = frozenset(codes)
        for alias, target in aliases.items():
            self._names[alias.casefold()] = self._names[target.casefold()]

    @property
    def codes(self) -> frozenset[str]:
        return frozenset(self.regions)

    def expand(self, name: str) -> frozenset[str] | None:
        """Region codes named by a code, group or alias (case-insensitive); None if unknown."""
        return self._names.get(str(name).strip().casefold())

    def region_code(self, name: str) -> str | None:
        """The single region a name denotes (a code or an alias of one), else None."""
        codes = self.expand(name)
        return next(iter(codes)) if codes is not None and len(codes) == 1 else None

    def suggest(self, name: str) -> list[str]:
        known = list(self.regions) + list(self.groups) + list(self.aliases)
        return difflib.get_close_matches(str(name), known, n=3, cutoff=0.5)

    def region_for_country(self, country: str | None) -> str | None:
        """The Zoom region whose data centers are in this country, or None (no Zoom region)."""
        if not country:
            return None
        return self._by_country.get(country.upper())

    def dialin_countries(self, codes: frozenset[str]) -> frozenset[str]:
        return frozenset(c for code in codes for c in self.regions[code].dialin_countries)


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Load and check a catalogue file (the bundled one by default)."""
    path = Path(path) if path else config_dir() / "regions.yaml"
    return _load_catalogue(str(path))


@cache
def _load_catalogue(path: str) -> Catalogue:
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    problems: list[Problem] = []
    regions = {}
    for code, spec in (raw.get("regions") or {}).items():
        regions[code] = Region(code, spec["name"], tuple(spec.get("countries", ())),
                               tuple(spec.get("dialin_countries", spec.get("countries", ()))))
    groups = {name: tuple(codes) for name, codes in (raw.get("groups") or {}).items()}
    for name, codes in groups.items():
        for code in codes:
            if code not in regions:
                problems.append(Problem(path, f"groups.{name}", f"unknown region {code!r}"))
    aliases = dict(raw.get("aliases") or {})
    for alias, target in aliases.items():
        if target not in regions and target not in groups:
            problems.append(Problem(path, f"aliases.{alias}", f"unknown target {target!r}"))
    if problems:
        raise ConfigError(problems)
    return Catalogue(regions, groups, aliases, source=path)
