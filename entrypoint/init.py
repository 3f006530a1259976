"""The init: run one command as our child, reap everything, forward signals, stop with grace."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from entrypoint import reaper
from entrypoint.cmdline import Command
from entrypoint.console import Log
from entrypoint.shutdown import KILL_RETRY_SECONDS, STOP_SIGNALS, StopPolicy, earliest
from entrypoint.signals import Received, SignalInbox, child_changed, signal_name
from entrypoint.spawn import Child, SpawnError, controlling_terminal, spawn

# Ctrl-Z's TSTP and the terminal-access stops TTIN and TTOU: a shell's job stops on them.
JOB_CONTROL = frozenset({signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU})


class Forwarding(NamedTuple):
    process_group: bool = False  # -g: signal the child's whole group
    rewrites: Mapping[int, int] = MappingProxyType({})  # FROM -> TO; TO 0 drops it

    def route(self, signum: int, *, job_stop: bool = False) -> tuple[int, bool]:
        """(the signal to pass on, whether to the child's whole process group) for one we received.

        `job_stop`: we are about to stop ourselves for a job-control signal, so the whole job must
        stop. The child's group gets STOP, which no process can catch or ignore: a TSTP that the
        child catches, ignores, or that reaches an orphaned group would leave it running while the
        shell shows the job stopped (dumb-init does the same). A rewrite of the signal still wins.
        """
        if job_stop and signum not in self.rewrites:
            return signal.SIGSTOP, True
        return self.rewrites.get(signum, signum), self.process_group


class InitOptions(NamedTuple):
    stop: StopPolicy
    forwarding: Forwarding = Forwarding()
    remap_exit: frozenset[int] = frozenset()


def prepare_process(log: Log) -> SignalInbox:
    """What an init does before its first child: own every signal, adopt orphans."""
    inbox = SignalInbox()
    if os.getpid() != 1:
        if reaper.become_subreaper():
            log.debug(f"not PID 1 (pid {os.getpid()}): adopting orphans as a child subreaper")
        else:
            log.warning("could not become a child subreaper: orphans will not come to us")
    return inbox


class Init:
    """One child, supervised as tini would, with the graceful stop tini lacks."""

    def __init__(self, command: Command, options: InitOptions, env: Mapping[str, str], log: Log):
        self.command = command
        self.options = options
        self.env = env
        self.log = log
        self.child: Child | None = None
        self.child_status: int | None = None
        self.deadline: float | None = None  # when everything still alive gets KILL
        self.delayed_stop: tuple[float, int] | None = None  # --term-delay: (when, which signal)
        self.stopping = False  # a TERM/INT arrived
        self.killing = False  # the deadline passed: KILL whatever still appears
        self.swept = False  # the leftovers got their TERM after the child exited
        # Job control: we stop with our child, so the shell that started us sees a stopped job.
        # PID 1 cannot be stopped: it only passes the signals on.
        self.can_stop = os.getpid() != 1
        # In a terminal we also follow the child's own Ctrl-Z, and hand the terminal back and forth.
        self.terminal = controlling_terminal() if self.can_stop else None
        self.continued = False  # the CONT that continued us is passed on already: skip it when read

    def run(self) -> int:
        inbox = prepare_process(self.log)
        try:
            self.child = spawn(self.command.argv, self.env, terminal=self.terminal)
        except SpawnError as error:
            self.log.error(str(error))
            return error.code
        self.log.debug(f"started {' '.join(self.command.argv)} as pid {self.child.pid}")
        # The child keeps the directory we were started in; we must not hold its mount busy.
        with contextlib.suppress(OSError):
            os.chdir("/")
        while not self.finished():
            ready, _, _ = select.select([inbox], [], [], self.seconds_to_next_timer())
            signals = inbox.read() if ready else []
            for received in signals:
                self.on_signal(received)
            if child_changed(signals):
                self.on_children_exited(reaper.reap(stops=self.terminal is not None))
            self.on_timers(time.monotonic())
        inbox.close()
        return self.exit_status()

    # -- decisions ---------------------------------------------------------------------------

    def finished(self) -> bool:
        return self.child_status is not None and self.swept and not reaper.descendants()

    def exit_status(self) -> int:
        assert self.child_status is not None
        code = reaper.exit_code(self.child_status)
        return 0 if code in self.options.remap_exit else code

    def seconds_to_next_timer(self) -> float | None:
        timers = [t for t in (self.deadline, self.delayed_stop and self.delayed_stop[0]) if t]
        if not timers:
            return None
        return max(0.0, min(timers) - time.monotonic())

    # -- events ------------------------------------------------------------------------------

    def on_signal(self, received: Received) -> None:
        signum = received.signum
        if self.log.tracing:
            self.log.trace(f"received {signal_name(signum)} from pid {received.sender}")
        if not received.forwardable():
            return
        if signum == signal.SIGCONT:
            if self.continued:
                self.continued = False  # it woke us, and the child's group has had it from stop_with_child()
                return
            self.pass_terminal_on()  # `fg` of a job that `bg` left running
        stop = self.options.stop
        if signum in STOP_SIGNALS:
            first = not self.stopping
            self.stopping = True
            self.deadline = earliest(self.deadline, time.monotonic() + stop.term_timeout)
            if first:
                self.log.info(
                    f"{signal_name(signum)} received: stopping, KILL in {stop.term_timeout:g}s"
                )
            if signum == signal.SIGTERM and stop.term_sent_to_all:
                self.log.debug("not passing TERM on: the platform sent it to every process")
                return
            if self.delayed_stop is not None:
                return  # still draining: a repeated TERM must not reach the child early (cold stop)
            if first and stop.term_delay > 0:
                self.delayed_stop = (time.monotonic() + stop.term_delay, signum)
                self.log.info(f"passing {signal_name(signum)} on in {stop.term_delay:g}s")
                return
        job_stop = signum in JOB_CONTROL and self.can_stop and self.child_status is None
        self.forward(signum, job_stop=job_stop)
        if job_stop:
            self.stop_with_child()

    def forward(self, signum: int, *, job_stop: bool = False) -> None:
        target, to_group = self.options.forwarding.route(signum, job_stop=job_stop)
        if target == 0:
            self.log.debug(f"dropped {signal_name(signum)} (rewrite to 0)")
            return
        if self.child_status is None and self.child is not None:
            group = to_group or self.command.via_shell
            pid = -self.child.group if group else self.child.pid
            reaper.send([pid], target)
            who = f"process group {self.child.group}" if group else f"pid {self.child.pid}"
        else:
            # The child is gone; whatever it left behind is what the signal is now for.
            leftovers = reaper.descendants()
            reaper.send(leftovers, target)
            who = f"{len(leftovers)} leftover process(es)"
        if self.log.debugging:
            via = f" (rewritten from {signal_name(signum)})" if target != signum else ""
            self.log.debug(f"forwarded {signal_name(target)}{via} to {who}")

    def on_children_exited(self, exited: list[tuple[int, int]]) -> None:
        for pid, status in exited:
            if os.WIFSTOPPED(status):
                if self.child is not None and pid == self.child.pid:
                    self.log.debug(f"child {pid} stopped by {signal_name(os.WSTOPSIG(status))}: stopping too")
                    self.stop_with_child()
                continue
            if self.child is not None and pid == self.child.pid:
                self.child_status = status
                self.log.info(f"child {pid} {reaper.describe(status)}")
                self.sweep_leftovers()
            else:
                self.log.debug(f"reaped orphan {pid} ({reaper.describe(status)})")

    def stop_with_child(self) -> None:
        """Stop ourselves with the child, so the shell that started us sees a stopped job (and, in
        a terminal, gets the terminal back); return when something continues us (`fg`, `bg`).

        Then the child's whole group gets CONT (and the terminal again), exactly once: the CONT
        that woke us is not passed on a second time when we read it.
        """
        assert self.child is not None
        if self.terminal is not None:
            with contextlib.suppress(OSError):
                os.tcsetpgrp(self.terminal, os.getpgrp())
        os.kill(os.getpid(), signal.SIGSTOP)  # returns once we get SIGCONT
        self.pass_terminal_on()
        reaper.send([-self.child.group], signal.SIGCONT)
        self.continued = True
        self.log.debug(f"continued: passed CONT on to process group {self.child.group}")

    def pass_terminal_on(self) -> None:
        """`fg` gave the terminal to our group: the child's group is the one that reads it.
        After `bg` the terminal stays the shell's."""
        if self.terminal is None or self.child is None or self.child_status is not None:
            return
        with contextlib.suppress(OSError):
            if os.tcgetpgrp(self.terminal) == os.getpgrp():
                os.tcsetpgrp(self.terminal, self.child.group)

    def sweep_leftovers(self) -> None:
        """The child is gone: give what it left behind TERM and the same grace, then KILL."""
        self.swept = True
        leftovers = reaper.descendants()
        if not leftovers:
            return
        stop = self.options.stop
        self.deadline = earliest(self.deadline, time.monotonic() + stop.term_timeout)
        if self.stopping and stop.term_sent_to_all:
            return  # they already have the platform's TERM
        self.log.info(f"child exited; {len(leftovers)} process(es) left: TERM, KILL in "
                      f"{max(0.0, self.deadline - time.monotonic()):.3g}s")
        reaper.send(leftovers, signal.SIGTERM)

    def on_timers(self, now: float) -> None:
        if self.delayed_stop is not None and now >= self.delayed_stop[0]:
            signum = self.delayed_stop[1]
            self.delayed_stop = None
            self.forward(signum)
        if self.deadline is not None and now >= self.deadline:
            if not self.killing:
                self.log.warning("term timeout reached: KILL to everything left")
            self.killing = True
            groups = [self.child.group] if self.child is not None else []
            reaper.kill_everything_below(groups)
            # A process forked while we swept escaped the KILL: look again shortly.
            self.deadline = now + KILL_RETRY_SECONDS
