"""The least a Python init can do: the floor for start-up, memory, reaping and forwarding.

Run as `python -I -S min_init.py COMMAND [ARG...]`. It blocks every signal, spawns COMMAND with
clean signals, then waits in sigwaitinfo: CHLD means reap everything (exit with the child's
status once the child itself is gone), any other signal goes to the child. No options, no logs,
no grace period: whatever entrypoint costs above this is the price of its features and code.
"""

import os
import signal
import sys

signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
child = os.posix_spawnp(
    sys.argv[1], sys.argv[1:], os.environ,
    setsigmask=(), setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
)
waiting = signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP}
while True:
    info = signal.sigwaitinfo(waiting)
    if info.si_signo != signal.SIGCHLD:
        os.kill(child, info.si_signo)
        continue
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            sys.exit(0)
        if pid == 0:
            break
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            sys.exit(128 - code if code < 0 else code)
