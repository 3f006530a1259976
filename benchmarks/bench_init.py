"""The init benchmarks: start-up, memory, reaping and signal forwarding, against tini & co."""

from __future__ import annotations

import os
import pstats
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench_pool import Manager, manager_memory
from harness import (
    PROBES,
    BenchError,
    Contender,
    Launch,
    children,
    launched,
    percentile,
    pss_kb,
    read_stat,
    status_kb,
    tree,
    wait_exit,
    wait_for,
)
from results_model import Benchmark, Metric

TRUE = "/bin/true"
DATE = ["/bin/date", "+%s%N"]
SLEEP = ["/bin/sleep", "1000000"]


def _note(message: str) -> None:
    print(f"  ! {message}", file=sys.stderr)


def _measure(benchmark: Benchmark, contender: str, keys: Sequence[str],
             take: Callable[[], Sequence[float | None]]) -> None:
    """Record one sample per key; a failed measurement is recorded as missing, not fatal."""
    try:
        values = take()
    except (BenchError, OSError, ValueError) as error:
        _note(f"{benchmark.name}/{contender}: {error}")
        values = [None] * len(keys)
    for key, value in zip(keys, values, strict=True):
        benchmark.add(contender, key, value)


# -- start-up -----------------------------------------------------------------------------------


def _timed(argv: list[str], env: dict[str, str], capture: bool) -> tuple[bytes, int, int]:
    """(stdout, elapsed monotonic ns until the exit, CLOCK_REALTIME ns just before the start)."""
    realtime = time.time_ns()
    start = time.monotonic_ns()
    launch = Launch(argv, env=env, namespace=False,
                    stdout=subprocess.PIPE if capture else subprocess.DEVNULL)
    try:
        out = launch.read_all(10) if capture else b""
        if not wait_exit(launch.popen, 10):
            raise BenchError(f"{argv} did not finish within 10s")
        elapsed = time.monotonic_ns() - start
    finally:
        launch.kill()
    if launch.popen.returncode != 0:
        raise BenchError(f"{argv} exited {launch.popen.returncode}")
    return out, elapsed, realtime


def startup(contenders: list[Contender], rounds: int, env: dict[str, str]) -> Benchmark:
    bench = Benchmark(
        "startup", "Start-up: init start to child running",
        "`X -- /bin/true` wall time (start to exit, the init's own teardown included), and "
        "the time from just before the launch to the moment the child runs: the child is "
        "`date +%s%N`, compared with time.time_ns() taken just before Popen (so `date`'s own "
        "start, ~1 ms, is in every row: see the 'none' row). Launched directly (not in a "
        "namespace), alternating contenders launch by launch.",
        [Metric("wall_ms", "`X -- true` wall", "ms", 2),
         Metric("exec_ms", "start to child exec", "ms", 2)],
        contenders,
    )
    for contender in contenders:  # warm up: page cache, dynamic loader cache (not recorded)
        _measure(Benchmark("warm-up", "", "", [], []), contender.name, ["wall_ms"],
                 lambda contender=contender: [_timed(contender.command([TRUE]), env, False)[1]])
    for _ in range(rounds):
        for contender in contenders:
            def wall(contender=contender):
                return [_timed(contender.command([TRUE]), env, False)[1] / 1e6]

            _measure(bench, contender.name, ["wall_ms"], wall)
        for contender in contenders:
            def to_exec(contender=contender):
                out, _elapsed, realtime = _timed(contender.command(DATE), env, True)
                return [(int(out.split()[0]) - realtime) / 1e6]

            _measure(bench, contender.name, ["exec_ms"], to_exec)
    return bench


def parse_importtime(text: str) -> tuple[float, dict[str, float]]:
    """(total ms, {module: cumulative ms}) for the top two levels of a -X importtime tree."""
    total = 0.0
    modules: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self, cumulative, name = line[len("import time:"):].split("|", 2)
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        if depth == 0:
            total += int(cumulative) / 1000
        if depth <= 1:
            key = ("  " * depth) + name.strip()
            modules[key] = modules.get(key, 0.0) + int(cumulative) / 1000
    return total, modules


def _ranked(totals: list[float], per_module: dict[str, list[float]], command: str) -> dict:
    ranked = sorted(((statistics.median(v), k) for k, v in per_module.items()), reverse=True)
    return {
        "command": command,
        "total_import_ms": statistics.median(totals) if totals else None,
        "top_ms": [{"module": name, "cumulative_ms": round(ms, 2)} for ms, name in ranked[:16]],
    }


