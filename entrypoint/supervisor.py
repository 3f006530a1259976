"""The pool's supervision loop: one thread, one select, signals and requests queued, decisions from pool.py."""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

from entrypoint import memory, pool, reaper
from entrypoint.console import Log, PrefixedOutput
from entrypoint.control import ControlServer
from entrypoint.health import first_problem, looping_slots, memory_problem
from entrypoint.init import prepare_process
from entrypoint.pool import Backoff, SlotHistory, Start, Stop, Worker
from entrypoint.poolconfig import ConfigError, Group, PoolConfig
from entrypoint.shutdown import KILL_RETRY_SECONDS, STOP_SIGNALS, StopPolicy
from entrypoint.signals import Received, child_changed, signal_name
from entrypoint.spawn import SpawnError, spawn

EXIT_OK = 0
EXIT_KILLED_AT_DEADLINE = 1
EXIT_CRASH_LOOP = 3

PASSED_TO_WORKERS = frozenset({signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT})
# With TERM sent to every process by the platform, a worker's replacement waits this long.
PLATFORM_TERM_SETTLE = 1.0
# Memory is sampled every pool.memory_interval while ceilings, `auto` or the pool guard need
# fresh numbers, else only for the periodic summary line.
SUMMARY_SECONDS = 60.0
# A worker's footprint counts for `auto` once it has been sampled this many times.
WARM_SAMPLES = 3


class PoolOptions(NamedTuple):
    stop: StopPolicy  # from flags and env; a group's own term_timeout wins for its workers
    stop_from_flags: bool  # --term-timeout/TERM_TIMEOUT given: the file's global value yields
    socket_path: str | None
    exit_on_crash_loop: bool
    memory: memory.MemoryLimit
    prefix_output: bool = False


def desired_counts(config: PoolConfig, limit: int | None, cpus: int) -> dict[str, tuple[Group, int]]:
    """Group -> (definition, how many). An `auto` group starts at its minimum and grows as
    memory allows; with no memory limit known it gets the CPU-based count instead."""
    counts = {}
    for group in config.groups:
        if not group.auto:
            counts[group.name] = (group, group.count or 0)
        elif limit is None:
            wanted = memory.cpu_worker_count(cpus)
            counts[group.name] = (group, max(group.min_count, min(group.max_count, wanted)))
        else:
            counts[group.name] = (group, group.min_count)
    return counts


def worker_env(base: Mapping[str, str], spec: Group, slot: int, pool_id: str, term_timeout: float) -> dict[str, str]:
    """The worker's environment: ours, the group's, then who it is and how long a stop gives it."""
    env = dict(base)
    env.update(spec.env)
    env.update(
        QUEUES=",".join(spec.queues),
        POOL_GROUP=spec.name,
        POOL_SLOT=str(slot),
        POOL_WORKER=f"{spec.name}.{slot}",
        POOL_ID=pool_id,
        # The grace a stop gives this worker before KILL: a worker that knows it can hand its
        # job back in time instead of being killed mid-job.
        POOL_TERM_TIMEOUT=f"{term_timeout:g}",
    )
    return env


