"""The country a label in a Zoom invitation names: "US (New York)" -> US, "Amsterdam Netherlands"
-> NL, "Hong Kong SAR" -> HK, "Mainland China" -> CN.

A label is only a claim: `check` compares it with the evidence (the phone-number library for a
dial-in number, the locator for a room-connector address). Names come from the ISO 3166 list the
data set ships (config/data/iso3166-alpha2.csv) and config/invite-labels.yaml (the spellings
invitations use that are not ISO names).
"""

from __future__ import annotations

import csv
import functools
import re
from pathlib import Path

from regionguard.core.errors import ConfigError, Problem
from regionguard.core.paths import config_dir, data_dir
from regionguard.core.safeyaml import load_yaml

_WORD = re.compile(r"[^\W\d_]+(?:['.-][^\W\d_]+)*", re.UNICODE)
_BRACKETS = re.compile(r"\([^()]*\)")
_MAX_WORDS = 5   # the longest name looked for, in words ("Saint Vincent and the Grenadines")


class LabelPlaces:
    """Lower-case place name -> ISO country code (None: a name that states no one country)."""

    def __init__(self, names: dict[str, str | None], codes: frozenset[str]) -> None:
        self.names = names
        self.codes = codes

    def country(self, label: str | None) -> str | None:
        """The country the label names, or None when it names none (or only a region such as
        "EMEA"). What stands outside brackets comes first ("US (Jersey City)" is the US, not
        Jersey); longer names win over the words in them ("Hong Kong" over "Kong"); a code must be
        written in capitals ("US", not the word "us")."""
        if not label:
            return None
        outside = _BRACKETS.sub(" ", label)
        return self._first(outside) or (self._first(label) if outside != label else None)

    def _first(self, label: str) -> str | None:
        words = [m.group(0) for m in _WORD.finditer(label)]
        for size in range(min(_MAX_WORDS, len(words)), 0, -1):
            for start in range(len(words) - size + 1):
                phrase = " ".join(words[start:start + size])
                key = phrase.lower()
                if key in self.names:
                    found = self.names[key]
                    if found is not None:
                        return found
                if size == 1 and len(phrase) == 2 and phrase.isupper() and phrase in self.codes:
                    return phrase
        return None


@functools.cache
def label_places() -> LabelPlaces:
    """The bundled names (cached: the files do not change while a command runs)."""
    return load_label_places(data_dir() / "iso3166-alpha2.csv", config_dir() / "invite-labels.yaml")


def load_label_places(iso_csv: Path, aliases_yaml: Path) -> LabelPlaces:
    names: dict[str, str | None] = {}
    codes: set[str] = set()
    with open(iso_csv, encoding="utf-8", newline="") as f:
        for row in csv.reader(line for line in f if not line.startswith("#")):
            if not row or row[0] == "code":
                continue
            code, name = row[0], row[1]
            codes.add(code)
            names.setdefault(name.lower(), code)
            # "Korea, Republic of" is written "Korea"; "Taiwan, Province of China" "Taiwan"
            names.setdefault(name.split(",")[0].strip().lower(), code)
    try:
        text = aliases_yaml.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([Problem(str(aliases_yaml), "", f"cannot read: {e.strerror or e}",
                                   "restore the file from regionguard's config/ (its place names "
                                   "for invitation labels), or unset REGIONGUARD_CONFIG_DIR")]) from None
    raw, lines = load_yaml(text, str(aliases_yaml))
    aliases = raw.get("aliases") if isinstance(raw, dict) else None
    if not isinstance(aliases, dict):
        raise ConfigError([Problem(str(aliases_yaml), "aliases", "expected a mapping NAME: COUNTRY",
                                   "write `aliases:` followed by `Name: CC` lines")])
    for name, code in aliases.items():
        if code is not None and code not in codes:
            raise ConfigError([Problem(str(aliases_yaml), f"aliases.{name}",
                                       f"{code!r} is not an ISO 3166-1 alpha-2 code",
                                       "use a code of config/data/iso3166-alpha2.csv, or null",
                                       lines.get(("aliases", name)))])
        names[str(name).lower()] = code
    return LabelPlaces(names, frozenset(codes))