def import_profile(argv: list[str], env: dict[str, str], runs: int = 5) -> dict:
    """`python -X importtime` of our init running /bin/true: where the start-up time above the
    bare interpreter goes. Median over runs of each module's cumulative import time (ms), for the
    top two levels of the import tree."""
    per_module: dict[str, list[float]] = {}
    totals = []
    for _ in range(runs):
        result = subprocess.run([*argv, "--", TRUE], env=env, capture_output=True, timeout=20,
                                check=False, start_new_session=True)
        total, modules = parse_importtime(result.stderr.decode(errors="replace"))
        totals.append(total)
        for name, ms in modules.items():
            per_module.setdefault(name, []).append(ms)
    return _ranked(totals, per_module, " ".join([*argv, "--", TRUE]))


def signal_profile(python: str, env: dict[str, str], count: int, probe_python: str,
                   workdir: Path) -> dict:
    """cProfile of entrypoint forwarding `count` SIGUSR1 (as in the signals benchmark): where
    its per-signal time above the Python floor goes. Only functions called about once per
    signal or more, select (mostly waiting) left out. Times are per signal and include
    cProfile's own overhead (roughly doubles pure-Python time)."""
    out = workdir / "signals.prof"
    argv = [python, str(PROBES / "profile_entrypoint.py"), "--",
            probe_python, "-I", "-S", str(PROBES / "signal_probe.py")]
    with launched(argv, env={**env, "BENCH_PROFILE": str(out)}, namespace=True,
                  stdout=subprocess.PIPE) as run:
        if run.read_line(10) != b"ready":
            raise BenchError("the probe did not say ready")
        target = run.inner_pid()
        for _ in range(count):
            os.kill(target, signal.SIGUSR1)
            run.read_line(5)
        os.kill(target, signal.SIGTERM)
        if not wait_exit(run.popen, 10):
            raise BenchError("entrypoint did not exit after TERM")
    stats = pstats.Stats(str(out)).stats  # type: ignore[attr-defined]
    rows = []
    for (filename, line, function), (_cc, calls, tottime, cumtime, _callers) in stats.items():
        if calls < count // 2 or function == "<built-in method select.select>":
            continue  # one-off start-up work, and select's time is mostly waiting for us
        where = f"{Path(filename).name}:{line}({function})" if line else function
        rows.append({"function": where, "calls": calls,
                     "self_us_per_signal": round(tottime * 1e6 / count, 2),
                     "cumulative_us_per_signal": round(cumtime * 1e6 / count, 2)})
    rows.sort(key=lambda r: r["self_us_per_signal"], reverse=True)
    return {"signals": count, "top_self": rows[:12]}


def pool_import_profile(argv: list[str], env: dict[str, str], workdir: Path) -> dict:
    """`python -X importtime` of the pool with one `sleep` worker: what the manager loads."""
    directory = workdir / "pool-importtime"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pool.yml").write_text('sleepers: 1\npool:\n  command: "sleep 100000"\n')
    errors = directory / "stderr.txt"
    command = [*argv, "--config", "pool.yml", "--socket", "pool.sock"]
    with errors.open("wb") as sink, launched(command, env=env, namespace=True, cwd=directory,
                                             stderr=sink) as run:
        def worker_running():
            return any(stat.comm == "sleep" for _pid, stat in tree(run.pid))

        wait_for(worker_running, 20, "the pool's worker", alive=run.popen)
        os.kill(run.inner_pid(), signal.SIGTERM)
        wait_exit(run.popen, 10)
    total, modules = parse_importtime(errors.read_text(errors="replace"))
    return _ranked([total], {k: [v] for k, v in modules.items()}, " ".join(command))


# -- memory -------------------------------------------------------------------------------------


def memory(contenders: list[Contender], pools: list[Manager], rounds: int, env: dict[str, str],
           workdir: Path) -> Benchmark:
    bench = Benchmark(
        "memory", "Memory: the init's and the pool manager's own RSS",
        "`X -- sleep` as PID 1 of a new PID namespace; once the child has exec'd sleep (and "
        "50 ms more), /proc/PID/status VmRSS and RssAnon and smaps_rollup Pss of the init. "
        "The pool rows: the pool manager as PID 1 of a new PID namespace, 0.3 s after all its "
        "`sleep` workers run.",
        [Metric("rss_mb", "VmRSS", "MiB", 2), Metric("anon_mb", "RssAnon", "MiB", 2),
         Metric("pss_mb", "Pss", "MiB", 2)],
        [*contenders, *pools],
    )
    for round_number in range(rounds):
        for manager in pools:
            directory = workdir / f"{round_number}-{manager.workers}"
            _measure(bench, manager.name, ["rss_mb", "anon_mb", "pss_mb"],
                     lambda manager=manager, directory=directory: manager_memory(manager, env, directory))
        for contender in contenders:
            def take(contender=contender):
                with launched(contender.command(SLEEP, pid1=True), env=env, namespace=True) as run:
                    init = run.inner_pid()

                    def slept():
                        return any((s := read_stat(c)) and s.comm == "sleep"
                                   for c in children(init))

                    wait_for(slept, 10, "the child to exec sleep", alive=run.popen)
                    time.sleep(0.05)
                    status = status_kb(init)
                    pss = pss_kb(init)
                    return [status["VmRSS"] / 1024, status["RssAnon"] / 1024,
                            None if pss is None else pss / 1024]

            _measure(bench, contender.name, ["rss_mb", "anon_mb", "pss_mb"], take)
    return bench


