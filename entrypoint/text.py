"""Text from outside (names, paths, values) shown on one line: control characters escaped, never obeyed."""

from __future__ import annotations


def one_line(text: str) -> str:
    """One line whatever a name or path holds: control characters are shown escaped, never obeyed."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
