"""Which lines of an invitation's text to remove so that only what the policy allows remains:
the line of every entry outside the policy, and a heading ("Join by H.323", "Dial by your
location") whose every entry went with them.

A line is the unit: an entry and its label share one ("+49 69 3807 9883 Germany",
"213.19.144.110 (Amsterdam Netherlands)", a one-tap "+4969...,,MEETING#,,,,*PASS# Germany").
"""

from __future__ import annotations

from collections.abc import Iterable

from regionguard.invite.check import Verdict
from regionguard.invite.parse import heading_lines


def lines_to_remove(text: str, verdicts: Iterable[Verdict]) -> set[int]:
    verdicts = list(verdicts)
    remove = {v.item.line for v in verdicts if v.outside}
    if not remove:
        return set()
    kept = {v.item.line for v in verdicts if not v.outside}
    headings = heading_lines(text)
    bounds = [*headings, text.count("\n") + 2]
    for heading, following in zip(headings, bounds[1:], strict=False):
        under = {line for line in remove | kept if heading < line < following}
        if under and under <= remove:
            remove.add(heading)
    return remove
