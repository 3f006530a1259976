"""The pool's decisions as plain functions: what to start, stop, back off and report."""

from __future__ import annotations

from entrypoint.pool import (
    CRASH_LOOP_AFTER,
    Backoff,
    SlotHistory,
    Start,
    Stop,
    Worker,
    after_exit,
    after_spawn_failure,
    crash_looping,
    next_wakeup,
    overdue,
    plan,
    reload_diff,
    same_definition,
    scaled,
)
from entrypoint.poolconfig import Group

A = Group(name="a", queues=("a",), count=2, min_count=2, max_count=2, argv=("w", "a"))
B = Group(name="b", queues=("b",), count=1, min_count=1, max_count=1, argv=("w", "b"))


def worker(spec: Group, slot: int, pid: int, **fields) -> Worker:
    return Worker(spec.name, slot, pid, spec, started=0.0, **fields)


def test_an_empty_pool_starts_every_slot():
    actions = plan({"a": (A, 2), "b": (B, 1)}, [], {}, now=0.0)
    assert actions == [Start(A, 1), Start(A, 2), Start(B, 1)]


def test_a_full_pool_does_nothing():
    workers = [worker(A, 1, 10), worker(A, 2, 11)]
    assert plan({"a": (A, 2)}, workers, {}, now=5.0) == []


def test_a_slot_in_backoff_waits_until_its_time():
    history = {("a", 2): SlotHistory(failures=1, not_before=10.0)}
    assert plan({"a": (A, 2)}, [worker(A, 1, 10)], history, now=9.9) == []
    assert plan({"a": (A, 2)}, [worker(A, 1, 10)], history, now=10.0) == [Start(A, 2)]


def test_scaling_down_stops_the_highest_slots():
    workers = [worker(A, 1, 10), worker(A, 2, 11)]
    assert plan({"a": (A, 1)}, workers, {}, now=0.0) == [Stop(workers[1], "scaled down")]


def test_a_removed_group_is_stopped():
    workers = [worker(B, 1, 20)]
    assert plan({"a": (A, 0)}, workers, {}, now=0.0) == [Stop(workers[0], "group removed")]


def test_a_changed_definition_replaces_each_worker_only_after_it_exits():
    changed = A._replace(argv=("w2", "a"))
    workers = [worker(A, 1, 10), worker(A, 2, 11, stop_sent=1.0)]
    actions = plan({"a": (changed, 2)}, workers, {}, now=2.0)
    assert actions == [Stop(workers[0], "definition changed")], "slot 2 is still stopping: no start"


def test_only_the_count_changing_is_not_a_new_definition():
    assert same_definition(A, A._replace(count=7, min_count=7, max_count=7))
    assert not same_definition(A, A._replace(env=(("X", "1"),)))


