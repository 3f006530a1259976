"""The template process: imports the app once, then forks workers from it when the manager asks.

It runs as `python -m entrypoint.template`, a child of the pool's manager, never inside PID 1:
an app that starts threads, installs signal handlers or crashes on import can only break this
process, which the manager replaces. Each worker is forked twice (the middle process exits at
once), so it is re-parented to the manager, a child subreaper or PID 1, which reaps it, signals
it and stops it as it does any worker.
"""

from __future__ import annotations

import gc

# Before anything is imported: a collection writes to every tracked object's header, and each
# write would un-share that page in every worker forked later (CPython's gc.freeze recipe).
gc.disable()

import contextlib  # noqa: E402 - after gc.disable() on purpose
import importlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import runpy  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402

from entrypoint import channel as channels  # noqa: E402
from entrypoint.signals import restore_defaults  # noqa: E402


def resolve(reference: str) -> Callable[..., object]:
    """`package.module:function` (attributes may be dotted) -> the callable, importing the module."""
    module_name, _, attribute = reference.partition(":")
    target: object = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{reference} is not callable")
    return target


def app_traceback(error: BaseException) -> str:
    """The traceback from the app's first frame on: ours and importlib's say nothing to the user."""
    tb = error.__traceback__
    while tb is not None and (tb.tb_frame.f_code.co_filename in (__file__, importlib.__file__)
                              or tb.tb_frame.f_code.co_filename.startswith("<frozen importlib")):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb))


def open_sockets() -> set[int]:
    """Our descriptors that are sockets: a connection opened at import must not be shared."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                found.add(int(name))
    return found


def retire_sockets(descriptors: set[int]) -> None:
    """Put /dev/null where each connection was: its peer sees it closed, and no two workers can
    ever write to one connection; a worker's first use fails loudly instead (redis-py and most
    clients reconnect by themselves after a fork; `after_fork` is the place for the others)."""
    if not descriptors:
        return
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    for fd in descriptors:
        os.dup2(null, fd, inheritable=False)
    os.close(null)


def use_environment(env: dict[str, str]) -> None:
    """Make os.environ the worker's: only what differs is changed (the worker's environment is
    ours plus a few variables), because rewriting all of it un-shares most of a megabyte."""
    for name in [name for name in os.environ if name not in env]:
        del os.environ[name]
    for name, value in env.items():
        if os.environ.get(name) != value:
            os.environ[name] = value


def thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


class Template:
    def __init__(self, channel: socket.socket) -> None:
        self.channel = channel
        self.after_fork: Callable[..., object] | None = None
        self.calls: dict[str, Callable[..., object]] = {}

    def send(self, message: dict) -> None:
        channels.send(self.channel, message)

    def preload(self, modules: list[str], calls: list[str], after_fork: str | None) -> dict:
        """Import everything the workers will run; the report for the manager."""
        started = time.monotonic()
        before = open_sockets()
        current = ""
        try:
            for current in modules:
                importlib.import_module(current)
            for current in calls:
                self.calls[current] = resolve(current)
            if after_fork:
                current = after_fork
                self.after_fork = resolve(after_fork)
        except BaseException as error:  # the app's own failure: the user needs its traceback
            return {"failed": current, "error": f"{type(error).__name__}: {error}",
                    "traceback": app_traceback(error)}
        opened = open_sockets() - before - {self.channel.fileno()}
        retire_sockets(opened)
        return {"ready": True, "seconds": round(time.monotonic() - started, 3),
                "threads": thread_count() - 1, "sockets_closed": len(opened)}

    def serve(self) -> None:
        """Fork a worker for each request until the manager closes the channel."""
        while True:
            try:
                data, fds, _flags, _address = socket.recv_fds(self.channel, channels.MAX_MESSAGE, 1)
            except InterruptedError:
                continue
            if not data:
                return  # the manager is gone or retired us
            request = json.loads(data)
            output = fds[0] if fds else None
            try:
                reply = self.fork(request, output)
            finally:
                if output is not None:
                    os.close(output)
            try:
                self.send(reply)
            except BrokenPipeError:
                # The manager is gone: the worker just forked would run unknown to any pool.
                if "pid" in reply:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(reply["pid"], signal.SIGTERM)
                return

    def fork(self, request: dict, output: int | None) -> dict:
        """Fork twice so the worker becomes the manager's child; its pid, or why it failed."""
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        gc.freeze()  # everything so far stays out of every later collection, here and in workers
        try:
            middle = os.fork()
        except OSError as error:
            os.close(read_end)
            os.close(write_end)
            return {"fork_failed": request["id"], "error": error.strerror}
        if middle == 0:
            os.close(read_end)
            middle = os.getpid()
            try:
                worker = os.fork()
            except OSError as error:
                os.write(write_end, f"error {error.strerror}".encode())
                os._exit(1)
            if worker == 0:
                os.close(write_end)
                self.become_worker(request, output, middle)
            os.write(write_end, str(worker).encode())
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as report:
            answer = report.read().decode()
        os.waitpid(middle, 0)
        if not answer.isdigit():
            return {"fork_failed": request["id"], "error": answer.removeprefix("error ") or "fork failed"}
        return {"forked": request["id"], "pid": int(answer)}

    def become_worker(self, request: dict, output: int | None, middle: int) -> None:
        """In the worker: never returns. Clean slate first, then the user's hook, then the work."""
        code = 1
        try:
            while os.getppid() == middle:
                time.sleep(0.001)  # until the middle process is gone and the manager is our parent
            os.setpgid(0, 0)
            self.channel.close()
            if output is not None:
                os.dup2(output, 1)
                os.dup2(output, 2)
                os.close(output)
            restore_defaults()
            gc.enable()
            use_environment(request["env"])
            random.seed()  # os.fork reseeds `random` too; this also covers a state the app replaced
            if self.after_fork is not None:
                self.after_fork()
            code = self.run(request)
        except SystemExit as exit_:
            code = exit_code(exit_.code)
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def run(self, request: dict) -> int:
        """The group's work: a callable whose return value is the exit status, or a module's main."""
        if "call" in request:
            sys.argv = [request["call"]]
            return exit_code(self.calls[request["call"]]())
        sys.argv = [request["module"], *request["args"]]
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        return 0


def exit_code(value: object) -> int:
    """What sys.exit(value) would make of it: None is 0, a number is itself, anything else 1."""
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value & 0xFF
    if not isinstance(value, bool):
        print(value, file=sys.stderr)
    return int(bool(value))


def main() -> int:
    # The platform's TERM (Heroku sends it to every process) and a terminal's Ctrl-C are for the
    # workers; the manager retires us by closing the channel.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Forking here is the point, threads or not; the manager already warned about threads once.
    warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
    channel = channels.from_parent()
    template = Template(channel)
    setup = json.loads(channel.recv(channels.MAX_MESSAGE) or b"{}")
    report = template.preload(setup.get("modules", []), setup.get("calls", []), setup.get("after_fork"))
    template.send(report)
    if "failed" in report:
        return 1
    template.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
