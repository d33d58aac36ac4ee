"""The README's examples are real output: every code block marked with
`<!-- checked: tests/test_readme.py -->` is run here and compared with what the commands print.

In a checked block, a line `$ regionguard ARGS [> FILE]` is a command (run in a fresh directory,
so each block starts from what a `pip install` gives: no checkout paths), and the lines after it,
up to the next `$`, are what it prints (standard output and error, as a terminal shows them). `…` stands for any text within a line (what changes
with the data set: file names, versions, long notes); a line that is only `…` stands for any
number of lines. Only offline commands are allowed: anything else fails the test.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

from tests.conftest import BIN, ROOT

MARK = "<!-- checked: tests/test_readme.py -->"
FILE_MARK = re.compile(r"<!-- file: ([\w.-]+) -->")   # a block that is the file the examples read
# commands that never touch the network when given addresses and files (explain: addresses only)
OFFLINE = {"explain", "validate", "regions", "policy", "pac", "replay", "invite", "--version"}


def checked_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(line number, lines) of each fenced block right after a MARK line."""
    lines = text.splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        assert lines[i + 1].startswith("```"), f"README.md:{i + 1}: {MARK} must precede a code block"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        blocks.append((i + 2, lines[i + 2:end]))
    return blocks


def example_files(text: str) -> dict[str, str]:
    """The blocks marked `<!-- file: NAME -->`: written into each example's directory."""
    lines = text.splitlines()
    files = {}
    for i, line in enumerate(lines):
        if m := FILE_MARK.fullmatch(line.strip()):
            end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
            files[m.group(1)] = "\n".join(lines[i + 2:end]) + "\n"
    return files


def steps(block: list[str]) -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for line in block:
        if line.startswith("$ "):
            out.append((line[2:], []))
        else:
            assert out, f"output before any command: {line!r}"
            out[-1][1].append(line)
    return out


def pattern(expected: list[str]) -> re.Pattern[str]:
    parts = []
    for line in expected:
        if line.strip() == "…":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*?".join(re.escape(p) for p in line.rstrip().split("…")) + r"[ \t]*\n")
    return re.compile("".join(parts))


def run_step(command: str, cwd) -> str:
    argv = shlex.split(command)
    target = None
    if len(argv) >= 2 and argv[-2] == ">":
        argv, target = argv[:-2], argv[-1]
    assert argv[0] == "regionguard" and argv[1] in OFFLINE, f"not an offline command: {command}"
    if argv[1] == "explain":   # addresses only: a hostname target would be resolved
        assert "--nameserver" not in argv, command
        args = iter(argv[2:])
        for arg in args:
            if arg.startswith("-"):
                if arg not in ("--json",):
                    next(args, None)   # the option's value
            else:
                assert re.fullmatch(r"[0-9a-fA-F.:]+", arg), f"explain of a name needs DNS: {command}"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # what a terminal shows: standard error too (validate's findings go there), in order
    r = subprocess.run([str(BIN / "regionguard"), *argv[1:]], cwd=cwd, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT if target is None else subprocess.PIPE,
                       text=True, timeout=120, env=env)
    assert "Traceback" not in r.stdout + (r.stderr or ""), r.stdout
    if target is not None:
        (cwd / target).write_text(r.stdout)
        return ""
    return r.stdout


README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = checked_blocks(README)
FILES = example_files(README)


def test_the_readme_has_checked_examples():
    # explain (with and without --host), regions, policy example, --version at least
    assert len(BLOCKS) >= 4
    assert sum(len(steps(b)) for _, b in BLOCKS) >= 6


