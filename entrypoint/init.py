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


class Forwarding(NamedTuple):
    process_group: bool = False  # -g: signal the child's whole group
    rewrites: Mapping[int, int] = MappingProxyType({})  # FROM -> TO; TO 0 drops it

    def target_signal(self, signum: int) -> int:
        return self.rewrites.get(signum, signum)


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
        # In a terminal (and not PID 1, which cannot be stopped) we follow the child's Ctrl-Z.
        self.terminal = controlling_terminal() if os.getpid() != 1 else None

    def run(self) -> int:
        inbox = prepare_process(self.log)
        try:
            self.child = spawn(self.command.argv, self.env, terminal=self.terminal)
        except SpawnError as error:
            self.log.error(str(error))
            return error.code
        self.log.debug(f"started {' '.join(self.command.argv)} as pid {self.child.pid}")
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
        self.forward(signum)

    def forward(self, signum: int) -> None:
        target = self.options.forwarding.target_signal(signum)
        if target == 0:
            self.log.debug(f"dropped {signal_name(signum)} (rewrite to 0)")
            return
        if self.child_status is None and self.child is not None:
            group = self.options.forwarding.process_group or self.command.via_shell
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
                    self.stop_with_child()
                continue
            if self.child is not None and pid == self.child.pid:
                self.child_status = status
                self.log.info(f"child {pid} {reaper.describe(status)}")
                self.sweep_leftovers()
            else:
                self.log.debug(f"reaped orphan {pid} ({reaper.describe(status)})")

    def stop_with_child(self) -> None:
        """Ctrl-Z stopped the child: stop too, so the shell that started us gets the terminal back.

        When the shell continues us (`fg`), the child gets the terminal and SIGCONT again.
        """
        assert self.child is not None and self.terminal is not None
        with contextlib.suppress(OSError):
            os.tcsetpgrp(self.terminal, os.getpgrp())
        os.kill(os.getpid(), signal.SIGSTOP)  # returns when the shell sends SIGCONT
        with contextlib.suppress(OSError):
            os.tcsetpgrp(self.terminal, self.child.group)
        reaper.send([-self.child.group], signal.SIGCONT)

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
