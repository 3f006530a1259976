"""Reading the command line: our options (argparse, never in PID 1), the command, Heroku's one string."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, NamedTuple

from entrypoint import __version__
from entrypoint.childcall import NoAnswer, call_in_child
from entrypoint.cmdline import BLANKS, Command, parse_line, scan_line

if TYPE_CHECKING:
    import argparse

    # What the options' values come as: argparse's namespace, or a plain one sent back by the child.
    Options = argparse.Namespace | SimpleNamespace

DESCRIPTION = """\
With COMMAND: run it as PID 1's child - reap zombies, forward signals, stop with grace.
Without COMMAND: run the worker pool from the config file or WORKER_* variables."""

EPILOG = """\
environment:
  TERM_TIMEOUT       --term-timeout (default 25 when $DYNO is set, else 8)
  TERM_DELAY         --term-delay
  TERM_SENT_TO_ALL   1/0: --term-sent-to-all / --no-term-sent-to-all (default: 1 when $DYNO is set)
  POOL_CONFIG, RESQUE_POOL_CONFIG
                     the pool's config file when --config is not given
  WORKER_CONCURRENCY, WORKER_COMMAND, QUEUES
                     a one-group pool when there is no config file
  WORKER_PRELOAD     --preload, comma-separated
  APP_ENV, RACK_ENV, RAILS_ENV, RESQUE_ENV
                     the config file's environment section (first one set wins)
  MEMORY_LIMIT       --memory-limit
  POOL_SOCKET        --socket
  EXIT_ON_CRASH_LOOP 1/0: --exit-on-crash-loop
  METRICS_PORT       --metrics-port
  REDIS_URL          where the default RQ workers find Redis, the pool publishes its
                     fleet entry and --fleet reads every pool's

exit status:
  COMMAND's own status, 128+N when signal N killed it (0 for codes given to -e)
  126/127 COMMAND is not executable / not found
  0 the pool stopped in time      1 workers had to be KILLed at the term timeout
  2 bad option, variable or config file
  3 a worker group crash-looped and --exit-on-crash-loop is on
  4 --status/--health/--scale/--reload found no running pool; --fleet could not reach Redis
  --health: 0 healthy, 1 a group is crash-looping or memory is over the guard (one line says which)"""


class UsageError(Exception):
    """Bad flags or environment: one line on stderr and exit status 2."""


# Every option's value when it is not given: build_parser's defaults, and the whole of a command
# line that starts with the command (read without argparse).
DEFAULTS: dict[str, object] = {
    "term_timeout": None, "term_delay": None, "term_sent_to_all": None,
    "process_group": False, "rewrite": [], "remap_exit": [],
    "config": None, "check": False, "exit_on_crash_loop": None, "memory_limit": None, "prefix": None,
    "preload": None, "metrics_port": None,
    "socket": None, "status": False, "json": False, "health": False, "scale": None, "reload": False,
    "fleet": False,
    "verbose": 0,
}


def _terminal_columns() -> int:
    """$COLUMNS, else the terminal's width, else 80: what shutil.get_terminal_size() says."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


