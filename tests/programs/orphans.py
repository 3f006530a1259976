"""Orphans COUNT grandchildren, each reporting who adopted it, then records signals.

argv: COUNT PPID_FILE LOG. Every grandchild waits until its parent has exited, appends its new
parent's pid to PPID_FILE and exits (a zombie for whoever adopted it to reap). Then this process
becomes tests/programs/record_signals.py LOG exit-on-term.
"""

import os
import sys
import time

count, ppid_file, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
for _ in range(count):
    middle = os.fork()
    if middle == 0:
        me = os.getpid()
        if os.fork() == 0:
            while os.getppid() == me:
                time.sleep(0.001)
            fd = os.open(ppid_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, f"{os.getppid()}\n".encode())
            os._exit(0)
        os._exit(0)
    os.waitpid(middle, 0)
recorder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "record_signals.py")
os.execv(sys.executable, [sys.executable, recorder, log, "exit-on-term"])