@pytest.mark.parametrize("line, block", BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_readme_example_is_real_output(line, block, tmp_path):
    for name, content in FILES.items():
        (tmp_path / name).write_text(content)
    for command, expected in steps(block):
        out = run_step(command, tmp_path)
        assert pattern(expected).fullmatch(out), (
            f"README.md:{line}: `{command}` printed\n{out}\nbut the README shows\n" + "\n".join(expected))


def test_placeholders_match_only_what_they_stand_for():
    # the checker itself must be able to fail: a wrong word, a missing or an extra line
    assert pattern(["a … c", "…", "end"]).fullmatch("a b c\nx\ny\nend\n")
    assert not pattern(["a … c"]).fullmatch("a b d\n")
    assert not pattern(["a", "b"]).fullmatch("a\n")
    assert not pattern(["a"]).fullmatch("a\nextra\n")


NOT_CHECKED = re.compile(r"<!-- not checked: \S.* -->")


def fenced_blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """(line number of the opening fence, the line before it, the block's lines) of each
    fenced block."""
    lines = text.splitlines()
    blocks, start = [], None
    for i, line in enumerate(lines):
        if not line.startswith("```"):
            continue
        if start is None:
            start = i
        else:
            blocks.append((start + 1, lines[start - 1].strip() if start else "", lines[start + 1:i]))
            start = None
    return blocks


def test_every_example_with_output_is_checked_or_says_why_not():
    # a block that shows a prompt (`$ command`) shows what the command prints: it is either run
    # here, or its marker says why it cannot be (a measurement, a benchmark)
    unmarked = [n for n, before, block in fenced_blocks(README)
                if any(line.startswith("$ ") for line in block)
                and before != MARK and not NOT_CHECKED.fullmatch(before)]
    assert not unmarked, (f"README.md lines {unmarked}: a block with `$` commands needs {MARK} or "
                          "<!-- not checked: WHY --> on the line before it")


def readme_commands(text: str) -> list[tuple[int, list[str]]]:
    """(line, argv after `regionguard`) of every regionguard command line in a fenced block:
    continuation lines joined; comments, pipes and redirections cut; synopses (`[--opt ...]`)
    left out, they show the grammar rather than a command."""
    found = []
    for n, _before, block in fenced_blocks(text):
        joined: list[tuple[int, str]] = []
        for k, line in enumerate(block):
            if joined and joined[-1][1].endswith("\\"):
                joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + line.strip())
            else:
                joined.append((n + 1 + k, line.strip()))
        prompted = any(line.startswith("$ ") for _, line in joined)   # the rest is output
        for line_no, line in joined:
            if prompted and not line.startswith("$ "):
                continue
            m = re.match(r"^(?:\$ |sudo )?(?:\S*/)?regionguard (.*)$", line)
            if m is None or re.search(r"\[-", m.group(1)):
                continue
            command = re.sub(r"\s+#.*$", "", m.group(1))
            command = re.split(r"\s(?:\||>|2>&1|2>|&&|;|&)(?:\s|$)", command)[0]
            found.append((line_no, shlex.split(command)))
    return found


def test_every_command_in_the_readme_is_one_the_program_takes():
    # an option renamed or removed fails here, also for the commands no test can run (root,
    # network, long-running)
    import contextlib
    import io

    from regionguard.cli import build_parser

    commands = readme_commands(README)
    assert len(commands) >= 30
    parser = build_parser()
    wrong = []
    for line, argv in commands:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                _, extra = parser.parse_known_args(argv)
        except SystemExit as e:
            if e.code:
                wrong.append(f"README.md:{line}: regionguard {shlex.join(argv)}: {err.getvalue().strip()}")
            continue
        if extra and argv[0] != "run":   # run passes what it does not know on to mitmdump
            wrong.append(f"README.md:{line}: regionguard {shlex.join(argv)}: not taken: {extra}")
    assert not wrong, "\n".join(wrong)


def test_the_command_check_can_fail():
    parser_input = "```sh\nregionguard dns --no-such-option\nregionguard explain 192.0.2.1 \\\n  --json\n```\n"
    assert readme_commands(parser_input) == [(2, ["dns", "--no-such-option"]),
                                             (3, ["explain", "192.0.2.1", "--json"])]
    assert readme_commands("```\n$ regionguard --version\nregionguard 0.1\n```\n") == [(2, ["--version"])]
    bad = "text\n```\n$ regionguard regions\n```\n"
    assert [n for n, before, block in fenced_blocks(bad)
            if any(x.startswith("$ ") for x in block) and before != MARK] == [2]
