"""`entrypoint --health`: the decision with plain values, then real pools that are healthy, crash-looping,
over their memory guard, stopping, or not there at all."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from conftest import Runner, wait_for
from test_supervisor import Pool

from entrypoint.control import request
from entrypoint.health import first_problem, looping_slots, memory_problem
from entrypoint.memory import guard_fraction
from entrypoint.pool import CRASH_LOOP_AFTER, SlotHistory

MIB = 1024 * 1024
# A bound that only catches a hang: the pool answers in about a millisecond.
ANSWER_BOUND = 1.0
FAST_BACKOFF = "  backoff_min: 0.01\n  backoff_max: 0.02\n"

# ------------------------------------------------------------------------------- the decision

LOOPING = SlotHistory(restarts=7, failures=CRASH_LOOP_AFTER, not_before=0.0,
                      last_exit="exited with status 1 after 0.1s")


def test_a_slot_is_looping_from_its_fifth_quick_failure():
    history = {("a", 1): LOOPING, ("a", 2): SlotHistory(failures=CRASH_LOOP_AFTER - 1)}
    assert looping_slots({"a": 2}, {}, history, reset_after=30) == [(("a", 1), LOOPING)]


def test_a_worker_that_outlived_backoff_reset_ends_the_loop_before_it_exits():
    history = {("a", 1): LOOPING}
    assert looping_slots({"a": 1}, {("a", 1): 29.9}, history, reset_after=30) != []
    assert looping_slots({"a": 1}, {("a", 1): 30.0}, history, reset_after=30) == []


def test_removed_groups_and_slots_scaled_away_do_not_count():
    history = {("gone", 1): LOOPING, ("a", 3): LOOPING}
    assert looping_slots({"a": 2}, {}, history, reset_after=30) == []


def test_memory_is_wrong_only_at_or_over_the_guard():
    guard = guard_fraction(0.85)
    assert guard == pytest.approx(0.925)
    assert memory_problem(int(0.92 * 100 * MIB), 100 * MIB, guard, None) is None
    line = memory_problem(95 * MIB, 100 * MIB, guard, None)
    assert line == "memory: the pool uses 95.0 MiB of its 100.0 MiB limit (95%), over the guard at 92.5%"
    assert memory_problem(10**12, None, guard, None) is None, "no limit, no guard"


def test_a_fresh_cgroup_reading_under_the_guard_clears_an_old_total():
    guard = guard_fraction(0.85)
    assert memory_problem(95 * MIB, 100 * MIB, guard, usage_now=50 * MIB) is None
    assert memory_problem(95 * MIB, 100 * MIB, guard, usage_now=96 * MIB) is not None


def test_first_problem_names_the_group_its_slot_and_the_last_exit():
    looping = [(("bad", 2), LOOPING), (("worse", 1), LOOPING), (("bad", 3), LOOPING)]
    assert first_problem(False, looping, None) == (
        "group bad is crash-looping: bad.2 failed 5 times in a row, last: exited with status 1 after 0.1s "
        "(also crash-looping: worse)")
    assert first_problem(False, looping[:1], "memory: ...") == "memory: ...", "memory first: it kills workers"
    assert first_problem(True, [], None) == "the pool is stopping"
    assert first_problem(False, [], None) is None


# ------------------------------------------------------------------------------- real pools


def health(runner: Runner, socket: str) -> tuple[int, str, str]:
    """`entrypoint --health` against the pool at `socket`: (status, stdout, stderr)."""
    result = runner.run(["--health", "--socket", socket], timeout=15)
    return result.returncode, result.stdout, result.stderr


def timed_answer(socket: str) -> dict:
    started = time.monotonic()
    reply = request(socket, {"command": "health"})
    assert time.monotonic() - started < ANSWER_BOUND, "the pool did not answer --health"
    return reply


def current_problem(socket: str) -> str | None:
    """What the pool's health answer says is wrong ('' when healthy); None before its socket is up."""
    try:
        return timed_answer(socket)["problem"] or ""
    except OSError:
        return None


def test_healthy_pool_exits_0_with_its_workers_counted(runner, tmp_path):
    pool = Pool(runner, tmp_path, "a: 2\nb: 1\n")
    pool.wait_running(3)
    assert timed_answer(pool.socket)["healthy"] is True
    code, out, err = health(runner, pool.socket)
    assert (code, out, err) == (0, "healthy: 3 of 3 worker(s) running\n", "")
    pool.kill(signal.SIGTERM)
    assert pool.finish()[0] == 0


