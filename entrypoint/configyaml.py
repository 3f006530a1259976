"""The pool file's text as a YAML node tree: bounded in size, UTF-8, syntax errors with their line."""

from __future__ import annotations

from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from entrypoint.configvalues import ERB_HINT
from entrypoint.poolconfig import ConfigError

# A pool file is a few dozen lines: a huge one is a mistake, and must not cost more than a moment.
_MAX_FILE_BYTES = 1024 * 1024
NULL_TAG = "tag:yaml.org,2002:null"


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
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        message = f"YAML syntax error: {err.problem or err.context}"
        if "<%" in text:
            message += f" ({ERB_HINT})"
        raise ConfigError.one(shown, None if mark is None else mark.line + 1, "", message) from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        raise ConfigError.one(
            shown, line, "", f"character U+{err.character:04X} is not allowed in YAML"
        ) from None
    except RecursionError:
        raise ConfigError.one(shown, None, "", "nested too deeply for a pool file") from None
    if root is None or (isinstance(root, ScalarNode) and root.tag == NULL_TAG):
        raise ConfigError.one(shown, None, "", "empty file: expected queue: count entries")
    if not isinstance(root, MappingNode):
        raise ConfigError.one(shown, line_of(root), "", f"expected queue: count entries, got {kind_of(root)}")
    return root


def line_of(node: Node) -> int:
    return node.start_mark.line + 1


def kind_of(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    return "a list" if isinstance(node, SequenceNode) else "a single value"
