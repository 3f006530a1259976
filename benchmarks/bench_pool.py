"""The pool benchmarks: N `sleep` workers under entrypoint's pool, supervisord and honcho."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    BenchError,
    Contender,
    Launch,
    pss_kb,
    read_stat,
    schedstat_ms,
    status_kb,
    tree,
    wait_exit,
    wait_for,
)
from results_model import Benchmark, Metric

WORKER = "sleep"
WORKER_COMMAND = "sleep 100000"


@dataclass
class Manager(Contender):
    """A process manager: its whole command line, the files it needs, what it can do."""

    files: dict[str, str] = field(default_factory=dict)
    restarts: bool = True
    status_argv: list[str] | None = None  # entrypoint --status --json --socket PATH
    workers: int = 0


def entrypoint_pool(name: str, entrypoint: list[str], workers: int, *, note: str = "",
                    backoff_reset: float | None = None) -> Manager:
    settings = f"  backoff_reset: {backoff_reset:g}\n" if backoff_reset is not None else ""
    config = f"sleepers: {workers}\npool:\n  command: \"{WORKER_COMMAND}\"\n{settings}"
    return Manager(
        name, "ours", [*entrypoint, "--config", "pool.yml", "--socket", "pool.sock"],
        display=" ".join([*entrypoint, "--config", "pool.yml"])
        + (f"  (pool.yml: sleepers: {workers}, command: {WORKER_COMMAND}"
           + (f", backoff_reset: {backoff_reset:g}" if backoff_reset is not None else "") + ")"),
        note=note, files={"pool.yml": config},
        status_argv=[*entrypoint, "--status", "--json", "--socket", "pool.sock"], workers=workers,
    )


def supervisord(executable: str, workers: int) -> Manager:
    config = f"""\
[supervisord]
nodaemon=true
user=root
logfile=supervisord.log
pidfile=supervisord.pid
loglevel=warn

[program:w]
command={WORKER_COMMAND}
process_name=%(program_name)s_%(process_num)03d
numprocs={workers}
autostart=true
autorestart=true
stopsignal=TERM
stdout_logfile=NONE
stderr_logfile=NONE
"""
    return Manager(
        "supervisord", "peer", [executable, "-c", "supervisord.conf"],
        display=f"supervisord -c supervisord.conf  ([program:w] numprocs={workers}, "
        "autostart, autorestart, startsecs=1 (default), output not logged)",
        files={"supervisord.conf": config},
    )


def honcho(executable: str, workers: int) -> Manager:
    return Manager(
        "honcho", "peer", [executable, "start", "--no-colour", "-c", f"w={workers}"],
        display=f"honcho start -c w={workers}  (Procfile: w: {WORKER_COMMAND})",
        files={"Procfile": f"w: {WORKER_COMMAND}\n"}, restarts=False,
        note="one Python helper process and one /bin/sh per worker; never restarts a worker",
    )


def manager_memory(manager: Manager, env: dict[str, str], directory: Path) -> list[float | None]:
    """VmRSS, RssAnon and Pss (MiB) of the manager as PID 1 of a namespace, once its workers run."""
    directory.mkdir(parents=True)
    for name, text in manager.files.items():
        (directory / name).write_text(text)
    with Launch(manager.argv, env=env, namespace=True, cwd=directory) as launch:
        wait_for(lambda: len(worker_pids(launch.pid)) >= manager.workers, 60,
                 f"{manager.workers} workers", alive=launch.popen)
        time.sleep(0.3)  # its start-up done: the loop sits idle
        pid = launch.inner_pid()
        status, pss = status_kb(pid), pss_kb(pid)
        return [status["VmRSS"] / 1024, status["RssAnon"] / 1024, None if pss is None else pss / 1024]


def worker_pids(root: int) -> set[int]:
    return {pid for pid, stat in tree(root) if stat.comm == WORKER and stat.state not in "ZX"}


def overhead(root: int) -> dict[str, float]:
    """The manager's own cost: its process, and all its non-worker processes (helpers, shells)."""
    helpers = [(pid, stat) for pid, stat in tree(root) if stat.comm != WORKER]
    return {
        "cpu_ms": sum(stat.cpu_ms for _, stat in helpers),
        "sched_ms": sum(schedstat_ms(pid) for pid, _ in helpers),
        "pss_mb": sum((pss_kb(pid) or 0) for pid, _ in helpers) / 1024,
        "procs": len(helpers),
    }


