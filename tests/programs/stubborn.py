"""A child that ignores TERM, as do its process-group member and its orphan (setsid, double fork).

argv: PIDS_FILE. Writes "GROUP_PID ORPHAN_PID" to PIDS_FILE once both exist, then waits forever.
The two others are `sleep` processes that inherit the ignored TERM through exec.
"""

import os
import signal
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
member = os.fork()
if member == 0:
    os.execvp("sleep", ["sleep", "1000"])
read_end, write_end = os.pipe()
middle = os.fork()
if middle == 0:
    os.setsid()
    orphan = os.fork()
    if orphan == 0:
        os.execvp("sleep", ["sleep", "1001"])
    os.write(write_end, str(orphan).encode())
    os._exit(0)
os.close(write_end)
orphan = int(os.read(read_end, 64))
os.waitpid(middle, 0)
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write(f"{member} {orphan}\n")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    time.sleep(3600)
