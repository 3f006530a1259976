"""The pool's supervision loop: one thread, one select, signals and requests queued, decisions from pool.py."""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

from entrypoint import elastic, memory, monitoring, pool, preload, reaper, report, steering
from entrypoint.console import Log, PrefixedOutput
from entrypoint.control import ControlServer
from entrypoint.health import memory_problem
from entrypoint.init import prepare_process
from entrypoint.memory_policy import MemoryWatch, Recycle, Resize
from entrypoint.pool import Backoff, SlotHistory, Start, Stop, Worker, desired_counts, worker_env
from entrypoint.poolconfig import ConfigError, Group, PoolConfig
from entrypoint.shutdown import KILL_RETRY_SECONDS, STOP_SIGNALS, StopPolicy
from entrypoint.signals import Received, child_changed, signal_name
from entrypoint.spawn import SpawnError, spawn

EXIT_OK = 0
EXIT_KILLED_AT_DEADLINE = 1
EXIT_CONFIG = 2  # the app to preload cannot be imported
EXIT_CRASH_LOOP = 3

PASSED_TO_WORKERS = frozenset({signal.SIGUSR1, signal.SIGUSR2, signal.SIGCONT})
# With TERM sent to every process by the platform, a worker's replacement waits this long.
PLATFORM_TERM_SETTLE = 1.0


def jitter() -> float:
    """A number in [0, 1) to spread backoffs apart: from the kernel, not the random module, which
    PID 1 would carry for the rest of its life for this one use."""
    return int.from_bytes(os.urandom(4), "big") / 2**32