def test_backoff_doubles_from_the_minimum_up_to_the_maximum_with_jitter():
    backoff = Backoff(minimum=1.0, maximum=60.0, reset_after=30.0)
    middle = [backoff.delay(n, 0.5) for n in range(0, 10)]
    assert middle == [0.0, 0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert backoff.delay(4, 0.0) == 3.0 and backoff.delay(4, 0.999) < 5.0
    assert backoff.delay(500, 0.99) == 60.0


def test_a_quick_exit_backs_off_and_a_long_life_resets():
    backoff = Backoff(1.0, 60.0, 30.0)
    quick = after_exit(SlotHistory(failures=2), lived=0.1, expected=False, now=100.0, backoff=backoff,
                       jitter=0.5, description="exited with status 1")
    assert (quick.failures, quick.not_before, quick.restarts) == (3, 102.0, 1)
    long = after_exit(quick, lived=31.0, expected=False, now=200.0, backoff=backoff, jitter=0.5,
                      description="killed by SIGKILL")
    assert (long.failures, long.not_before, long.restarts) == (0, 200.0, 2)


def test_an_exit_we_asked_for_costs_nothing():
    before = SlotHistory(restarts=3, failures=2, not_before=50.0)
    after = after_exit(before, lived=0.1, expected=True, now=100.0, backoff=Backoff(), jitter=0.5,
                       description="exited with status 0")
    assert (after.failures, after.not_before, after.restarts) == (2, 50.0, 3)


def test_an_unrunnable_command_waits_the_longest_and_counts_as_a_crash_loop():
    after = after_spawn_failure(SlotHistory(), now=10.0, backoff=Backoff(1, 60, 30),
                                description="x: command not found", hopeless=True)
    assert after.not_before == 70.0 and crash_looping(after)
    fork = after_spawn_failure(SlotHistory(), now=10.0, backoff=Backoff(1, 60, 30),
                               description="fork failed", hopeless=False)
    assert fork.not_before == 10.0 and not crash_looping(fork), "a first failure retries at once"


def test_crash_loop_after_a_handful_of_quick_exits():
    assert not crash_looping(SlotHistory(failures=CRASH_LOOP_AFTER - 1))
    assert crash_looping(SlotHistory(failures=CRASH_LOOP_AFTER))


def test_ttin_ttou_never_go_below_zero():
    assert scaled({"a": (A, 2), "b": (B, 0)}, -1) == {"a": (A, 1), "b": (B, 0)}
    assert scaled({"a": (A, 2)}, +1) == {"a": (A, 3)}


def test_overdue_and_next_wakeup():
    late = worker(A, 1, 10, stop_sent=0.0, kill_at=5.0)
    fine = worker(A, 2, 11)
    assert overdue([late, fine], now=5.0) == [late]
    history = {("b", 1): SlotHistory(not_before=3.0)}
    assert next_wakeup({"a": (A, 2), "b": (B, 1)}, [late, fine], history, now=1.0) == 3.0
    assert next_wakeup({"a": (A, 2)}, [fine, worker(A, 1, 12)], {}, now=1.0) is None


def test_reload_diff_names_each_change():
    changed = B._replace(argv=("other",))
    diff = reload_diff({"a": (A, 2), "b": (B, 1)}, {"a": (A, 3), "b": (changed, 1), "c": (B, 4)})
    assert diff == ["a 2->3", "~b (definition changed, replacing 1->1)", "+c (4)"]
    assert reload_diff({"a": (A, 2)}, {}) == ["-a"]


def test_auto_groups_start_small_under_a_limit_and_cpu_sized_without_one():
    from entrypoint.pool import desired_counts
    from entrypoint.poolconfig import PoolConfig

    auto = A._replace(count=None, min_count=2, max_count=6)
    config = PoolConfig(source="pool.yml", app_env=None, groups=(auto, B))
    assert desired_counts(config, limit=512 * 2**20, cpus=2) == {"a": (auto, 2), "b": (B, 1)}
    assert desired_counts(config, limit=None, cpus=2) == {"a": (auto, 5), "b": (B, 1)}
    assert desired_counts(config, limit=None, cpus=16)["a"] == (auto, 6), "the max bounds it"


def test_each_worker_knows_its_queues_group_slot_and_pool():
    from entrypoint.pool import worker_env

    spec = A._replace(name="q1,q2", queues=("q1", "q2"), env=(("FLAVOUR", "x"),))
    env = worker_env({"PATH": "/bin", "FLAVOUR": "base"}, spec, 3, "host:1", 12.5)
    assert env == {"PATH": "/bin", "FLAVOUR": "x", "QUEUES": "q1,q2", "POOL_GROUP": "q1,q2",
                   "POOL_SLOT": "3", "POOL_WORKER": "q1,q2.3", "POOL_ID": "host:1",
                   "POOL_TERM_TIMEOUT": "12.5", "POOL_REQUEUE_ON_SHUTDOWN": "1"}
    never_twice = spec._replace(requeue_on_shutdown=False)
    assert worker_env({}, never_twice, 3, "host:1", 12.5)["POOL_REQUEUE_ON_SHUTDOWN"] == "0"


def test_a_workers_grace_is_its_groups_then_the_flag_then_the_files_then_the_default():
    from entrypoint.shutdown import StopPolicy

    default, flagged = StopPolicy(term_timeout=8.0), StopPolicy(term_timeout=1.0, timeout_given=True)
    assert default.grace(5.0, 3.0) == flagged.grace(5.0, 3.0) == 5.0, "a group's own value wins"
    assert flagged.grace(None, 3.0) == 1.0, "--term-timeout / TERM_TIMEOUT beat pool.term_timeout"
    assert default.grace(None, 3.0) == 3.0
    assert default.grace(None, None) == 8.0