# -- reaping ------------------------------------------------------------------------------------


class ZombieSampler(threading.Thread):
    """Watches the init's children from the host: the peak number of zombies waiting for it,
    and the first moment, after the probe finished, when none is left."""

    def __init__(self, init: int, probe: int, interval: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.init, self.probe, self.interval = init, probe, interval
        self.probe_done = threading.Event()
        self.stop = threading.Event()
        self.peak_zombies = 0
        self.peak_pending = 0
        self.reaped_at: int | None = None
        self.samples = 0

    def run(self) -> None:
        while not self.stop.is_set():
            when = time.monotonic_ns()
            done = self.probe_done.is_set()
            pending = [p for p in children(self.init) if p != self.probe]
            zombies = sum(1 for p in pending if (s := read_stat(p)) is not None and s.state == "Z")
            self.samples += 1
            self.peak_zombies = max(self.peak_zombies, zombies)
            self.peak_pending = max(self.peak_pending, len(pending))
            if done and not pending:
                self.reaped_at = when
                return
            time.sleep(self.interval)


def reaping(contenders: list[Contender], rounds: int, orphans: int, env: dict[str, str],
            python: str) -> Benchmark:
    bench = Benchmark(
        "reaping", f"Reaping: {orphans:,} orphans as PID 1",
        f"X is PID 1 of a new PID namespace; its child forks {orphans:,} times as fast as it "
        "can, each fork forks a grandchild and exits at once, so every grandchild is "
        "reparented to X. A host thread samples X's children (/proc/PID/task/*/children) "
        "every ~2 ms and counts those in state Z. 'all reaped' = from the child's first fork "
        "until no orphan is left; 'after last fork' = from the child's last fork until then.",
        [Metric("reaped_ms", "all reaped", "ms", 0),
         Metric("lag_ms", "after last fork", "ms", 1),
         Metric("peak_zombies", "peak zombies", "", 0)],
        contenders,
    )
    probe = [python, "-I", "-S", str(PROBES / "orphans.py"), str(orphans)]
    for _ in range(rounds):
        for contender in contenders:
            def take(contender=contender):
                with launched(contender.command(probe, pid1=True), env=env, namespace=True,
                              stdout=subprocess.PIPE) as run:
                    init = run.inner_pid()
                    child = wait_for(lambda: min(children(init), default=0), 10,
                                     "the init's child", alive=run.popen)
                    sampler = ZombieSampler(init, child)
                    sampler.start()
                    try:
                        start, end = map(int, run.read_line(120).split())
                        sampler.probe_done.set()
                        sampler.join(60)
                    finally:
                        sampler.stop.set()
                    if sampler.reaped_at is None:
                        raise BenchError(f"{contender.name}: orphans still unreaped after 60s")
                    return [(sampler.reaped_at - start) / 1e6,
                            max(0, sampler.reaped_at - end) / 1e6, sampler.peak_zombies]

            _measure(bench, contender.name, ["reaped_ms", "lag_ms", "peak_zombies"], take)
    return bench


# -- signals ------------------------------------------------------------------------------------


def signals(contenders: list[Contender], rounds: int, count: int, env: dict[str, str],
            python: str) -> Benchmark:
    bench = Benchmark(
        "signals", f"Signal forwarding: {count:,} SIGUSR1 per run",
        "X is PID 1 of a new PID namespace; its child blocks SIGUSR1 and prints "
        "CLOCK_MONOTONIC as sigwaitinfo returns each one. The host sends the next signal to X "
        "only after the child reported the previous one. Latency = send to child seeing it; "
        "per run p50 and p99, then median of the runs. 'none' = the signal goes straight to "
        "the probe (as PID 1): the floor of the measurement itself.",
        [Metric("p50_us", "p50", "µs", 1), Metric("p99_us", "p99", "µs", 1)],
        contenders,
    )
    probe = [python, "-I", "-S", str(PROBES / "signal_probe.py")]
    for _ in range(rounds):
        for contender in contenders:
            def take(contender=contender):
                with launched(contender.command(probe, pid1=True), env=env, namespace=True,
                              stdout=subprocess.PIPE) as run:
                    if run.read_line(10) != b"ready":
                        raise BenchError("the probe did not say ready")
                    target = run.inner_pid()
                    latencies = []
                    for _ in range(count):
                        sent = time.monotonic_ns()
                        os.kill(target, signal.SIGUSR1)
                        seen = int(run.read_line(5))
                        latencies.append((seen - sent) / 1000)
                    return [percentile(latencies, 0.50), percentile(latencies, 0.99)]

            _measure(bench, contender.name, ["p50_us", "p99_us"], take)
    return bench
