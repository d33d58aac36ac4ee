"""Reading YAML that someone else wrote: bounded in size, depth and work, strict about keys.

`yaml.safe_load` refuses to build arbitrary objects, but not to do unbounded work or to guess:
- aliases expand: a 420-byte "billion laughs" file builds gigabytes of lists;
- nesting recurses: a deeply nested file crashes the loader with RecursionError;
- a key given twice in one mapping silently keeps the last value;
- tags (`!!set`, `!!binary`, `!!omap`) and merge keys (`<<`) build shapes no reader expects.

`load_yaml()` reads one configuration document under these rules instead:
- at most MAX_BYTES of text (checked before any parsing);
- no anchors, aliases, explicit tags or merge keys: a configuration file needs none of them;
- nesting at most MAX_DEPTH collections deep;
- keys are plain scalars, each at most once per mapping (the error names both lines).
The document is built from the parser's event stream in one pass that checks the rules as it
goes, so the work is linear in the (bounded) size of the file and the first broken rule stops
the reading with one Problem naming the file, line and fix.
"""

from __future__ import annotations

from typing import Any

import yaml

from regionguard.core.errors import ConfigError, Problem

MAX_BYTES = 4 * 1024 * 1024   # a policy with tens of thousands of overrides fits easily
MAX_DEPTH = 32                # a policy nests 5 deep at most

# libyaml's parser when PyYAML was built with it (the usual wheels): the same events, faster
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str, filename: str, error: type[ConfigError] = ConfigError
              ) -> tuple[Any, dict[tuple, int]]:
    """Parse `text` under the rules above. Returns the document and a map from each path (keys
    and list indices) to its 1-based line. Raises `error` with the first problem found."""

    def fail(message: str, fix: str, line: int | None = None, path: tuple = ()) -> ConfigError:
        return error([Problem(filename, _dotted(path), message, fix, line)])

    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise fail(f"the file is {size} bytes, more than the {MAX_BYTES} a policy may have",
                   "split the file or remove what is not needed (a policy is a few kilobytes)")
    try:
        return _read(text, fail)
    except yaml.YAMLError as e:
        line, message, fix = _syntax_error(text, e)
        raise fail(message, fix, line) from None
    except (ValueError, OverflowError) as e:   # e.g. an integer too long to convert
        raise fail(f"a value cannot be read: {_short(str(e))}", "shorten or quote the value") from None


def _syntax_error(text: str, e: yaml.YAMLError) -> tuple[int | None, str, str]:
    """(1-based line, message, fix) for PyYAML's error. PyYAML marks where it noticed the
    problem; for a `{` or `[` left open, that is the start of the next key, a line after the
    missing bracket. Then the line reported is the last one with content before it (where the
    bracket belongs), and the message names the line that opened it (PyYAML's context_mark)."""
    problem_mark = getattr(e, "problem_mark", None)
    context_mark = getattr(e, "context_mark", None)
    problem = str(getattr(e, "problem", None) or e)
    context = str(getattr(e, "context", None) or "")
    fix = "fix the YAML syntax at that line (indentation, quotes, colons)"
    if (problem_mark is not None and context_mark is not None
            and context.startswith("while parsing a flow ")
            and problem_mark.line > context_mark.line):
        closer = "}" if "mapping" in context else "]"
        opener = "{" if closer == "}" else "["
        lines = text.splitlines()
        end = next((i for i in range(min(problem_mark.line, len(lines)) - 1,
                                     context_mark.line - 1, -1)
                    if lines[i].split("#", 1)[0].strip()), context_mark.line)
        return (end + 1,
                f"not valid YAML: the `{opener}` opened at line {context_mark.line + 1} is not "
                f"closed ({_short(problem)} at line {problem_mark.line + 1})",
                f"fix the YAML syntax at that line: close it with `{closer}` at the end of "
                f"line {end + 1}")
    mark = problem_mark or context_mark
    return (mark.line + 1 if mark else None, f"not valid YAML: {_short(problem)}", fix)


class _Frame:
    """A mapping or list being filled, with its path and, in a mapping, the key read last."""

    __slots__ = ("container", "path", "key", "key_line", "has_key")

    def __init__(self, container: dict | list, path: tuple) -> None:
        self.container = container
        self.path = path
        self.key: Any = None
        self.key_line = 0
        self.has_key = False


