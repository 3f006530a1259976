"""Heroku's one-string command: expand $VARS and split it as sh would, or hand it to /bin/sh when it needs one."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

SHELL = "/bin/sh"
# Characters that only a shell can interpret when they stand outside quotes: operators,
# redirections, subshells, command substitution, globs, comments.
_SHELL_ONLY = set("|&;<>()`*?[#")
# A first word that is a shell keyword or a builtin that changes the shell itself.
_SHELL_FIRST_WORDS = frozenset(
    (
        "if then else elif fi case esac for while until do done function { } ! [[ "
        "cd export source . set unset ulimit umask eval trap alias read wait shift exit "
        "return local declare readonly"
    ).split()
)
# What separates words in sh: blanks and newlines (a no-break space is part of a word).
BLANKS = " \t\n"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class Word(NamedTuple):
    text: str  # after quote removal and $VAR expansion
    start: int  # offset of the word in the original line


class Scan(NamedTuple):
    words: tuple[Word, ...]
    needs_shell: bool


class Command(NamedTuple):
    argv: tuple[str, ...]
    via_shell: bool  # run as `/bin/sh -c LINE`: signal its whole process group


def parse_line(line: str, env: Mapping[str, str]) -> Command:
    """The command a one-string `run:` line means: direct when we can, else under /bin/sh."""
    scan = scan_line(line, env)
    words = [word.text for word in scan.words]
    if words and words[0] == "exec":
        words = words[1:]  # `exec cmd` in a shell means: run cmd with no shell left, as we do
    if scan.needs_shell or not words or words[0] in _SHELL_FIRST_WORDS:
        return Command((SHELL, "-c", line), via_shell=True)
    if _ASSIGNMENT.match(words[0]):
        return Command((SHELL, "-c", line), via_shell=True)
    return Command(tuple(words), via_shell=False)


def scan_line(line: str, env: Mapping[str, str]) -> Scan:
    """Split into words with quotes removed and $VAR, ${VAR}, ${VAR:-default} expanded.

    Whatever we would get wrong (operators, globs, command substitution, field splitting of
    an unquoted value with spaces) only sets `needs_shell`: the caller then gives the line to sh.
    """
    scanner = _Scanner(line, env)
    words = []
    while (word := scanner.next_word()) is not None:
        words.append(word)
    return Scan(tuple(words), scanner.needs_shell)


class _Scanner:
    def __init__(self, line: str, env: Mapping[str, str]) -> None:
        self.line = line
        self.env = env
        self.pos = 0
        self.needs_shell = False

    def next_word(self) -> Word | None:
        line = self.line
        while self.pos < len(line) and line[self.pos] in BLANKS:
            if line[self.pos] == "\n" and line[self.pos :].strip(BLANKS):
                self.needs_shell = True  # a newline ends a command: several commands need sh
            self.pos += 1
        if self.pos >= len(line):
            return None
        start = self.pos
        text: list[str] = []
        quoted = False
        while self.pos < len(line) and line[self.pos] not in BLANKS:
            char = line[self.pos]
            if char == "'":
                end = line.find("'", self.pos + 1)
                if end < 0:
                    return self._give_up(start)
                text.append(line[self.pos + 1 : end])
                self.pos = end + 1
                quoted = True
            elif char == '"':
                quoted = True
                if not self._double_quoted(text):
                    return self._give_up(start)
            elif char == "\\":
                escaped = line[self.pos + 1 : self.pos + 2]
                if escaped != "\n":  # backslash-newline continues the line, as in sh
                    text.append(escaped)
                self.pos += 2
            elif char == "$":
                value = self._expansion()
                if value is None:
                    return self._give_up(start)
                if any(c in BLANKS or c in "*?[" for c in value):
                    self.needs_shell = True  # sh would split it into words and expand globs
                text.append(value)
            elif char in _SHELL_ONLY or (char == "~" and self.pos == start):
                self.needs_shell = True
                text.append(char)
                self.pos += 1
            else:
                text.append(char)
                self.pos += 1
        joined = "".join(text)
        if not joined and not quoted:
            return self.next_word()  # an unquoted expansion of an empty value is no word at all
        return Word(joined, start)

    def _give_up(self, start: int) -> Word:
        self.needs_shell = True
        self.pos = len(self.line)
        return Word(self.line[start:], start)

    def _double_quoted(self, text: list[str]) -> bool:
        line = self.line
        self.pos += 1
        while self.pos < len(line):
            char = line[self.pos]
            if char == '"':
                self.pos += 1
                return True
            if char == "\\" and line[self.pos + 1 : self.pos + 2] == "\n":
                self.pos += 2  # a continued line
            elif char == "\\" and line[self.pos + 1 : self.pos + 2] in ('"', "\\", "$", "`"):
                text.append(line[self.pos + 1])
                self.pos += 2
            elif char == "$":
                value = self._expansion()
                if value is None:
                    return False
                text.append(value)
            elif char == "`":
                return False
            else:
                text.append(char)
                self.pos += 1
        return False

    def _expansion(self) -> str | None:
        """Expand the $ at self.pos; None when only a shell could (e.g. $(cmd), ${x%y}, $1)."""
        line = self.line
        after = self.pos + 1
        if line.startswith("{", after):
            end = line.find("}", after)
            if end < 0:
                return None
            inner = line[after + 1 : end]
            name, sep, default = inner.partition(":-")
            if not _NAME.fullmatch(name) or any(c in default for c in "$`'\"\\"):
                return None
            self.pos = end + 1
            value = self.env.get(name, "")
            return default if sep and not value else value
        match = _NAME.match(line, after)
        if match:
            self.pos = match.end()
            return self.env.get(match.group(), "")
        if after < len(line) and not line[after].isspace() and line[after] not in "\"'":
            return None  # $(...), $1, $?, $$ and friends
        self.pos = after
        return "$"
