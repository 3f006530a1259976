"""Two signal recorders in one process group: this process (PARENT_LOG) and a child (CHILD_LOG).

argv: PARENT_LOG CHILD_LOG. Both exit on TERM.
"""

import os
import sys

recorder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "record_signals.py")
parent_log, child_log = sys.argv[1], sys.argv[2]
if os.fork() == 0:
    os.execv(sys.executable, [sys.executable, recorder, child_log, "exit-on-term"])
os.execv(sys.executable, [sys.executable, recorder, parent_log, "exit-on-term"])