def _read(text: str, fail: Any) -> tuple[Any, dict[tuple, int]]:
    """Build the document from the parser's events in one pass, checking every rule as it goes:
    nothing is composed or constructed before it is known to be allowed."""
    resolver = yaml.resolver.Resolver()
    constructor = yaml.constructor.SafeConstructor()
    lines: dict[tuple, int] = {}
    stack: list[_Frame] = []
    root: Any = None
    documents = 0

    def here() -> tuple:
        """The path of the node the current event starts (for error messages)."""
        if not stack:
            return ()
        frame = stack[-1]
        if isinstance(frame.container, list):
            return frame.path + (len(frame.container),)
        return frame.path + (frame.key,) if frame.has_key else frame.path

    for event in yaml.parse(text, Loader=_Loader):
        kind = type(event)
        if kind is yaml.DocumentStartEvent:
            documents += 1
            if documents > 1:
                raise fail("more than one YAML document (a second `---`)",
                           "keep one policy per file", event.start_mark.line + 1)
            continue
        if kind in (yaml.StreamStartEvent, yaml.StreamEndEvent, yaml.DocumentEndEvent):
            continue
        if kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
            stack.pop()
            continue
        line = event.start_mark.line + 1
        if kind is yaml.AliasEvent or event.anchor is not None:
            raise fail("anchors and aliases (&name, *name) are not allowed in a policy",
                       "write each value out in full where it is used", line, here())
        if event.tag is not None:
            raise fail(f"explicit YAML tags ({_short(str(event.tag))}) are not allowed in a policy",
                       "remove the tag; quote the value if it must be read as text", line, here())
        value: Any
        if kind is yaml.ScalarEvent:
            value = _scalar(event, resolver, constructor)
        elif kind is yaml.MappingStartEvent:
            value = {}
        else:
            value = []
        if stack:
            frame = stack[-1]
            container = frame.container
            if isinstance(container, list):
                path = frame.path + (len(container),)
                container.append(value)
                lines.setdefault(path, line)
            elif not frame.has_key:
                if kind is not yaml.ScalarEvent:
                    raise fail("a key must be plain text, not a list or mapping",
                               "write `name: value`", line, frame.path)
                if event.implicit[0] and event.value == "<<":
                    raise fail("merge keys (<<) are not allowed in a policy",
                               "write the keys out in full", line, frame.path)
                if value in container:
                    raise fail(f"key {_short(str(event.value))!r} given twice in one mapping "
                               f"(first at line {lines.get(frame.path + (value,))}); YAML would "
                               "silently keep only the last", "keep one of the two and remove the other",
                               line, frame.path + (value,))
                frame.key, frame.key_line, frame.has_key = value, line, True
                continue
            else:
                path = frame.path + (frame.key,)
                container[frame.key] = value
                lines[path] = frame.key_line
                frame.has_key = False
        else:
            path = ()
            root = value
            lines[path] = line
        if kind is not yaml.ScalarEvent:
            if len(stack) >= MAX_DEPTH:
                raise fail(f"nested more than {MAX_DEPTH} levels deep",
                           "a policy nests a few levels at most: compare with config/policy.yaml", line,
                           path)
            stack.append(_Frame(value, path))
    return root, lines


def _scalar(event: yaml.ScalarEvent, resolver: Any, constructor: Any) -> Any:
    """What YAML makes of a scalar: text when quoted; when plain, by YAML 1.1's implicit types
    (null, bool, int, float, timestamp), as yaml.safe_load does."""
    if not event.implicit[0]:
        return event.value
    tag = resolver.resolve(yaml.ScalarNode, event.value, (True, False))
    build = constructor.yaml_constructors.get(tag)
    if tag == "tag:yaml.org,2002:str" or build is None:   # `<<` and `=` stay text (<< refused as a key)
        return event.value
    node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
    return build(constructor, node)


def _dotted(path: tuple) -> str:
    """('overrides', 0, 'match') → 'overrides[0].match', as the policy checker writes fields."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) and not isinstance(p, bool) else (f".{p}" if out else str(p))
    return _short(out)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
