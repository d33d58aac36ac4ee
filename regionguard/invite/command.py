"""`regionguard invite FILE...`: check meeting invitations against the policy, and optionally
write them with the entries outside it removed (--fix OUT).

Exit codes: 0 every entry allowed; 1 some entry outside the policy; 4 some input unreadable (the
rest was checked); 5 both 1 and 4; 2 invalid policy or options.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from regionguard.core.decision import Engine
from regionguard.core.paths import policy_path
from regionguard.core.policy import load_policy
from regionguard.exits import EXIT_BLOCKED, EXIT_CONFIG, EXIT_INPUT, EXIT_OK
from regionguard.invite.check import ALLOWED, NOT_ZOOM, OUTSIDE, InvitationChecker, Verdict
from regionguard.invite.fix import lines_to_remove
from regionguard.invite.formats import Document, InputError, load
from regionguard.invite.labels import label_places
from regionguard.invite.parse import parse_invitation

STDIN = "-"


@dataclass
class FileResult:
    path: str
    kind: str | None = None
    entries: list[tuple[str, Verdict]] = field(default_factory=list)   # (part, verdict)
    problems: list[InputError] = field(default_factory=list)
    fatal: InputError | None = None
    fixed_to: str | None = None

    @property
    def outside(self) -> int:
        return sum(1 for _, v in self.entries if v.outside)


def cmd_invite(args: argparse.Namespace) -> int:
    engine = Engine(load_policy(policy_path(args.policy)))
    checker = InvitationChecker(engine, label_places(), args.client)
    outputs = _fix_targets(args.files, args.fix)
    if isinstance(outputs, str):
        print(f"regionguard invite: {outputs}", file=sys.stderr)
        return EXIT_CONFIG
    results = [_check_file(path, args.format, checker, outputs.get(path)) for path in args.files]
    if args.json:
        print(json.dumps(_as_json(results, engine), indent=2))
    else:
        _print_table(results)
    for r in results:   # the errors last on stderr, where a script and a person both see them
        for problem in ([r.fatal] if r.fatal else []) + r.problems:
            print(f"regionguard invite: {problem}", file=sys.stderr)
    status = EXIT_OK
    if any(r.outside for r in results):
        status |= EXIT_BLOCKED
    if any(r.fatal or r.problems for r in results):
        status |= EXIT_INPUT
    return status


def _fix_targets(files: list[str], out: str | None) -> dict[str, str] | str:
    """Where each fixed invitation goes: OUT itself for one file, OUT/NAME for several (OUT a
    directory, made if missing). A message instead when that cannot work."""
    if out is None:
        return {}
    if len(files) == 1:
        target = Path(out)
        if target.is_dir():
            name = "invitation.txt" if files[0] == STDIN else Path(files[0]).name
            return {files[0]: str(target / name)}
        return {files[0]: out}
    if Path(out).exists() and not Path(out).is_dir():
        return f"--fix {out}: with several files, OUT must be a directory (it is a file)"
    names = [Path(f).name for f in files]
    if STDIN in files or len(set(names)) != len(names):
        return "--fix with several files writes OUT/NAME for each: their names must differ " \
               "(and none may be '-')"
    return {f: str(Path(out) / Path(f).name) for f in files}


def _check_file(path: str, kind: str | None, checker: InvitationChecker,
                fix_to: str | None) -> FileResult:
    result = FileResult(path)
    try:
        data = sys.stdin.buffer.read() if path == STDIN else _read(path)
        doc = load(path, data, kind)
    except InputError as e:
        result.fatal = e
        return result
    except Exception as e:  # noqa: BLE001 - a reader's surprise spoils this file, not the others
        result.fatal = InputError(path, "", f"cannot be read as {kind or 'an invitation'}: {e!r}",
                                  "check the file (text, .ics or .eml), or give --format")
        return result
    result.kind = doc.kind
    result.problems.extend(doc.problems)
    removals: dict[int, set[int]] = {}
    for index, part in enumerate(doc.parts):
        items, problems = parse_invitation(part.text, checker.places, checker.is_crc_host)
        for p in problems:
            position = f"{part.where + ' ' if part.where else ''}line {p.line} col {p.column}"
            result.problems.append(InputError(path, position, f"{p.text!r}: {p.message}", p.fix))
        verdicts = [checker.check(item) for item in items]
        result.entries.extend((part.where, v) for v in verdicts)
        removals[index] = lines_to_remove(part.text, verdicts)
    if fix_to is not None:
        _write_fixed(doc, removals, fix_to, result)
    return result


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(path, "", "file not found", "give the path of an invitation "
                         "(text, .ics or .eml)") from None
    except IsADirectoryError:
        raise InputError(path, "", "a directory", "give the invitation files in it") from None
    except OSError as e:
        raise InputError(path, "", f"cannot read: {e.strerror or e}",
                         "check the file and its permissions") from None


def _write_fixed(doc: Document, removals: dict[int, set[int]], target: str, result: FileResult) -> None:
    try:
        data = doc.fixed(removals)
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_bytes(data)
    except OSError as e:
        result.problems.append(InputError(target, "", f"cannot write the fixed invitation: "
                                          f"{e.strerror or e}", "choose a writable --fix OUT"))
        return
    result.fixed_to = target


# --- output -------------------------------------------------------------------------------------


def _place(v: Verdict) -> str:
    if v.region and v.country and v.region != v.country:
        return f"{v.region} ({v.country})"
    return v.region or v.country or "-"


def _print_table(results: list[FileResult]) -> None:
    totals = {ALLOWED: 0, OUTSIDE: 0, NOT_ZOOM: 0}
    disagreeing = 0
    for r in results:
        if r.fatal:
            print(f"{r.path}: not checked (see the error below)")
            continue
        print(f"{r.path} ({r.kind}): {len(r.entries)} entries, {r.outside} outside the policy"
              + (f"; fixed copy: {r.fixed_to}" if r.fixed_to else ""))
        rows = [("WHERE", "KIND", "ENTRY", "LABEL", "PLACE", "VERDICT", "REASON")]
        for where, v in r.entries:
            i = v.item
            position = f"{where + ' ' if where else ''}{i.line}:{i.column}"
            kind = f"{i.kind}/{i.protocol}" if i.kind == "crc" else i.kind
            label = (i.label or "") + (" (disagrees)" if v.label_agrees is False else "")
            rows.append((position, kind, i.text, label, _place(v), v.verdict, v.reason))
            totals[v.verdict] += 1
            disagreeing += v.label_agrees is False
        # the place is never cut; an entry or a label longer than 40 characters is
        widths = [max(len(row[c]) for row in rows) if c in (0, 4, 5)
                  else min(max(len(row[c]) for row in rows), 40) for c in range(6)]
        for row in rows:
            cells = [row[c][:widths[c]].ljust(widths[c]) for c in range(6)]
            print("  " + "  ".join(cells) + "  " + row[6])
    print(f"{sum(totals.values())} entries: {totals[ALLOWED]} allowed, {totals[OUTSIDE]} outside the "
          f"policy, {totals[NOT_ZOOM]} not Zoom's; {disagreeing} labels disagree with the evidence")


def _as_json(results: list[FileResult], engine: Engine) -> dict:
    files = []
    for r in results:
        files.append({
            "file": r.path, "format": r.kind,
            "error": str(r.fatal.args[0]) if r.fatal else None,
            "problems": [{"position": p.position, "message": p.message, "fix": p.fix,
                          "file": p.file} for p in r.problems],
            "entries": [{"part": where, **v.to_dict()} for where, v in r.entries],
            "outside": r.outside,
            "fixed": r.fixed_to,
        })
    return {"policy": engine.policy.path, "policy_version": engine.policy.version_id,
            "outside": sum(r.outside for r in results),
            "unreadable": sum(1 for r in results if r.fatal or r.problems), "files": files}