class Supervisor:
    def __init__(
        self,
        config: PoolConfig,
        options: PoolOptions,
        env: Mapping[str, str],
        log: Log,
        reload_config: Callable[[], PoolConfig],
    ) -> None:
        self.config = config
        self.options = options
        self.env = dict(env)
        self.log = log
        self.reload_config = reload_config
        self.pool_id = f"{env.get('DYNO') or socket.gethostname()}:{os.getpid()}"
        self.backoff = Backoff.from_config(config)
        self.limit = options.memory
        self.desired = desired_counts(config, self.limit.bytes, os.cpu_count() or 1)
        self.output = PrefixedOutput() if options.prefix_output or config.prefix_output else None
        self.next_sample = 0.0
        self.next_summary = time.monotonic() + SUMMARY_SECONDS
        self.manager_pss = 0
        self.oom_kills_at_start = self.read_oom_kills()
        self.workers: dict[int, Worker] = {}
        self.history: dict[pool.SlotKey, SlotHistory] = {}
        self.reported_loops: set[str] = set()
        self.paused = False  # WINCH: no workers until HUP
        self.stopping = False
        self.stop_deadline: float | None = None  # None while stopping = QUIT: wait for ever
        self.stop_started = 0.0
        self.leftovers_deadline: float | None = None
        self.platform_sent_term = False  # Heroku's TERM reached every process: never repeat it
        self.killed_any = False
        self.exit_status = EXIT_OK
        self.last_spawn = float("-inf")
        self.start_deferred = False
        self.random = random.Random()

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        inbox = prepare_process(self.log)
        control = self._open_control()
        self.log_startup()
        sources: list = [inbox] + ([control] if control else [])
        while True:
            now = time.monotonic()
            self.check_memory(now)
            self.step(now)
            if self.stopping and self.all_gone(now):
                break
            timeout = self.seconds_to_next_wakeup(now)
            pipes = self.output.fds() if self.output else []
            ready, _, _ = select.select(sources + pipes, [], [], timeout)
            signals = inbox.read() if inbox in ready else []
            for received in signals:
                self.on_signal(received)
            for fd in ready:
                if isinstance(fd, int) and self.output is not None:
                    self.output.drain(fd)
            if child_changed(signals):
                self.on_children_exited(reaper.reap())
            if control is not None and control in ready:
                control.serve_pending(self.on_request)
        if self.output is not None:
            for fd in self.output.fds():
                self.output.drain(fd)
        if control is not None:
            control.close()
        inbox.close()
        self.log_shutdown()
        return self.exit_status

    def _open_control(self) -> ControlServer | None:
        if not self.options.socket_path:
            return None
        try:
            return ControlServer(self.options.socket_path)
        except OSError as error:
            self.log.warning(f"control socket unavailable ({error}); --status will not work")
            return None

    def effective_desired(self) -> dict[str, tuple[Group, int]]:
        return {} if self.paused or self.stopping else self.desired

    def step(self, now: float) -> None:
        """Carry out what pool.plan decides, then KILL whoever outstayed its grace."""
        self.start_deferred = False
        for action in pool.plan(self.effective_desired(), self.workers.values(), self.history, now):
            if isinstance(action, Stop):
                self.stop_worker(action.worker, now, action.reason)
            elif now - self.last_spawn >= self.config.spawn_delay:
                self.start_worker(action, now)
            else:
                self.start_deferred = True  # spawn_delay: the next start comes later
        for worker in pool.overdue(self.workers.values(), now):
            self.kill_worker(worker, now)

    def seconds_to_next_wakeup(self, now: float) -> float | None:
        moments = [
            pool.next_wakeup(self.effective_desired(), self.workers.values(), self.history, now),
            self.leftovers_deadline,
            self.next_sample,
            self.last_spawn + self.config.spawn_delay if self.start_deferred else None,
        ]
        pending = [m for m in moments if m is not None]
        return max(0.0, min(pending) - now) if pending else None

    # -- memory --------------------------------------------------------------------------------

    def per_worker_rules(self) -> bool:
        """Whether some group sizes itself by memory or has a ceiling: then every sample counts."""
        return any(g.auto or g.max_memory for g, _ in self.desired.values())

    def memory_watched(self) -> bool:
        return self.limit.bytes is not None or self.per_worker_rules()

    def worth_measuring(self, now: float) -> bool:
        """Per-worker PSS costs a /proc walk: skip it while one cgroup read shows plenty of room."""
        if now >= self.next_summary or self.per_worker_rules():
            return True
        if self.limit.bytes is None or self.limit.cgroup_dir is None or self.limit.cgroup_version is None:
            return self.limit.bytes is not None
        usage = memory.read_usage(self.limit.cgroup_version, self.limit.cgroup_dir)
        return usage is None or usage >= self.config.memory_headroom * self.limit.bytes

    def check_memory(self, now: float) -> None:
        """Measure every worker (PSS, its children included), then apply ceilings, guard and auto."""
        if now < self.next_sample:
            return
        self.next_sample = now + (self.config.memory_interval if self.memory_watched() else SUMMARY_SECONDS)
        if not self.worth_measuring(now):
            return
        self.measure()
        if self.stopping:
            return
        self.recycle_over_ceiling(now)
        self.guard_the_limit(now)
        self.size_auto_groups()
        if now >= self.next_summary:
            self.next_summary = now + SUMMARY_SECONDS
            self.log.info(self.memory_summary())

    def measure(self) -> None:
        """PSS of every worker with its children (one walk over /proc), and of the manager."""
        index = reaper.children_index(reaper.process_table())
        for worker in self.workers.values():
            worker.pss = memory.tree_pss(worker.pid, index)
            if worker.pss is not None:
                worker.peak_pss = max(worker.peak_pss, worker.pss)
                worker.samples += 1
        self.manager_pss = memory.read_pss(os.getpid()) or 0

    def total_pss(self) -> int:
        return self.manager_pss + sum(w.pss or 0 for w in self.workers.values())

    def recycle_over_ceiling(self, now: float) -> None:
        for worker in list(self.workers.values()):
            ceiling = worker.spec.max_memory
            if ceiling and worker.stop_sent is None and (worker.pss or 0) > ceiling:
                self.stop_worker(worker, now, f"uses {memory.format_bytes(worker.pss or 0)}, over its "
                                 f"max_memory {memory.format_bytes(ceiling)}")

    def guard_the_limit(self, now: float) -> None:
        """Recycle the largest worker before the pool reaches the limit: never leave it to the OOM killer."""
        if self.limit.bytes is None or any(w.stop_sent is not None for w in self.workers.values()):
            return
        usage = {pid: w.pss or 0 for pid, w in self.workers.items()}
        guard = memory.guard_fraction(self.config.memory_headroom)
        victim = memory.pick_for_pool_guard(usage, self.total_pss(), self.limit.bytes, guard)
        if victim is not None:
            worker = self.workers[victim]
            self.stop_worker(worker, now, f"the pool uses {memory.format_bytes(self.total_pss())} of "
                             f"{memory.format_bytes(self.limit.bytes)}: recycling the largest worker")

    def size_auto_groups(self) -> None:
        """`auto` groups: as many workers as fit under the limit with headroom, judged by warm workers' peaks."""
        if self.limit.bytes is None:
            return
        for name, (spec, count) in list(self.desired.items()):
            if not spec.auto:
                continue
            mine = [w for w in self.workers.values() if w.group == name and w.stop_sent is None]
            if not mine or len(mine) < count or any(w.samples < WARM_SAMPLES for w in mine):
                continue  # judge only once every worker of the group has been measured a few times
            per_worker = memory.steady_per_worker([w.peak_pss for w in mine])
            others = self.total_pss() - sum(w.pss or 0 for w in mine)
            target = memory.auto_worker_count(self.limit.bytes, self.config.memory_headroom, others,
                                              per_worker, spec.min_count, spec.max_count)
            if target != count:
                self.desired[name] = (spec, target)
                self.log.info(
                    f"auto: {name} {count}->{target} workers ({memory.format_bytes(per_worker)} per worker at "
                    f"peak, {memory.format_bytes(others)} for the rest, limit "
                    f"{memory.format_bytes(self.limit.bytes)} x {self.config.memory_headroom:g})"
                )

    def memory_summary(self) -> str:
        measured = [w for w in self.workers.values() if w.pss is not None]
        line = f"memory: {len(measured)} worker(s) and manager use {memory.format_bytes(self.total_pss())}"
        if self.limit.bytes:
            line += f" of {memory.format_bytes(self.limit.bytes)} ({100 * self.total_pss() / self.limit.bytes:.0f}%)"
        if measured:
            largest = max(measured, key=lambda w: w.pss or 0)
            line += f"; largest {largest.name} {memory.format_bytes(largest.pss or 0)}"
        oom_kills = self.read_oom_kills() - self.oom_kills_at_start
        if oom_kills:
            line += f"; the kernel OOM-killed {oom_kills} process(es) in this container"
        return line

    def read_oom_kills(self) -> int:
        if self.limit.cgroup_dir is None or self.limit.cgroup_version is None:
            return 0
        return memory.read_oom_kills(self.limit.cgroup_version, self.limit.cgroup_dir)

    # -- processes -----------------------------------------------------------------------------

    def start_worker(self, action: Start, now: float) -> None:
        spec, slot = action.spec, action.slot
        key = (spec.name, slot)
        history = self.history.get(key, SlotHistory())
        output = self.output.open(f"{spec.name}.{slot}") if self.output else None
        try:
            env = worker_env(self.env, spec, slot, self.pool_id, self.term_timeout(spec))
            child = spawn(spec.argv, env, output=output)
        except SpawnError as error:
            self.history[key] = pool.after_spawn_failure(history, now, self.backoff, str(error),
                                                         hopeless=True)
            self.report_unrunnable(spec, error)
            return
        except OSError as error:  # fork itself failed: EAGAIN (pids limit) or ENOMEM
            self.history[key] = pool.after_spawn_failure(history, now, self.backoff,
                                                         f"fork failed: {error.strerror}",
                                                         hopeless=False)
            delay = self.history[key].not_before - now
            self.log.warning(f"{spec.name}.{slot}: cannot fork ({error.strerror}); "
                             f"retrying in {delay:.1f}s")
            return
        finally:
            if output is not None:
                os.close(output)  # the worker holds it now; EOF comes when it and its children exit
        self.last_spawn = now
        self.workers[child.pid] = Worker(spec.name, slot, child.pid, spec, now)
        self.log.info(f"spawned {spec.name}.{slot} pid {child.pid}")

    def report_unrunnable(self, spec: Group, error: SpawnError) -> None:
        if spec.name not in self.reported_loops:
            self.reported_loops.add(spec.name)
            self.log.error(
                f"group {spec.name}: {error} (exit {error.code}): a configuration error, "
                f"not a crash; retrying every {self.backoff.maximum:g}s"
            )
            self.on_crash_loop()

    def stop_worker(self, worker: Worker, now: float, reason: str) -> None:
        worker.stop_sent = now
        worker.kill_at = now + self.term_timeout(worker.spec)
        signum = worker.spec.stop_signal
        # Only the worker, not its group: a TERM reaching RQ's work-horse kills the running job.
        reaper.send([worker.pid], signum)
        self.log.info(f"stopping {worker.name} pid {worker.pid} ({reason}): {signal_name(signum)}")

    def kill_worker(self, worker: Worker, now: float) -> None:
        if worker.kill_at is not None and worker.stop_sent is not None:
            self.log.warning(f"{worker.name} pid {worker.pid} still running after "
                             f"{now - worker.stop_sent:.1f}s: KILL")
        self.killed_any = True
        # Its children first, whatever group they are in (RQ's work-horse has its own): a
        # KILLed worker must not leave a running job behind as an orphan.
        reaper.send([*reaper.descendants(worker.pid), -worker.pid, worker.pid], signal.SIGKILL)
        worker.kill_at = now + KILL_RETRY_SECONDS

    def term_timeout(self, spec: Group | None = None) -> float:
        """A group's own timeout, else the file's (unless given by flag or env), else the default."""
        if spec is not None and spec.term_timeout is not None:
            return spec.term_timeout
        if not self.options.stop_from_flags and self.config.term_timeout is not None:
            return self.config.term_timeout
        return self.options.stop.term_timeout

    def on_children_exited(self, exited: list[tuple[int, int]]) -> None:
        now = time.monotonic()
        for pid, status in exited:
            worker = self.workers.pop(pid, None)
            if worker is None:
                self.log.debug(f"reaped orphan {pid} ({reaper.describe(status)})")
                continue
            lived = now - worker.started
            description = f"{reaper.describe(status)} after {lived:.1f}s"
            history = pool.after_exit(
                self.history.get(worker.key, SlotHistory()), lived,
                expected=worker.stop_sent is not None, now=now, backoff=self.backoff,
                jitter=self.random.random(), description=description,
            )
            if self.options.stop.term_sent_to_all and worker.stop_sent is None:
                # On Heroku an exit may be the platform's TERM arriving a moment before ours:
                # a replacement started in between would never get a TERM at all.
                history = history._replace(not_before=max(history.not_before, now + PLATFORM_TERM_SETTLE))
            self.history[worker.key] = history
            if worker.stop_sent is not None:
                self.log.info(f"{worker.name} pid {pid} stopped: {description}")
                continue
            wait = max(0.0, history.not_before - now)
            self.log.warning(f"{worker.name} pid {pid} {description}; restarting"
                             + (f" in {wait:.1f}s" if wait else ""))
            if history.failures == 0:
                self.reported_loops.discard(worker.group)
            elif pool.crash_looping(history) and worker.group not in self.reported_loops:
                self.reported_loops.add(worker.group)
                self.log.error(
                    f"group {worker.group} is crash-looping: {worker.name} {description}, "
                    f"{history.failures} quick exits in a row; backing off up to "
                    f"{self.backoff.maximum:g}s between starts"
                )
                self.on_crash_loop()

    def on_crash_loop(self) -> None:
        if self.options.exit_on_crash_loop and not self.stopping:
            self.log.error("--exit-on-crash-loop: stopping the pool (exit 3)")
            self.begin_stop(signal.SIGTERM, deadline=True, from_platform=False)
            self.exit_status = EXIT_CRASH_LOOP

    # -- stopping ------------------------------------------------------------------------------

    def begin_stop(self, signum: int, *, deadline: bool, from_platform: bool) -> None:
        """Graceful stop: each worker gets its stop signal and, with a deadline, KILL after it."""
        now = time.monotonic()
        self.stopping = True
        self.stop_started = now
        self.log.info(f"{signal_name(signum)}: stopping {len(self.workers)} worker(s)"
                      + ("" if deadline else " with no deadline (QUIT)"))
        skip_term = from_platform and self.options.stop.term_sent_to_all
        self.platform_sent_term = self.platform_sent_term or skip_term
        for worker in self.workers.values():
            if worker.stop_sent is not None:
                continue
            worker.stop_sent = now
            worker.kill_at = now + self.term_timeout(worker.spec) if deadline else None
            if skip_term and worker.spec.stop_signal == signal.SIGTERM:
                continue  # the platform's own TERM already reached it; a second one is a cold stop
            reaper.send([worker.pid], worker.spec.stop_signal)

    def stop_now(self) -> None:
        self.log.warning("second stop signal: KILL every worker now")
        self.stopping = True
        now = time.monotonic()
        for worker in list(self.workers.values()):
            self.kill_worker(worker, now)
        reaper.kill_everything_below()

    def all_gone(self, now: float) -> bool:
        """Workers are gone; give their leftovers TERM, the grace, then KILL. True when none is left."""
        if self.workers:
            return False
        leftovers = reaper.descendants()
        if not leftovers:
            return True
        if self.leftovers_deadline is None:
            # Leftovers share the stop's deadline: a TERM never buys anyone a second grace.
            grace_end = now + self.term_timeout()
            self.leftovers_deadline = grace_end if self.stop_deadline is None else min(grace_end, self.stop_deadline)
            if self.platform_sent_term:
                self.log.info(f"{len(leftovers)} process(es) left behind by workers: they have the platform's TERM")
            else:
                self.log.info(f"{len(leftovers)} process(es) left behind by workers: TERM")
                reaper.send(leftovers, signal.SIGTERM)
        elif now >= self.leftovers_deadline:
            self.killed_any = True
            reaper.send(leftovers, signal.SIGKILL)
            self.leftovers_deadline = now + KILL_RETRY_SECONDS
        return False

    # -- signals and requests ------------------------------------------------------------------

    def on_signal(self, received: Received) -> None:
        signum = received.signum
        if self.log.tracing:
            self.log.trace(f"received {signal_name(signum)} from pid {received.sender}")
        if signum in STOP_SIGNALS:
            if self.stopping and self.stop_deadline is not None:
                self.stop_now()
                return
            self.stop_deadline = time.monotonic() + self.term_timeout()
            self.begin_stop(signum, deadline=True, from_platform=signum == signal.SIGTERM)
        elif signum == signal.SIGQUIT:
            if not self.stopping:
                self.begin_stop(signum, deadline=False, from_platform=False)
        elif signum == signal.SIGHUP:
            self.reload()
        elif signum in (signal.SIGTTIN, signal.SIGTTOU):
            self.scale_all(1 if signum == signal.SIGTTIN else -1)
        elif signum == signal.SIGWINCH:
            self.paused = True
            self.log.info("WINCH: stopping all workers, the manager stays (HUP brings them back)")
        elif signum in PASSED_TO_WORKERS:
            reaper.send(list(self.workers), signum)
            self.log.debug(f"passed {signal_name(signum)} to {len(self.workers)} worker(s)")

    def reload(self) -> dict:
        if self.stopping:
            return {"error": "the pool is stopping"}
        try:
            config = self.reload_config()
        except ConfigError as error:
            for problem in error.problems:
                self.log.error(str(problem))
            self.log.error("reload failed: the running pool is unchanged")
            return {"error": str(error)}
        new = desired_counts(config, self.limit.bytes, os.cpu_count() or 1)
        for name, (spec, _count) in new.items():
            old = self.desired.get(name)
            if spec.auto and old and old[0].auto and pool.same_definition(old[0], spec):
                # keep what `auto` has learnt, within the new bounds
                new[name] = (spec, max(spec.min_count, min(spec.max_count, old[1])))
        changes = pool.reload_diff(self.desired, new)
        self.config, self.desired = config, new
        self.backoff = Backoff.from_config(config)
        self.reported_loops.clear()
        self.paused = False
        self.log.info("reload: " + (", ".join(changes) if changes else "no change"))
        return {"ok": True, "changes": changes}

    def scale_all(self, step: int) -> None:
        self.desired = pool.scaled(self.desired, step)
        counts = ", ".join(f"{name}={count}" for name, (_, count) in self.desired.items())
        self.log.info(f"{'TTIN' if step > 0 else 'TTOU'}: {counts}")

    def on_request(self, request: dict) -> dict:
        command = request.get("command")
        if command == "ping":
            return {"ok": True}
        if command == "status":
            return self.status()
        if command == "health":
            return self.health()
        if command == "reload":
            return self.reload()
        if command == "scale":
            group, count = request.get("group"), request.get("count")
            if group not in self.desired:
                return {"error": f"no group {group!r}; groups: {', '.join(self.desired)}"}
            if not isinstance(count, int) or not 0 <= count <= 1000:
                return {"error": "count: expected a whole number from 0 to 1000"}
            spec, old = self.desired[group]
            self.desired[group] = (spec, count)
            self.log.info(f"scale: {group} {old}->{count}")
            return {"ok": True}
        return {"error": f"unknown command {command!r}"}

    def status(self) -> dict:
        now = time.monotonic()
        self.measure()  # someone asked: fresh numbers are worth one walk over /proc
        running = {w.key: w for w in self.workers.values()}
        rows = []
        keys = set(running) | {(name, slot) for name, (_, count) in self.effective_desired().items()
                               for slot in range(1, count + 1)}
        for key in sorted(keys):
            worker = running.get(key)
            history = self.history.get(key, SlotHistory())
            if worker is not None:
                state = "stopping" if worker.stop_sent is not None else "running"
            elif history.not_before > now:
                state = f"backoff {history.not_before - now:.0f}s"
            else:
                state = "starting"
            rows.append({
                "group": key[0], "slot": key[1], "pid": worker.pid if worker else None,
                "state": state, "uptime": round(now - worker.started, 1) if worker else None,
                "restarts": history.restarts, "last_exit": history.last_exit,
                "memory": worker.pss if worker else None,
            })
        return {
            "pool_id": self.pool_id, "manager_pid": os.getpid(),
            "stopping": self.stopping, "paused": self.paused, "workers": rows,
            "memory": {
                "limit": self.limit.bytes, "limit_source": self.limit.source,
                "manager": self.manager_pss, "total": self.total_pss(),
                "oom_kills": self.read_oom_kills() - self.oom_kills_at_start,
            },
        }

    def health(self) -> dict:
        """--health: crash loops and memory from what the pool already knows (no walk over /proc)."""
        now = time.monotonic()
        counts = {name: count for name, (_, count) in self.effective_desired().items()}
        uptimes = {w.key: now - w.started for w in self.workers.values() if w.stop_sent is None}
        limit = self.limit
        usage_now = (memory.read_usage(limit.cgroup_version, limit.cgroup_dir)
                     if limit.bytes is not None and limit.cgroup_dir is not None and limit.cgroup_version is not None
                     else None)
        problem = first_problem(
            self.stopping,
            looping_slots(counts, uptimes, self.history, self.backoff.reset_after),
            memory_problem(self.total_pss(), limit.bytes, memory.guard_fraction(self.config.memory_headroom),
                           usage_now),
        )
        return {"healthy": problem is None, "problem": problem, "running": len(uptimes),
                "wanted": sum(counts.values())}

    # -- output --------------------------------------------------------------------------------

    def log_startup(self) -> None:
        total = sum(count for _, count in self.desired.values())
        env = f" ({self.config.app_env})" if self.config.app_env else ""
        self.log.info(
            f"pool {self.pool_id}: {len(self.desired)} group(s), {total} worker(s) from "
            f"{self.config.source}{env}; term timeout {self.term_timeout():g}s"
            + ("; TERM comes from the platform" if self.options.stop.term_sent_to_all else "")
        )
        if self.limit.bytes:
            self.log.info(f"memory limit: {memory.format_bytes(self.limit.bytes)} from {self.limit.source}")
        else:
            self.log.info(f"memory limit: none ({self.limit.source})")
        for name, (spec, count) in self.desired.items():
            if spec.auto and self.limit.bytes is None:
                self.log.info(f"auto: {name} runs {count} workers (no memory limit known: 2 x CPUs + 1, "
                              f"within {spec.min_count}-{spec.max_count})")

    def log_shutdown(self) -> None:
        took = time.monotonic() - self.stop_started
        outcome = "some had to be KILLed" if self.killed_any else "all stopped in time"
        self.log.info(f"pool stopped in {took:.2f}s: {outcome}")
        if self.killed_any and self.exit_status == EXIT_OK:
            self.exit_status = EXIT_KILLED_AT_DEADLINE