def pool(managers: list[Manager], rounds: int, workers: int, idle: float, settle: float,
         env: dict[str, str], workdir: Path) -> list[Benchmark]:
    start = Benchmark(
        "pool_start", f"Pool: start and stop {workers} workers",
        f"The manager runs as PID 1 of a new PID namespace. 'start' = from launch until "
        f"{workers} `sleep` processes (exec'd, not zombies) exist below it; 'start CPU' = "
        "utime+stime its non-worker processes used by then; 'stop' = from TERM to the "
        "manager's exit (sleep dies at TERM at once).",
        [Metric("start_s", "start", "s", 3), Metric("start_cpu_ms", "start CPU", "ms", 0),
         Metric("stop_ms", "stop", "ms", 0)],
        list(managers),
    )
    idle_bench = Benchmark(
        "pool_idle", f"Pool: idle cost over {idle:g} s with {workers} workers",
        f"After start (+{settle:g} s settle) the managers of one round sit idle together for "
        f"{idle:g} s. CPU = utime+stime from /proc/PID/stat (10 ms ticks) over that window; "
        "'on-CPU' = the same from /proc/PID/task/*/schedstat (ns precision). 'manager' = the "
        "process we launched; 'all helpers' = it plus every non-worker process below it "
        "(honcho forks a Python helper and a /bin/sh per worker). RSS/PSS at the end.",
        [Metric("idle_cpu_ms", "manager CPU", "ms", 0),
         Metric("idle_sched_ms", "manager on-CPU", "ms", 2),
         Metric("tree_idle_sched_ms", "all helpers on-CPU", "ms", 2),
         Metric("rss_mb", "manager VmRSS", "MiB", 1),
         Metric("tree_pss_mb", "all helpers Pss", "MiB", 1),
         Metric("helper_procs", "helper processes", "", 0)],
        list(managers),
    )
    restart = Benchmark(
        "restart", "Restart: kill -9 one worker",
        "After the idle window: SIGKILL to one worker, time until a new `sleep` runs in its "
        "place. honcho does not restart workers (any exit stops it all): n/a.",
        [Metric("restart_ms", "replacement running", "ms", 1)],
        list(managers),
    )
    for manager in managers:
        if not manager.restarts:
            restart.mark_not_applicable(manager.name, "restart_ms")
    status_checks: dict[str, list] = {}

    for round_number in range(rounds):
        running: dict[str, Launch] = {}
        directories: dict[str, Path] = {}
        try:
            for manager in managers:  # start, one after the other
                directory = workdir / f"{round_number}-{manager.name.replace(' ', '_')}"
                directory.mkdir(parents=True)
                for name, text in manager.files.items():
                    (directory / name).write_text(text)
                launch = Launch(manager.argv, env=env, namespace=True, cwd=directory)
                running[manager.name] = launch
                directories[manager.name] = directory
                try:
                    wait_for(lambda launch=launch: len(worker_pids(launch.pid)) >= workers,
                             60, f"{workers} workers", interval=0.005, alive=launch.popen)
                    started = time.monotonic_ns()
                    start.add(manager.name, "start_s", (started - launch.started_ns) / 1e9)
                    start.add(manager.name, "start_cpu_ms", overhead(launch.pid)["cpu_ms"])
                except BenchError as error:
                    _note(f"pool_start/{manager.name}: {error}")
                    start.add(manager.name, "start_s", None)
                    start.add(manager.name, "start_cpu_ms", None)

            time.sleep(settle)
            before = {}
            for name, launch in running.items():
                manager_pid = _manager_pid(launch)
                stat = read_stat(manager_pid) if manager_pid else None
                sched = schedstat_ms(manager_pid) if manager_pid else 0.0
                before[name] = (manager_pid, stat, sched, overhead(launch.pid))
            time.sleep(idle)
            for name, launch in running.items():
                manager_pid, stat, sched_before, tree_before = before[name]
                now = read_stat(manager_pid) if manager_pid else None
                if stat is None or now is None:
                    for key in ("idle_cpu_ms", "idle_sched_ms", "tree_idle_sched_ms",
                                "rss_mb", "tree_pss_mb", "helper_procs"):
                        idle_bench.add(name, key, None)
                    continue
                tree_after = overhead(launch.pid)
                idle_bench.add(name, "idle_cpu_ms", now.cpu_ms - stat.cpu_ms)
                idle_bench.add(name, "idle_sched_ms", schedstat_ms(manager_pid) - sched_before)
                idle_bench.add(name, "tree_idle_sched_ms",
                               tree_after["sched_ms"] - tree_before["sched_ms"])
                idle_bench.add(name, "rss_mb", status_kb(manager_pid).get("VmRSS", 0) / 1024)
                idle_bench.add(name, "tree_pss_mb", tree_after["pss_mb"])
                idle_bench.add(name, "helper_procs", tree_after["procs"])

            for manager in managers:  # the pool's own view: every worker "running"
                if manager.status_argv and manager.name in running:
                    ok = _status_ok(manager, directories[manager.name], workers, env)
                    status_checks.setdefault(manager.name, []).append(ok)

            for manager in managers:
                if manager.restarts and manager.name in running:
                    restart.add(manager.name, "restart_ms",
                                _restart_once(manager.name, running[manager.name], workers))

            for manager in managers:
                if manager.name in running:
                    start.add(manager.name, "stop_ms", _stop(manager.name, running[manager.name]))
        finally:
            for launch in running.values():
                launch.kill()
        # The kernel is still freeing the last round's namespaces and 4 x N processes: without
        # a pause the round's first manager pays for that (seen as a 2x slower start).
        time.sleep(max(1.0, settle) if workers > 10 else settle)
    if status_checks:
        idle_bench.extra["status_all_running"] = status_checks
    return [start, idle_bench, restart]


