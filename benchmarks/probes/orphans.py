"""Make COUNT orphans as fast as possible, then wait to be killed.

Each of COUNT forks (a "middle") forks a grandchild and exits at once, so the grandchild - alive
or already a zombie - is reparented to PID 1 of the namespace, which has to reap it. We reap the
middles ourselves, without blocking, so only grandchildren are left for the init. When all
middles are gone we print "START END" (CLOCK_MONOTONIC ns) on stdout and pause.
"""

import os
import signal
import sys
import time

count = int(sys.argv[1])
middles = 0
start = time.monotonic_ns()
for _ in range(count):
    if os.fork() == 0:
        if os.fork() == 0:
            os._exit(0)
        os._exit(0)
    middles += 1
    while middles:
        pid, _status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            break
        middles -= 1
while middles:
    os.waitpid(-1, 0)
    middles -= 1
end = time.monotonic_ns()
os.write(1, b"%d %d\n" % (start, end))
while True:
    signal.pause()
