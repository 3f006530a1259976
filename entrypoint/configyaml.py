"""The pool file's text as a YAML node tree: bounded in size and depth, UTF-8, syntax errors with their line."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from entrypoint.configvalues import ERB_HINT
from entrypoint.poolconfig import ConfigError

# A pool file is a few dozen lines, nested 4 deep at most (the file, a section, a group, its env): a huge or
# deep one is a mistake, and must not cost more than a moment.
_MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 20
NULL_TAG = "tag:yaml.org,2002:null"
_BRACKET_OR_NEWLINE = re.compile(r"[\[\]{}\n]")


def compose(path: Path, shown: str) -> MappingNode:
    """The file's top-level mapping, with line marks on every node; ConfigError when there is none."""
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_FILE_BYTES + 1)
    except OSError as err:
        raise ConfigError.one(shown, None, "", f"cannot read: {err.strerror}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise ConfigError.one(shown, None, "", "larger than 1 MiB; a pool file is a few lines of queue: count")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError.one(
            shown, line, "", "not UTF-8 text (a binary or differently encoded file?)"
        ) from None
    # PyYAML's scanner reads up to 1024 characters ahead on a line and weighs each bracket opened
    # there against every other: brackets piled up on one line are counted first, from the text.
    line = _line_with_open_brackets(text)
    if line is not None:
        raise ConfigError.one(shown, line, "", f"more than {MAX_DEPTH} brackets open on one line; "
                              "a pool file nests 4 levels deep at most")
    try:
        root = yaml.compose(text, Loader=_DepthBoundLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        message = f"YAML syntax error: {err.problem or err.context}"
        if "<%" in text:
            message += f" ({ERB_HINT})"
        raise ConfigError.one(shown, None if mark is None else mark.line + 1, "", message) from None
    except _TooDeep as err:
        raise ConfigError.one(shown, err.line, "",
                              f"nested more than {MAX_DEPTH} levels deep; a pool file needs 4 at most") from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        raise ConfigError.one(
            shown, line, "", f"character U+{err.character:04X} is not allowed in YAML"
        ) from None
    if root is None or (isinstance(root, ScalarNode) and root.tag == NULL_TAG):
        raise ConfigError.one(shown, None, "", "empty file: expected queue: count entries")
    if not isinstance(root, MappingNode):
        raise ConfigError.one(shown, line_of(root), "", f"expected queue: count entries, got {kind_of(root)}")
    return root


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


class _DepthBoundLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a collection nested more than MAX_DEPTH deep as soon as it opens.

    The composer recurses once per level, so 10 KB of brackets cost seconds of CPU (and the
    stack) before being refused; counting the parser's events as the composer takes them stops
    at the first level too many, before it is composed.
    """

    depth = 0

    def get_event(self) -> yaml.Event:
        event = super().get_event()
        if isinstance(event, yaml.CollectionStartEvent):
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _TooDeep(event.start_mark.line + 1)
        elif isinstance(event, yaml.CollectionEndEvent):
            self.depth -= 1
        return event


def _line_with_open_brackets(text: str) -> int | None:
    """The first line on which more than MAX_DEPTH of [ and { are open at once, quotes or not."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return None
    line, depth = 1, 0
    for match in _BRACKET_OR_NEWLINE.finditer(text):
        if match[0] == "\n":
            line, depth = line + 1, 0
        elif match[0] in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line
        else:
            depth = max(0, depth - 1)
    return None


def line_of(node: Node) -> int:
    return node.start_mark.line + 1


def kind_of(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    return "a list" if isinstance(node, SequenceNode) else "a single value"