def _note(message: str) -> None:
    print(f"  ! {message}", file=sys.stderr)


def _manager_pid(launch: Launch) -> int | None:
    try:
        pid = launch.inner_pid(timeout=1)
    except BenchError:
        return None
    return pid


def _status_ok(manager: Manager, directory: Path, workers: int, env: dict[str, str]) -> bool:
    """entrypoint --status --json: every worker "running" with a pid."""
    assert manager.status_argv is not None
    try:
        result = subprocess.run(manager.status_argv, cwd=directory, env=env, capture_output=True,
                                timeout=10, check=False, start_new_session=True)
        reply = json.loads(result.stdout)
    except (subprocess.TimeoutExpired, ValueError) as error:
        _note(f"{manager.name} --status: {error}")
        return False
    rows = reply.get("workers", [])
    return len(rows) == workers and all(w.get("state") == "running" and w.get("pid") for w in rows)


def _restart_once(name: str, launch: Launch, workers: int) -> float | None:
    try:
        before = worker_pids(launch.pid)
        if len(before) < workers:
            raise BenchError(f"only {len(before)} workers before the kill")
        victim = min(before)
        killed = time.monotonic_ns()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: worker_pids(launch.pid) - before, 15, "a replacement worker",
                 interval=0.001, alive=launch.popen)
        return (time.monotonic_ns() - killed) / 1e6
    except (BenchError, ProcessLookupError) as error:
        _note(f"restart/{name}: {error}")
        return None


def _stop(name: str, launch: Launch) -> float | None:
    manager_pid = _manager_pid(launch)
    if manager_pid is None:
        return None
    sent = time.monotonic_ns()
    os.kill(manager_pid, signal.SIGTERM)
    if not wait_exit(launch.popen, 30):
        _note(f"stop/{name}: still running 30s after TERM")
        return None
    return (time.monotonic_ns() - sent) / 1e6
