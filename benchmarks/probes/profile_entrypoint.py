"""Run entrypoint's main() under cProfile (not its imports); stats go to the file $BENCH_PROFILE."""

import cProfile
import os
import sys

from entrypoint.cli import main

profile = cProfile.Profile()
profile.enable()
try:
    code = main(sys.argv[1:])
finally:
    profile.disable()
    profile.dump_stats(os.environ["BENCH_PROFILE"])
sys.exit(code)
