"""`regionguard report`: where did the meeting traffic go, and what was stopped? From audit logs.

    regionguard report audit.jsonl audit.jsonl.1             # summary in the terminal
    regionguard report audit.jsonl --html report.html        # self-contained page: charts and map
    regionguard report audit.jsonl --png charts.png          # the charts alone (needs matplotlib)
    regionguard report audit.jsonl --json                    # the same totals for scripts

Exit codes: 0 report written; 2 usage error or an output that cannot be written; 4 some input
could not be read (the rest is in the report).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from regionguard.exits import EXIT_CONFIG, EXIT_INPUT, EXIT_OK
from regionguard.report.html import render_html
from regionguard.report.summary import summarise
from regionguard.report.text import format_text


def cmd_report(args: argparse.Namespace) -> int:
    summary = summarise(args.files, progress=args.progress)
    if args.json:
        sys.stdout.write(json.dumps(summary.to_dict(args.top), indent=1) + "\n")
        for p in summary.problems[:20]:
            print(f"regionguard report: {p}", file=sys.stderr)
    else:
        sys.stdout.write(format_text(summary, args.top))
    status = EXIT_INPUT if summary.problem_count else EXIT_OK
    if args.html:
        if not _write(args.html, render_html(summary, title=args.title, top=args.top).encode()):
            return EXIT_CONFIG
        print(f"HTML report written to {args.html}", file=sys.stderr)
    if args.png:
        try:   # matplotlib is the optional `report` extra: imported only when asked for
            from regionguard.report.png import render_png
        except ImportError as e:
            print(f"regionguard report: --png needs matplotlib ({e}); install it with "
                  "pip install 'regionguard[report]'", file=sys.stderr)
            return EXIT_CONFIG
        try:
            render_png(summary, args.png, title=args.title)
        except OSError as e:
            print(f"regionguard report: cannot write --png {args.png}: {e}", file=sys.stderr)
            return EXIT_CONFIG
        print(f"PNG charts written to {args.png}", file=sys.stderr)
    return status


def _write(path: str, data: bytes) -> bool:
    try:
        Path(path).write_bytes(data)
        return True
    except OSError as e:
        print(f"regionguard report: cannot write {path}: {e.strerror or e}", file=sys.stderr)
        return False


__all__ = ["cmd_report"]
