"""Leaves a daemon behind and exits: the init must TERM (then KILL) what its command left.

argv: LOG CODE [exit-on-term]. The daemon is record_signals.py LOG [exit-on-term], started
through setsid() and a double fork, so it is in no process group of ours and its parent is gone.
This process exits with CODE once the daemon has written "ready".
"""

import os
import sys
import time

log, code, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
recorder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "record_signals.py")
middle = os.fork()
if middle == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sys.executable, [sys.executable, recorder, log, *extra])
    os._exit(0)
os.waitpid(middle, 0)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    if os.path.exists(log) and "ready" in open(log).read().split():  # noqa: SIM115
        break
    time.sleep(0.01)
sys.exit(code)