def build_parser() -> argparse.ArgumentParser:
    """Every option with its help. argparse is imported only here: with gettext and locale it
    costs 0.8 MB, which an init whose command line starts with the command never pays."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str):  # type: ignore[override]
            raise UsageError(message)

    class HelpFormatter(argparse.RawDescriptionHelpFormatter):
        """argparse's, told the terminal's width: its own way asks shutil, on every add_argument.

        shutil brings bz2, lzma and zlib, 0.6 MB that PID 1 would carry for a --help it never prints.
        """

        def __init__(self, prog: str) -> None:
            super().__init__(prog, width=_terminal_columns() - 2)

    parser = Parser(
        prog="entrypoint",
        usage="entrypoint [OPTIONS] [--] COMMAND [ARG...]\n"
        "       entrypoint [OPTIONS]                      (the worker pool)\n"
        "       entrypoint --check | --status [--json] | --health | --scale GROUP=N | --reload\n"
        "       entrypoint --fleet [--json]",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(**DEFAULTS)
    stop = parser.add_argument_group("stopping (init and pool)")
    stop.add_argument("-t", "--term-timeout", metavar="SECONDS",
                      help="after TERM/INT, KILL everything left this much later "
                      "(25 on Heroku, else 8)")
    stop.add_argument("--term-delay", metavar="SECONDS",
                      help="wait this long before passing TERM/INT on (drain time; "
                      "counted inside the timeout)")
    stop.add_argument("--term-sent-to-all", dest="term_sent_to_all", action="store_true",
                      help="the platform TERMs every process itself: never pass "
                      "TERM on, still KILL at the timeout (default when $DYNO is set)")
    stop.add_argument("--no-term-sent-to-all", dest="term_sent_to_all", action="store_false",
                      help="pass TERM on even when $DYNO is set")
    init = parser.add_argument_group("init (with COMMAND)")
    init.add_argument("-g", "--process-group", action="store_true",
                      help="send signals to the child's whole process group")
    init.add_argument("-r", "--rewrite", metavar="FROM:TO", action="append",
                      help="pass signal FROM on as TO (names or numbers; TO 0 drops it); "
                      "repeatable")
    init.add_argument("-e", "--remap-exit", metavar="CODE", action="append",
                      type=_exit_code, help="exit 0 when the child exits with CODE "
                      "(e.g. 143); repeatable")
    pool = parser.add_argument_group("pool (without COMMAND)")
    pool.add_argument("-c", "--config", metavar="FILE",
                      help="pool config file (default: $POOL_CONFIG, $RESQUE_POOL_CONFIG, "
                      "pool.yml, config/resque-pool.yml, resque-pool.yml)")
    pool.add_argument("--preload", metavar="MODULE", action="append", type=_module_name,
                      help="import MODULE once in a template process and fork the default RQ "
                      "workers from it (repeatable; default: $WORKER_PRELOAD, pool.preload)")
    pool.add_argument("--check", action="store_true",
                      help="print the resolved pool, or every problem in the config, and exit")
    pool.add_argument("--exit-on-crash-loop", action="store_true",
                      help="exit 3 when a worker group keeps crashing, so the platform "
                      "restarts the container")
    pool.add_argument("--memory-limit", metavar="SIZE",
                      help="the memory the pool may use (512M, 1G; default: the cgroup's)")
    pool.add_argument("--prefix", action="store_true",
                      help="prefix each line of worker output with group.slot")
    pool.add_argument("--socket", metavar="PATH",
                      help="the control socket (default /tmp/entrypoint-UID/pool.sock)")
    pool.add_argument("--metrics-port", metavar="PORT",
                      help="serve Prometheus metrics over HTTP on this port (default: off)")
    control = parser.add_argument_group("steering a running pool")
    control.add_argument("--status", action="store_true",
                         help="show every worker: group, slot, pid, state, uptime, restarts")
    control.add_argument("--json", action="store_true", help="with --status or --fleet: print JSON")
    control.add_argument("--health", action="store_true",
                         help="exit 0 if the pool is healthy, 1 with a line saying which group or "
                         "limit is wrong (for HEALTHCHECK and probes)")
    control.add_argument("--scale", metavar="GROUP=N", help="set a group's worker count")
    control.add_argument("--reload", action="store_true",
                         help="reload the config file (as SIGHUP does)")
    control.add_argument("--fleet", action="store_true",
                         help="every pool that publishes to $REDIS_URL (every dyno of the app)")
    parser.add_argument("-v", "--verbose", action="count",
                        help="more detail: -v lifecycle, -vv every reap and forward")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]",
                        help="the program to run as our child")
    return parser


def _module_name(text: str) -> str:
    from entrypoint.configvalues import modules

    try:
        (name,) = modules(text)
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"expected a module name such as myapp.jobs, got {text!r}") from None
    return name


def _exit_code(text: str) -> int:
    if not text.isdigit() or int(text) > 255:
        import argparse

        raise argparse.ArgumentTypeError(f"expected an exit code from 0 to 255, got {text!r}")
    return int(text)


class Invocation(NamedTuple):
    args: Options  # the options' values by name, as argparse gives them
    command: Command | None


def parse(argv: Sequence[str], env: Mapping[str, str]) -> Invocation:
    """Our options and the command, including Heroku's whole `run:` line in one argument.

    argparse, with gettext and locale, would stay 0.8 MB in PID 1 for the rest of its life: a
    command line that starts with the command is read without it, any other in a short-lived child.
    """
    return _command_alone(argv, env) or _parsed_in_child(argv, env)


def _command_alone(argv: Sequence[str], env: Mapping[str, str]) -> Invocation | None:
    """A command line that starts with the command (ENTRYPOINT and CMD, no options), without argparse.

    None when argparse must judge: an option, a word that starts with a dash, or no command.
    """
    words = list(argv[1:]) if argv[:1] == ["--"] else list(argv)
    if not words or words[0].startswith("-"):
        return None
    not_given = SimpleNamespace(**{name: list(value) if isinstance(value, list) else value
                                   for name, value in DEFAULTS.items()})
    if len(words) > 1 or not _is_command_line(words[0]):
        return Invocation(not_given, Command(tuple(words), via_shell=False))
    scan = scan_line(words[0], env)
    if not scan.words or scan.words[0].text.startswith("-"):
        return None  # Heroku's one string, holding options of ours (or nothing)
    return Invocation(not_given, parse_line(words[0][scan.words[0].start :], env))


def _parsed_in_child(argv: Sequence[str], env: Mapping[str, str]) -> Invocation:
    """_with_options in a child of ours; its UsageError is raised here, its --help is printed."""

    def read() -> tuple[str, object, object]:
        try:
            invocation = _with_options(argv, env)
        except UsageError as error:
            return "usage", str(error), None
        command = invocation.command
        return "parsed", vars(invocation.args), None if command is None else tuple(command)

    try:
        kind, args, command = call_in_child(read)
    except OSError:  # no fork to be had (a pids limit): read them here
        return _with_options(argv, env)
    except NoAnswer as exited:  # --help or --version printed what was asked
        raise SystemExit(os.waitstatus_to_exitcode(exited.status)) from None
    if kind == "usage":
        raise UsageError(str(args))
    return Invocation(SimpleNamespace(**args), None if command is None else Command(*command))


def _with_options(argv: Sequence[str], env: Mapping[str, str]) -> Invocation:
    """What argparse makes of the command line: in the child, or here when no fork is to be had."""
    parser = build_parser()
    if len(argv) == 1 and _is_command_line(argv[0]):
        return _one_string(parser, [], argv[0], env)  # may start with our own options
    args = parser.parse_args(argv)
    words = _strip_separator(args.command)
    if len(words) == 1 and _is_command_line(words[0]):
        return _one_string(parser, list(argv[: len(argv) - len(args.command)]), words[0], env)
    if not words:
        return Invocation(args, None)
    return Invocation(args, Command(tuple(words), via_shell=False))


def unnest(invocation: Invocation, env: Mapping[str, str]) -> Invocation:
    """`entrypoint entrypoint ...` (CMD or a heroku.yml `run:` that repeats the ENTRYPOINT) is one init."""
    command = invocation.command
    if command is None or command.via_shell or os.path.basename(command.argv[0]) != "entrypoint":
        return invocation
    return parse(list(command.argv[1:]), env)


def _one_string(parser: argparse.ArgumentParser, outer: list[str], line: str,
                env: Mapping[str, str]) -> Invocation:
    """Heroku hands `run: "..."` over as one argument: peel our options off, keep the rest raw."""
    scan = scan_line(line, env)
    args = parser.parse_args(outer + [word.text for word in scan.words])
    remainder = _strip_separator(args.command)
    if not remainder:
        return Invocation(args, None)
    start = scan.words[len(scan.words) - len(remainder)].start
    return Invocation(args, parse_line(line[start:], env))


def _strip_separator(words: list[str]) -> list[str]:
    return words[1:] if words[:1] == ["--"] else words


def _is_command_line(word: str) -> bool:
    """One argument holding a whole command line, not a program whose path has a space."""
    return any(c in BLANKS for c in word.strip()) and not _is_program(word)


def _is_program(word: str) -> bool:
    """An executable file, by path or on $PATH, as shutil.which finds one (without shutil's imports)."""
    if "/" in word:
        candidates = [word]
    else:
        path = os.environ.get("PATH", os.defpath)
        candidates = [os.path.join(directory, word) for directory in path.split(os.pathsep)] if path else []
    return any(os.access(name, os.X_OK) and not os.path.isdir(name) for name in candidates)
