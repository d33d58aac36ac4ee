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
        field, message = _bounded(self.field, 200), _bounded(self.message, MAX_TEXT)
        text = f"{where}: {field}: {message}" if field else f"{where}: {message}"
        return f"{text}\n    fix: {_bounded(self.fix, MAX_TEXT)}" if self.fix else text


# An error is read by people: a bad value quoted in full (a megabyte-long string, a huge list)
# or ten thousand bad entries would bury it. Texts are cut, and at most MAX_SHOWN problems shown.
MAX_TEXT = 400
MAX_SHOWN = 20


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


class RegionguardError(Exception):
    """Base class of every error regionguard raises on purpose."""


class ConfigError(RegionguardError):
    """A configuration file (policy, catalogue, data) is invalid. Holds every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        shown = [str(p) for p in self.problems[:MAX_SHOWN]]
        if len(self.problems) > MAX_SHOWN:
            shown.append(f"… and {len(self.problems) - MAX_SHOWN} more problem(s); fix these first")
        super().__init__("\n".join(shown))


class PolicyError(ConfigError):
    """The policy file is invalid."""