class PoolOptions(NamedTuple):
    stop: StopPolicy  # from flags and env; a group's own term_timeout wins for its workers
    socket_path: str | None
    exit_on_crash_loop: bool
    memory: memory.MemoryLimit
    prefix_output: bool = False
    metrics_port: int | None = None


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
        self.memory = MemoryWatch(self.limit, time.monotonic())
        self.templates = preload.Templates(env, log, self.backoff)
        self.work = elastic.WorkWatch()
        self.desired = desired_counts(config, self.limit.bytes, os.cpu_count() or 1)
        self.output = PrefixedOutput() if options.prefix_output or config.prefix_output else None
        self.monitoring = monitoring.Monitoring(env, log, self.backoff, self.output)
        self.control_path: str | None = None  # the control socket, once it listens
        self.started_at = time.time()
        self.exits: dict[str, dict[str, int]] = {}  # group -> report.exit_reason -> count
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

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        inbox = prepare_process(self.log)
        control = self._open_control()
        self.control_path = control.path if control else None
        for line in report.startup_lines(self.pool_id, self.config, self.desired, self.term_timeout(),
                                         self.options.stop.term_sent_to_all, self.limit):
            self.log.info(line)
        self.configure_monitor()
        setup = preload.setup_for(self.config, self.env)
        if setup is not None:
            self.templates.preloading = True
            self.start_template(setup, candidate=False)
        while True:
            now = time.monotonic()
            self.check_memory(now)
            self.follow_the_work(now)
            self.step(now)
            if self.stopping and self.all_gone(now):
                break
            timeout = self.seconds_to_next_wakeup(now)
            sources: list = [inbox, *([control] if control else []), *self.templates.listening(),
                             *self.monitoring.listening(), *(self.output.fds() if self.output else [])]
            ready, _, _ = select.select(sources, [], [], timeout)
            signals = inbox.read() if inbox in ready else []
            for received in signals:
                self.on_signal(received)
            for source in ready:
                if isinstance(source, int) and self.output is not None:
                    self.output.drain(source)
                elif isinstance(source, preload.Template):
                    for event in self.templates.read(source, time.monotonic()):
                        self.on_template_event(event)
                elif isinstance(source, monitoring.Monitor):
                    self.on_monitor_messages(source)
            if child_changed(signals):
                self.on_children_exited(reaper.reap())
            if control is not None and control in ready:
                control.serve_pending(self.on_request)
        if self.output is not None:
            for fd in self.output.fds():
                self.output.drain(fd)
        if control is not None:
            control.close()
        self.templates.close()
        self.monitoring.close()
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
        return {} if self.paused or self.stopping or self.templates.preloading else self.desired

    def step(self, now: float) -> None:
        """Carry out what pool.plan decides, then KILL whoever outstayed its grace."""
        self.start_deferred = False
        self.monitoring.kill_overdue(now)
        if self.templates.due_restart(now) and not self.stopping:
            self.start_template(self.templates.setup, candidate=False)
        if self.monitoring.due_restart(now) and not self.stopping:
            self.monitoring.start(now)
        self.templates.kill_hung(now)
        starting = self.templates.starting()
        for action in pool.plan(self.effective_desired(), self.workers.values(), self.history, now, starting):
            if isinstance(action, Stop):
                self.stop_worker(action.worker, now, action.reason)
            elif action.spec.forked and not self.templates.ready():
                continue  # the template's Ready brings us back here
            elif now - self.last_spawn >= self.config.spawn_delay:
                self.start_worker(action, now)
            else:
                self.start_deferred = True  # spawn_delay: the next start comes later
        for worker in pool.overdue(self.workers.values(), now):
            self.kill_worker(worker, now)

    def seconds_to_next_wakeup(self, now: float) -> float | None:
        moments = [
            pool.next_wakeup(self.effective_desired(), self.workers.values(), self.history, now),
            self.templates.next_wakeup(restarting=not self.stopping),
            self.monitoring.next_wakeup(restarting=not self.stopping),
            self.leftovers_deadline,
            self.memory.next_sample,
            self.work.next_wakeup(now, self.config, self.desired),
            self.last_spawn + self.config.spawn_delay if self.start_deferred else None,
        ]
        pending = [m for m in moments if m is not None]
        return max(0.0, min(pending) - now) if pending else None

    # -- memory --------------------------------------------------------------------------------

    def check_memory(self, now: float) -> None:
        """Measure when due, then carry out the memory policy: recycle, resize, summarize."""
        decisions = self.memory.check(now, self.config, self.desired, self.workers.values(), self.helper_pids(),
                                      self.stopping)
        for decision in decisions:
            if isinstance(decision, Recycle):
                if decision.worker.stop_sent is None:
                    self.stop_worker(decision.worker, now, decision.reason)
            elif isinstance(decision, Resize):
                spec, _count = self.desired[decision.group]
                self.desired[decision.group] = (spec, decision.count)
                self.log.info(decision.reason)
            else:
                backlog = monitoring.summary(self.monitoring.readings, now)
                self.log.info(f"{decision}; {backlog}" if backlog else decision)
                work = report.work_line(steering.group_entries(self.view(now)))
                if work is not None:
                    self.log.info(work)

    # -- busy, idle, elastic ---------------------------------------------------------------------

    def follow_the_work(self, now: float) -> None:
        """Sample which workers are busy each second; move elastic slots to the groups whose
        backlog lasts: each second, as a new reading comes, and the moment a backlog has lasted."""
        steady = not (self.stopping or self.paused or self.templates.preloading)
        for move in self.work.follow(now, self.config, self.desired, self.workers.values(),
                                     monitoring.for_elastic(self.monitoring.readings, now), self.memory,
                                     steady=steady):
            spec, _count = self.desired[move.group]
            self.desired[move.group] = (spec, move.count)
            self.log.info(f"elastic: {move.reason}")

    def helper_pids(self) -> dict[str, list[int]]:
        """Our helper processes, whose memory is the pool's too: the preload templates and the monitor."""
        return {"template": [t.pid for t in self.templates.alive()],
                "monitor": [m.pid for m in self.monitoring.alive()]}

    # -- the monitor ---------------------------------------------------------------------------

    def configure_monitor(self) -> None:
        """Start, tell or retire the monitor for the config now in force."""
        now = time.monotonic()
        setup = monitoring.setup_for(self.config, self.env, self.pool_id, self.options.metrics_port,
                                     self.control_path)
        self.monitoring.configure(setup, now)
        self.send_fleet_entry(now)

    def on_monitor_messages(self, monitor: monitoring.Monitor) -> None:
        now = time.monotonic()
        heard = self.monitoring.read(monitor, now)
        for line in heard.warnings:
            self.log.warning(line)
        for line in heard.notes:
            self.log.info(line)
        if heard.ticked:
            self.send_fleet_entry(now)
            self.work.plan_at = now  # a new backlog reading

    def send_fleet_entry(self, now: float) -> None:
        if self.monitoring.publishing():
            self.monitoring.send({"fleet": steering.fleet_entry(
                self.view(now), self.started_at, self.memory.total(self.workers.values()), self.limit.bytes)})

    # -- preloaded workers ---------------------------------------------------------------------

    def start_template(self, setup: preload.Setup | None, *, candidate: bool) -> bool:
        """A template for the pool (or, candidate, for a reload); False when it cannot start."""
        assert setup is not None
        if candidate:
            # An older reload's, still importing: the newest file wins, whether or not this starts.
            self.templates.retire(self.templates.candidate)
        output = self.output.open("template") if self.output else None
        try:
            template = self.templates.start(setup, time.monotonic(), output)
        except (OSError, SpawnError) as error:
            self.log.error(f"cannot start the preload template: {error}")
            if candidate:
                self.templates.pending = None
            else:
                self.templates.history = pool.after_spawn_failure(
                    self.templates.history, time.monotonic(), self.backoff, str(error), hopeless=False)
            return False
        finally:
            if output is not None:
                os.close(output)
        if candidate:
            self.templates.candidate = template
        else:
            self.templates.current = template
            self.templates.setup = setup
        return True

    def on_template_event(self, event: preload.Event) -> None:
        now = time.monotonic()
        if isinstance(event, preload.Forked):
            self.adopt_forked(event, now)
        elif isinstance(event, preload.ForkFailed):
            key = (event.spec.name, event.slot)
            self.history[key] = pool.after_spawn_failure(self.history.get(key, SlotHistory()), now,
                                                         self.backoff, f"fork failed: {event.error}",
                                                         hopeless=False)
            self.log.warning(f"{event.spec.name}.{event.slot}: the template cannot fork ({event.error})")
        elif isinstance(event, preload.Ready):
            self.carry_out(self.templates.on_ready(event.template, event.report))
        else:
            self.carry_out(self.templates.on_failed(event.template, event.report))

    def carry_out(self, verdict: preload.Verdict) -> None:
        """What the app's verdict in a template means for the pool."""
        if isinstance(verdict, preload.Reloaded):
            self.apply_config(verdict.config)
        elif isinstance(verdict, preload.Preloaded):
            self.desired = preload.stamped(self.desired, verdict.generation)
        elif isinstance(verdict, preload.GaveUp):
            self.give_up_starting()

    def adopt_forked(self, event: preload.Forked, now: float) -> None:
        worker = Worker(event.spec.name, event.slot, event.pid, event.spec, now)
        self.workers[event.pid] = worker
        self.log.info(f"forked {worker.name} pid {worker.pid}")
        if event.exited is not None:
            self.on_children_exited([(event.pid, event.exited)])
        elif self.stopping:
            # Forked after the stop began: no TERM reached it, from us or the platform.
            worker.stop_sent, worker.kill_at = now, self.stop_deadline
            reaper.send([worker.pid], worker.spec.stop_signal)

    def give_up_starting(self) -> None:
        """The first template could not import the app: no worker has started; exit 2."""
        self.exit_status = EXIT_CONFIG
        self.stopping = True
        self.stop_started = time.monotonic()
        self.monitoring.retire(self.stop_started)

    # -- processes -----------------------------------------------------------------------------

    def start_worker(self, action: Start, now: float) -> None:
        spec, slot = action.spec, action.slot
        key = (spec.name, slot)
        history = self.history.get(key, SlotHistory())
        output = self.output.open(f"{spec.name}.{slot}") if self.output else None
        env = worker_env(self.env, spec, slot, self.pool_id, self.term_timeout(spec))
        try:
            if spec.forked:
                self.templates.request_fork(spec, slot, env, now, output)
                self.last_spawn = now
                return
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
        return self.options.stop.grace(spec.term_timeout if spec else None, self.config.term_timeout)

    def on_children_exited(self, exited: list[tuple[int, int]]) -> None:
        now = time.monotonic()
        for pid, status in exited:
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self.on_worker_exit(worker, status, now)
                continue
            template = self.templates.owner(pid)
            monitor = self.monitoring.owner(pid)
            if template is not None:
                self.carry_out(self.templates.on_gone(template, status, now, jitter(), stopping=self.stopping))
            elif monitor is not None:
                line = self.monitoring.on_exit(monitor, status, now, jitter())
                if line is not None and not self.stopping:
                    self.log.warning(line)
            elif not self.templates.keep_unclaimed(pid, status, now):
                self.log.debug(f"reaped orphan {pid} ({reaper.describe(status)})")

    def on_worker_exit(self, worker: Worker, status: int, now: float) -> None:
        lived = now - worker.started
        description = f"{reaper.describe(status)} after {lived:.1f}s"
        reason = report.exit_reason(status, asked=worker.stop_sent is not None)
        counts = self.exits.setdefault(worker.group, {})
        counts[reason] = counts.get(reason, 0) + 1
        history = pool.after_exit(
            self.history.get(worker.key, SlotHistory()), lived,
            expected=worker.stop_sent is not None, now=now, backoff=self.backoff,
            jitter=jitter(), description=description,
        )
        if self.options.stop.term_sent_to_all and worker.stop_sent is None:
            # On Heroku an exit may be the platform's TERM arriving a moment before ours:
            # a replacement started in between would never get a TERM at all.
            history = history._replace(not_before=max(history.not_before, now + PLATFORM_TERM_SETTLE))
        self.history[worker.key] = history
        if worker.stop_sent is not None:
            self.log.info(f"{worker.name} pid {worker.pid} stopped: {description}")
            return
        wait = max(0.0, history.not_before - now)
        self.log.warning(f"{worker.name} pid {worker.pid} {description}; restarting"
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
        self.templates.pending = None
        for template in self.templates.alive():
            self.templates.retire(template)  # no more forks; it exits once it answered those under way
        self.monitoring.retire(now)  # it takes the pool's fleet entry away as it goes
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
        if self.workers or self.templates.alive() or self.monitoring.alive():
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
        """Read the file again. With forked groups, a new template imports the app first, and the
        new config applies only once it is ready: a broken file or app changes nothing."""
        if self.stopping:
            return {"error": "the pool is stopping"}
        try:
            config = self.reload_config()
        except ConfigError as error:
            for problem in error.problems:
                self.log.error(str(problem))
            self.log.error("reload failed: the running pool is unchanged")
            return {"error": str(error)}
        setup = preload.setup_for(config, self.env)
        if setup is None:
            self.templates.pending = None
            self.templates.retire(self.templates.candidate)
            self.templates.retire(self.templates.current)
            self.templates.setup = None
            return {"ok": True, "changes": self.apply_config(config)}
        self.templates.pending = config
        if not self.start_template(setup, candidate=True):
            self.log.error("reload failed: the running pool is unchanged")
            return {"error": "cannot start a template to import the app"}
        self.log.info("reload: importing the app in a new template; the new config applies when it is ready")
        return {"ok": True, "changes": [], "pending": "importing the app in a new template"}

    def apply_config(self, config: PoolConfig) -> list[str]:
        """Move to a config that has been read and, with forked groups, preloaded."""
        template = self.templates.current
        new = desired_counts(config, self.limit.bytes, os.cpu_count() or 1)
        if template is not None:
            new = preload.stamped(new, template.generation)
        new = pool.keeping_learnt_counts(self.desired, new)
        changes = pool.reload_diff(self.desired, new)
        self.config, self.desired = config, new
        self.backoff = self.templates.backoff = self.monitoring.backoff = Backoff.from_config(config)
        self.configure_monitor()
        self.reported_loops.clear()
        self.paused = False
        self.log.info("reload: " + (", ".join(changes) if changes else "no change"))
        return changes

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
            scale = steering.scale_request(request, self.desired)
            if isinstance(scale, dict):
                return scale  # the error reply
            spec, old = self.desired[scale.group]
            self.desired[scale.group] = (spec, scale.count)
            self.log.info(f"scale: {scale.group} {old}->{scale.count}")
            return {"ok": True}
        return {"error": f"unknown command {command!r}"}

    def view(self, now: float) -> steering.PoolView:
        """What the replies and the fleet entry are built from."""
        return steering.PoolView(self.pool_id, self.stopping, self.paused, self.effective_desired(), self.desired,
                                 self.workers.values(), self.history, self.backoff.reset_after,
                                 self.monitoring.readings, lambda name: self.work.usage.shares(name, now), now)

    def status(self) -> dict:
        now = time.monotonic()
        # someone asked: fresh numbers are worth one walk over /proc
        self.memory.measure(self.workers.values(), self.helper_pids())
        return steering.status(self.view(now), self.exits, self.templates, self.monitoring, self.memory, self.limit)

    def health(self) -> dict:
        """--health: crash loops and memory from what the pool already knows (no walk over /proc)."""
        now = time.monotonic()
        limit = self.limit
        usage_now = (memory.read_usage(limit.cgroup_version, limit.cgroup_dir)
                     if limit.bytes is not None and limit.cgroup_dir is not None and limit.cgroup_version is not None
                     else None)
        over_guard = memory_problem(self.memory.total(self.workers.values()), limit.bytes,
                                    memory.guard_fraction(self.config.memory_headroom), usage_now)
        return steering.health(self.view(now), over_guard)

    # -- output --------------------------------------------------------------------------------

    def log_shutdown(self) -> None:
        if self.exit_status == EXIT_CONFIG:
            return  # it never started
        took = time.monotonic() - self.stop_started
        outcome = "some had to be KILLed" if self.killed_any else "all stopped in time"
        self.log.info(f"pool stopped in {took:.2f}s: {outcome}")
        if self.killed_any and self.exit_status == EXIT_OK:
            self.exit_status = EXIT_KILLED_AT_DEADLINE
