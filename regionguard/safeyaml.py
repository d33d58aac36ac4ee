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
The rules are checked on the parser's event stream before anything is built, so the work is
linear in the (bounded) size of the file, and the first broken rule stops the reading with one
Problem naming the file, line and fix.
"""

from __future__ import annotations

from typing import Any

import yaml

from .errors import ConfigError, Problem

MAX_BYTES = 4 * 1024 * 1024   # a policy with tens of thousands of overrides fits easily
MAX_DEPTH = 32                # a policy nests 5 deep at most

# libyaml's parser when PyYAML was built with it (the usual wheels): the same events, faster
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str, filename: str, error: type[ConfigError] = ConfigError
              ) -> tuple[Any, dict[tuple, int]]:
    """Parse `text` under the rules above. Returns the document and a map from each path (keys
    and list indices) to its 1-based line. Raises `error` with the first problem found."""

    def fail(message: str, fix: str, line: int | None = None) -> ConfigError:
        return error([Problem(filename, "", message, fix, line)])

    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise fail(f"the file is {size} bytes, more than the {MAX_BYTES} a policy may have",
                   "split the file or remove what is not needed (a policy is a few kilobytes)")
    try:
        _check_events(text, fail)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            lines = _line_map(node, fail)
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        raise fail(f"not valid YAML: {_short(str(problem))}",
                   "fix the YAML syntax at that line (indentation, quotes, colons)",
                   mark.line + 1 if mark else None) from None
    except (ValueError, OverflowError) as e:   # e.g. an integer too long to convert
        raise fail(f"a value cannot be read: {_short(str(e))}", "shorten or quote the value") from None
    return data, lines


def _check_events(text: str, fail: Any) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        line = event.start_mark.line + 1 if event.start_mark else None
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise fail("anchors and aliases (&name, *name) are not allowed in a policy",
                       "write each value out in full where it is used", line)
        if getattr(event, "tag", None) is not None:
            raise fail(f"explicit YAML tags ({_short(str(event.tag))}) are not allowed in a policy",
                       "remove the tag; quote the value if it must be read as text", line)
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise fail(f"nested more than {MAX_DEPTH} levels deep",
                           "a policy nests a few levels at most: compare with config/policy.yaml",
                           line)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _line_map(root: yaml.Node | None, fail: Any) -> dict[tuple, int]:
    """Path → line for every node; rejects duplicate, merge and non-scalar keys. Iterative: the
    depth is already bounded, but a walk needs no recursion."""
    lines: dict[tuple, int] = {}
    stack: list[tuple[yaml.Node, tuple]] = [(root, ())] if root is not None else []
    while stack:
        node, path = stack.pop()
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                line = key.start_mark.line + 1
                if not isinstance(key, yaml.ScalarNode):
                    raise fail("a key must be plain text, not a list or mapping",
                               "write `name: value`", line)
                if key.tag == "tag:yaml.org,2002:merge":   # an unquoted <<
                    raise fail("merge keys (<<) are not allowed in a policy",
                               "write the keys out in full", line)
                if key.value in seen:
                    raise fail(f"key {_short(key.value)!r} given twice in one mapping (first at line "
                               f"{seen[key.value]}); YAML would silently keep only the last",
                               "keep one of the two and remove the other", line)
                seen[key.value] = line
                lines[path + (key.value,)] = line
                stack.append((value, path + (key.value,)))
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                stack.append((value, path + (i,)))
    return lines


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