def test_crash_looping_group_exits_1_naming_the_group(runner, tmp_path):
    pool = Pool(runner, tmp_path, "fine: 1\nbad:\n  count: 1\n  command: [false]\n", settings=FAST_BACKOFF)
    wait_for(lambda: "crash-looping" in (current_problem(pool.socket) or ""), 15, "the crash loop")
    code, out, err = health(runner, pool.socket)
    assert code == 1 and out == "", err
    assert re.fullmatch(r"entrypoint: unhealthy: group bad is crash-looping: bad\.1 failed \d+ times in a row, "
                        r"last: exited with status 1 after \d+\.\ds\n", err), err
    pool.kill(signal.SIGTERM)
    assert pool.finish()[0] == 0


def test_a_loop_that_ended_is_healthy_again_though_it_was_reported(runner, tmp_path):
    # Fails its first 6 starts, then stays up: the pool reported the loop and still remembers
    # that, but a worker that has outlived backoff_reset means the group is fine now.
    counter = tmp_path / "starts"
    script = (f'n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; '
              '[ "$n" -ge 6 ] || exit 1; exec sleep 1000')
    pool = Pool(runner, tmp_path, f"flaky:\n  count: 1\n  command: [sh, -c, {json.dumps(script)}]\n",
                settings=FAST_BACKOFF + "  backoff_reset: 1\n")
    wait_for(lambda: "crash-looping" in (current_problem(pool.socket) or ""), 15, "the crash loop")
    wait_for(lambda: current_problem(pool.socket) == "", 15, "the group to count as recovered")
    code, out, _ = health(runner, pool.socket)
    assert (code, out) == (0, "healthy: 1 of 1 worker(s) running\n")
    pool.kill(signal.SIGTERM)
    assert pool.finish()[0] == 0


ALLOCATE_AND_IGNORE_TERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "data = b'x' * (80 << 20); time.sleep(1000)"
)


def test_memory_over_the_guard_exits_1_naming_the_limit(runner, tmp_path):
    # 80 MiB in one worker against a 64M limit: the guard recycles it, and while the worker
    # takes its grace (it ignores TERM) the pool is over the guard for everyone to see.
    # Its grace is long, so the check below cannot fall between a KILL and the next worker.
    command = json.dumps([sys.executable, "-c", ALLOCATE_AND_IGNORE_TERM])
    pool = Pool(runner, tmp_path, f"big:\n  count: 1\n  term_timeout: 60\n  command: {command}\n",
                "--memory-limit", "64M", settings="  memory_interval: 0.2\n")
    wait_for(lambda: (current_problem(pool.socket) or "").startswith("memory:"), 15, "the pool over its guard")
    code, out, err = health(runner, pool.socket)
    assert code == 1 and out == "", err
    assert re.fullmatch(r"entrypoint: unhealthy: memory: the pool uses \d+\.\d MiB of its 64\.0 MiB limit "
                        r"\(\d+%\), over the guard at 92\.5%\n", err), err
    pool.kill(signal.SIGTERM)
    wait_for(lambda: current_problem(pool.socket) == "the pool is stopping", 10, "the stop")
    pool.kill(signal.SIGINT)  # a second stop signal: KILL now, not after the 60 s grace
    code, output = pool.finish()
    assert "recycling the largest worker" in output
    assert code == 1, "the worker ignored TERM and was KILLed"


def test_stopping_pool_is_not_healthy(runner, tmp_path):
    pool = Pool(runner, tmp_path, "q: 1\n", WORKER_ON_TERM="ignore")
    pool.wait_running(1)
    pool.kill(signal.SIGTERM)
    wait_for(lambda: current_problem(pool.socket) == "the pool is stopping", 10, "the stop to begin")
    code, _, err = health(runner, pool.socket)
    assert (code, err) == (1, "entrypoint: unhealthy: the pool is stopping\n")
    assert pool.finish()[0] == 1


def test_no_pool_exits_4(runner, tmp_path):
    code, out, err = health(runner, str(tmp_path / "none.sock"))
    assert code == 4 and out == ""
    assert err.startswith("entrypoint: error: no pool answering at ") and err.count("\n") == 1, err


def proc_reads(pid: int) -> int:
    """Read calls the process has made (syscr): a walk over /proc makes one per file it reads."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["syscr"])


def test_health_does_not_walk_proc_as_status_does(runner, tmp_path):
    pool = Pool(runner, tmp_path, "q: 10\n", "--memory-limit", "100G")
    pool.wait_running(10)
    before = proc_reads(pool.pid)
    for _ in range(10):
        timed_answer(pool.socket)
    by_health = proc_reads(pool.pid) - before
    before = proc_reads(pool.pid)
    pool.status()
    by_one_status = proc_reads(pool.pid) - before
    # A measurement reads every process's stat and every worker's smaps_rollup: 20 reads at the
    # very least with 10 workers. A health answer reads the cgroup's usage file, if anything.
    assert by_one_status >= 20, by_one_status
    assert by_health <= 10 * 3, (by_health, by_one_status)
    pool.kill(signal.SIGTERM)
    assert pool.finish()[0] == 0
