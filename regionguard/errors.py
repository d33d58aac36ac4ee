"""Errors people read: each names the file, the place in it, the bad value and the fix."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration file."""

    file: str
    field: str
    message: str
    fix: str = ""
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        text = f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        return f"{text}\n    fix: {self.fix}" if self.fix else text


class RegionguardError(Exception):
    """Base class of every error regionguard raises on purpose."""


class ConfigError(RegionguardError):
    """A configuration file (policy, catalogue, data) is invalid. Holds every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PolicyError(ConfigError):
    """The policy file is invalid."""
