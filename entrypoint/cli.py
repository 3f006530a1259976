"""Command line: read options and environment, then hand over to the init, the pool or a control command."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from entrypoint.console import ERROR, Log
from entrypoint.init import Forwarding, Init, InitOptions
from entrypoint.options import UsageError, parse, unnest
from entrypoint.shutdown import (
    StopPolicy,
    default_term_timeout,
    on_heroku,
    parse_seconds,
    parse_switch,
)
from entrypoint.signals import parse_rewrite

if TYPE_CHECKING:  # the pool's modules are imported only when the pool runs
    from entrypoint.memory import MemoryLimit
    from entrypoint.options import Options
    from entrypoint.poolconfig import PoolConfig

T = TypeVar("T")

# Exit statuses of our own (README "Exit status"); the pool's are in supervisor.py.
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2
EXIT_NO_POOL = 4
# --health runs every few seconds under a probe's own timeout: a pool that cannot answer in this
# long counts as not answering.
HEALTH_TIMEOUT = 2.0


def stop_policy(args: Options, env: Mapping[str, str]) -> StopPolicy:
    timeout = _from(args.term_timeout, env, "TERM_TIMEOUT", "--term-timeout", parse_seconds)
    delay = _from(args.term_delay, env, "TERM_DELAY", "--term-delay", parse_seconds)
    to_all = args.term_sent_to_all
    if to_all is None and env.get("TERM_SENT_TO_ALL"):
        to_all = _parsed(env["TERM_SENT_TO_ALL"], "TERM_SENT_TO_ALL", parse_switch)
    return StopPolicy(
        term_timeout=default_term_timeout(env) if timeout is None else timeout,
        term_delay=delay or 0.0,
        term_sent_to_all=on_heroku(env) if to_all is None else to_all,
        timeout_given=timeout is not None,
    )


def _from(flag_value: str | None, env: Mapping[str, str], variable: str, flag: str,
          parser: Callable[[str, str], T]) -> T | None:
    """A flag's value, else its environment variable's, parsed; None when neither is set."""
    if flag_value is not None:
        return _parsed(flag_value, flag, parser)
    if env.get(variable):
        return _parsed(env[variable], variable, parser)
    return None


def _parsed(text: str, what: str, parser: Callable[[str, str], T]) -> T:
    try:
        return parser(text, what)
    except ValueError as error:
        raise UsageError(str(error)) from None


def init_options(args: Options, env: Mapping[str, str]) -> InitOptions:
    rewrites = {}
    for text in args.rewrite:
        try:
            source, target = parse_rewrite(text)
        except ValueError as error:
            raise UsageError(f"--rewrite: {error}") from None
        rewrites[source] = target
    return InitOptions(
        stop=stop_policy(args, env),
        forwarding=Forwarding(process_group=args.process_group, rewrites=rewrites),
        remap_exit=frozenset(args.remap_exit),
    )


def main(argv: Sequence[str] | None = None) -> int:
    # First of all, hold every signal: as PID 1 of a namespace a signal we neither handle nor
    # block is dropped by the kernel, and reading the options and the config takes a while.
    # Held, it waits for the init's or the pool's signalfd; a command to a running pool lets go.
    held = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    argv = sys.argv[1:] if argv is None else list(argv)
    env = os.environ
    log = Log()
    try:
        invocation = unnest(parse(argv, env), env)
        args = invocation.args
        log.verbosity = args.verbose
        steering = args.status or args.health or args.scale is not None or args.reload or args.fleet
        if invocation.command is None and (args.check or steering):
            signal.pthread_sigmask(signal.SIG_SETMASK, held)  # Ctrl-C stops a command, as it should
        if invocation.command is not None:
            options = init_options(args, env)
            from entrypoint.spawn import mark_inherited_descriptors_cloexec

            mark_inherited_descriptors_cloexec()
            return Init(invocation.command, options, env, log).run()
        if args.fleet:
            return show_fleet(env, as_json=args.json)
        if args.status or args.health or args.scale is not None or args.reload:
            return steer_pool(args, env)
        return run_pool(args, log)
    except UsageError as error:
        log.error(f"{error} (see entrypoint --help)")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def run_pool(args: Options, log: Log) -> int:
    """The pool: load the config (or the environment), then supervise; --check only reports."""
    from entrypoint.configprocess import read_at_start, reload_in_child, start_in_child
    from entrypoint.poolconfig import ConfigError

    cwd = os.getcwd()
    try:
        # --check may import anything; the pool reads in a child, so PID 1 never loads PyYAML.
        preload = tuple(args.preload) if args.preload else None
        started = (read_at_start(args.config, cwd, preload) if args.check
                   else start_in_child(args.config, cwd, preload))
    except ConfigError as error:
        for problem in error.problems:
            log.error(str(problem))
        return EXIT_USAGE
    os.environ.update(started.dotenv)  # before anything else reads the environment
    stop = stop_policy(args, os.environ)
    config = started.config

    def load() -> PoolConfig:
        # A reload reads the file found at start, even if it is gone by then: never another
        # file, nor the environment, by surprise.
        return reload_in_child(started.path, cwd, preload)

    if args.check:
        from entrypoint.console import print_config

        print_config(config, stop)
        return 0
    from entrypoint.console import PoolLog
    from entrypoint.control import default_socket_path
    from entrypoint.monitoring import parse_port
    from entrypoint.spawn import mark_inherited_descriptors_cloexec
    from entrypoint.supervisor import PoolOptions, Supervisor

    crash_loop_exit = args.exit_on_crash_loop
    if crash_loop_exit is None and os.environ.get("EXIT_ON_CRASH_LOOP"):
        crash_loop_exit = _parsed(os.environ["EXIT_ON_CRASH_LOOP"], "EXIT_ON_CRASH_LOOP", parse_switch)
    options = PoolOptions(
        stop=stop,
        socket_path=args.socket or default_socket_path(os.environ),
        exit_on_crash_loop=bool(crash_loop_exit or config.exit_on_crash_loop),
        memory=memory_limit(args, config),
        prefix_output=bool(args.prefix),
        metrics_port=_from(args.metrics_port, os.environ, "METRICS_PORT", "--metrics-port", parse_port),
    )
    mark_inherited_descriptors_cloexec()
    return Supervisor(config, options, os.environ, PoolLog(args.verbose), load).run()


def memory_limit(args: Options, config: PoolConfig) -> MemoryLimit:
    """--memory-limit, then MEMORY_LIMIT, then the file's pool.memory_limit, then the cgroup's."""
    from entrypoint.memory import find_memory_limit

    try:
        found = find_memory_limit(args.memory_limit, os.environ)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if config.memory_limit and args.memory_limit is None and not os.environ.get("MEMORY_LIMIT", "").strip():
        return found._replace(bytes=config.memory_limit, source=f"{config.source}: pool.memory_limit")
    return found


def steer_pool(args: Options, env: Mapping[str, str]) -> int:
    """--status, --health, --scale and --reload: one request to the running pool's control socket."""
    from entrypoint.control import default_socket_path, request

    path = args.socket or default_socket_path(env)
    if args.scale is not None:
        group, sep, count = args.scale.rpartition("=")
        if not sep or not count.isdigit():
            raise UsageError(f"--scale: expected GROUP=N, got {args.scale!r}")
        payload = {"command": "scale", "group": group, "count": int(count)}
    elif args.health:
        payload = {"command": "health"}
    else:
        payload = {"command": "status" if args.status else "reload"}
    try:
        reply = request(path, payload, timeout=HEALTH_TIMEOUT) if args.health else request(path, payload)
    except (OSError, ValueError) as error:
        Log().error(f"no pool answering at {path} ({error})")
        return EXIT_NO_POOL
    if "error" in reply:
        Log().error(str(reply["error"]))
        return EXIT_USAGE
    if args.health:
        if not reply["healthy"]:
            Log().emit(ERROR, f"unhealthy: {reply['problem']}")
            return EXIT_UNHEALTHY
        print(f"healthy: {reply['running']} of {reply['wanted']} worker(s) running")
        return 0
    from entrypoint.console import print_reply

    print_reply(payload["command"], reply, as_json=args.json)
    return 0


def show_fleet(env: Mapping[str, str], *, as_json: bool) -> int:
    """--fleet: every pool publishing to $REDIS_URL, read there (redis-py: this is a client, not PID 1)."""
    if not env.get("REDIS_URL"):
        raise UsageError("--fleet: REDIS_URL is not set: it names the Redis every pool publishes to")
    from entrypoint.console import print_fleet
    from entrypoint.fleet import FleetError, read_fleet

    try:
        print_fleet(read_fleet(env["REDIS_URL"], env), as_json=as_json)
    except FleetError as error:
        Log().error(str(error))
        return EXIT_NO_POOL
    return 0
