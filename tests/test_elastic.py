"""Elastic slots with plain values: who grows, who gives back, and why."""

from __future__ import annotations

import itertools
import os
import re
import signal
import time

import pytest
from conftest import PROGRAMS, ROOT, wait_for
from redis_fixture import redis_server  # noqa: F401 - a fixture

from entrypoint.elastic import Backlog, Elastic, Move, Slot, next_growth, plan, releasable, wants

NOW = 1000.0


def group(name: str, count: int, *, minimum: int = 1, maximum: int = 8, idle: dict[int, float] | None = None,
          waiting: int = 0, oldest: float | None = None, since: float = NOW - 60) -> Elastic:
    """A group whose slots 1..count run; `idle` maps a slot to how long its worker has been idle."""
    idle = idle or {}
    slots = [Slot(n, NOW - idle[n] if n in idle else None) for n in range(1, count + 1)]
    backlog = Backlog(waiting, oldest, since) if waiting or oldest is not None else Backlog(0, None, NOW)
    return Elastic(name, minimum, maximum, count, slots, backlog)


def test_a_lasting_backlog_takes_the_spare_workers_up_to_its_maximum() -> None:
    crunch = group("crunch_data", 3, waiting=412, oldest=40)
    email = group("send_welcome_email", 1)
    assert plan([crunch, email], total=8, now=NOW) == [
        Move("crunch_data", 7, "crunch_data 3->7: 412 waiting, oldest 40 s")]
    assert plan([group("crunch_data", 3, maximum=5, waiting=412, oldest=40), email], total=8, now=NOW) == [
        Move("crunch_data", 5, "crunch_data 3->5: 412 waiting, oldest 40 s")]


def test_a_group_grows_by_one_worker_per_waiting_job_and_not_before_the_backlog_lasted() -> None:
    assert wants(group("q", 2, waiting=2, oldest=5), NOW, grow_after=3) == 2
    assert wants(group("q", 2, waiting=2, oldest=1, since=NOW - 1), NOW, grow_after=3) == 0
    assert plan([group("q", 2, waiting=2, oldest=1, since=NOW - 1)], total=8, now=NOW, grow_after=3) == []


def test_idle_top_slots_are_given_back_down_to_the_minimum_never_a_busy_one() -> None:
    idle_top = group("q", 4, minimum=1, idle={4: 60, 3: 45, 2: 10})
    assert releasable(idle_top, NOW, 30) == 2, "slot 2 has been idle only 10 s"
    assert plan([idle_top], total=8, now=NOW, shrink_after=30) == [Move("q", 2, "q 4->2: idle for 45 s")]
    busy_top = group("q", 4, idle={3: 60, 2: 60, 1: 60})
    assert releasable(busy_top, NOW, 30) == 0, "slot 4 is busy: nothing moves from the top"
    floor = group("q", 2, minimum=2, idle={1: 60, 2: 60})
    assert releasable(floor, NOW, 30) == 0


def test_a_group_with_a_backlog_gives_nothing_back_even_when_a_worker_is_idle() -> None:
    assert releasable(group("q", 3, idle={3: 60}, waiting=5, oldest=2), NOW, 30) == 0


def test_slots_move_from_an_idle_group_to_a_busy_one_within_the_total() -> None:
    idle = group("send_welcome_email", 4, idle={1: 90, 2: 90, 3: 90, 4: 90})
    busy = group("crunch_data", 4, waiting=100, oldest=12)
    moves = plan([idle, busy], total=8, now=NOW)
    assert moves == [Move("send_welcome_email", 1, "send_welcome_email 4->1: idle for 90 s"),
                     Move("crunch_data", 7, "crunch_data 4->7: 100 waiting, oldest 12 s")]


def test_groups_with_a_backlog_share_the_spare_workers_in_turn_the_oldest_first() -> None:
    fresh = group("a", 1, waiting=50, oldest=5)
    stale = group("b", 1, waiting=3, oldest=300)
    assert plan([fresh, stale], total=3, now=NOW) == [Move("b", 2, "b 1->2: 3 waiting, oldest 300 s")]
    assert plan([fresh, stale], total=4, now=NOW) == [Move("a", 2, "a 1->2: 50 waiting, oldest 5 s"),
                                                     Move("b", 2, "b 1->2: 3 waiting, oldest 300 s")]
    assert plan([fresh, stale], total=8, now=NOW) == [Move("a", 4, "a 1->4: 50 waiting, oldest 5 s"),
                                                     Move("b", 4, "b 1->4: 3 waiting, oldest 300 s")]
    steady = [group("a", 1, waiting=250, oldest=4), group("b", 1, waiting=250, oldest=4)]
    assert [move.count for move in plan(steady, total=8, now=NOW)] == [4, 4], "two equal loads, an even split"


def test_spare_workers_are_kept_for_a_backlog_that_has_not_lasted_yet() -> None:
    """Jobs arrive on two queues at once; one backlog lasts a moment before the other: the first
    does not take every spare worker, the second gets its share as soon as its backlog lasts."""
    first = group("a", 1, waiting=20, oldest=4)
    second = group("b", 1, waiting=20, oldest=2.9, since=NOW - 2.9)
    assert plan([first, second], total=8, now=NOW, grow_after=3) == [Move("a", 4, "a 1->4: 20 waiting, oldest 4 s")]
    assert plan([group("a", 4, waiting=20, oldest=4), group("b", 1, waiting=20, oldest=3.1, since=NOW - 3.1)],
                total=8, now=NOW, grow_after=3) == [Move("b", 4, "b 1->4: 20 waiting, oldest 3 s")]


def test_a_group_above_an_even_share_lends_the_slots_idle_right_now_to_a_lasting_backlog() -> None:
    """A steady stream keeps every worker of a big group busy now and then, never idle for long:
    its idle top slots still go, down to an even share, to a queue whose backlog lasts."""
    streaming = group("a", 7, idle={7: 0.5, 6: 0.2, 5: 1, 4: 0.1, 3: 0.3})
    starved = group("b", 1, waiting=200, oldest=10)
    assert plan([streaming, starved], total=8, now=NOW, grow_after=3) == [
        Move("a", 4, "a 7->4: idle for 0 s, wanted by b"), Move("b", 4, "b 1->4: 200 waiting, oldest 10 s")]
    busy_top = group("a", 7, idle={6: 0.5, 5: 1, 4: 0.1, 3: 0.3})
    assert plan([busy_top, starved], total=8, now=NOW, grow_after=3) == [], "slot 7 is busy: nothing moves"
    assert plan([streaming._replace(backlog=Backlog(3, 0.1, NOW)), starved], total=8, now=NOW, grow_after=3) == [], \
        "jobs wait in a's queues too: a keeps its workers"


def test_an_idle_group_lends_its_idle_top_slots_early_to_a_backlog_that_has_no_spare_worker() -> None:
    drained = group("a", 4, idle={4: 5, 3: 5, 2: 1})
    loaded = group("b", 4, waiting=200, oldest=10)
    assert plan([drained, loaded], total=8, now=NOW, grow_after=3, shrink_after=30) == [
        Move("a", 2, "a 4->2: idle for 5 s, wanted by b"), Move("b", 6, "b 4->6: 200 waiting, oldest 10 s")]
    assert plan([drained, group("b", 4, waiting=1, oldest=10)], total=8, now=NOW, grow_after=3) == [
        Move("a", 3, "a 4->3: idle for 5 s, wanted by b"), Move("b", 5, "b 4->5: 1 waiting, oldest 10 s")], \
        "no more than the backlog wants"
    assert plan([drained, group("b", 4, maximum=6, waiting=200, oldest=10)], total=9, now=NOW, grow_after=3) == [
        Move("a", 3, "a 4->3: idle for 5 s, wanted by b"), Move("b", 6, "b 4->6: 200 waiting, oldest 10 s")], \
        "a spare worker goes first"
    unknown = drained._replace(backlog=None)
    assert plan([unknown, loaded], total=8, now=NOW, grow_after=3) == [], "nothing known of a's queues"
    assert plan([drained, group("b", 4, waiting=200, oldest=1, since=NOW - 1)], total=8, now=NOW,
                grow_after=3) == [], "b's backlog has not lasted yet"


def test_the_pool_looks_again_the_moment_a_backlog_will_have_lasted() -> None:
    young = group("a", 1, waiting=9, oldest=1, since=NOW - 1)
    younger = group("b", 1, waiting=9, oldest=0.5, since=NOW - 0.5)
    assert next_growth([young, younger], NOW, grow_after=3) == NOW + 2
    assert next_growth([group("a", 1, waiting=9, oldest=5, since=NOW - 5)], NOW, grow_after=3) is None, \
        "lasted already: this round decides"
    assert next_growth([group("a", 8, maximum=8, waiting=9, oldest=1, since=NOW - 1)], NOW, grow_after=3) is None, \
        "at its maximum: nothing to wait for"
    assert next_growth([group("a", 2, idle={2: 5})], NOW, grow_after=3) is None


def test_an_unknown_backlog_moves_nothing() -> None:
    unknown = Elastic("q", 1, 8, 2, [Slot(1, None), Slot(2, None)], None)
    assert plan([unknown], total=8, now=NOW) == []


# ------------------------------------------------------------------ the config


def load(tmp_path, text: str, env: dict | None = None):
    from entrypoint.config import load_config

    (tmp_path / "pool.yml").write_text(text)
    return load_config(None, env or {}, tmp_path)


def test_elastic_groups_and_the_shared_total_are_read_from_the_file(tmp_path) -> None:
    config = load(tmp_path, "pool:\n  elastic: 8\n  grow_after: 2\n  shrink_after: 60\n"
                            "crunch_data: {count: elastic, min: 1, max: 8}\n"
                            "send_welcome_email: {count: elastic, min: 1, max: 4}\nfixed: 2\n")
    assert (config.elastic, config.grow_after, config.shrink_after) == (8, 2.0, 60.0)
    crunch, email, fixed = config.groups
    assert (crunch.elastic, crunch.auto, crunch.count, crunch.min_count, crunch.max_count) == (True, False, None, 1, 8)
    assert (email.min_count, email.max_count) == (1, 4)
    assert not fixed.elastic and fixed.count == 2
    (unbounded,) = load(tmp_path, "pool:\n  elastic: 6\nq: {count: elastic}\n").groups
    assert (unbounded.min_count, unbounded.max_count) == (1, 6), "by default: at least one, at most the total"
    assert load(tmp_path, "pool:\n  elastic: auto\nq: {count: elastic}\n").elastic == 0


def test_elastic_mistakes_are_reported_with_their_lines(tmp_path) -> None:
    from entrypoint.poolconfig import ConfigError

    cases = {
        "q: {count: elastic}\n": ["pool.yml:1: q.count: elastic needs pool.elastic: how many workers the elastic "
                                  "groups share"],
        "pool:\n  elastic: 4\nq: 2\n": ["pool.yml:2: pool.elastic: no group has count: elastic"],
        "pool:\n  elastic: 3\na: {count: elastic, min: 2}\nb: {count: elastic, min: 2}\n": [
            "pool.yml:2: pool.elastic: the elastic groups' minimums add up to 4, more than the 3 they share"],
        "pool:\n  elastic: lots\nq: {count: elastic}\n": [
            "pool.yml:2: pool.elastic: expected a whole number from 1 to 1000 or auto, got 'lots'"],
        "q: {count: 2, max: 4}\n": ["pool.yml:1: q.max: applies only when count is auto or elastic"],
    }
    for text, problems in cases.items():
        with pytest.raises(ConfigError) as raised:
            load(tmp_path, text)
        assert [str(p) for p in raised.value.problems] == problems, text


# ------------------------------------------------------------------ real RQ workers, real Redis


@pytest.mark.timeout(120)
def test_a_burst_on_one_queue_grows_its_group_and_idle_slots_go_back(runner, tmp_path, redis_server) -> None:  # noqa: F811
    """Two elastic groups share 6 workers. A burst on `burst` grows it to its max within seconds;
    once it is drained, it gives them back. Every job runs once, and no worker is ever stopped
    while it has a job in hand: each one stopped to move its slot had finished its last job at
    least shrink_after before it was gone."""
    import redis
    from rq import Queue

    from entrypoint.control import request

    shrink_after = 3.0
    config = tmp_path / "pool.yml"
    config.write_text(f"pool:\n  elastic: 6\n  grow_after: 1\n  shrink_after: {shrink_after}\n  term_timeout: 5\n"
                      "burst: {count: elastic, min: 1, max: 5}\nquiet: {count: elastic, min: 1, max: 5}\n")
    connection = redis.Redis.from_url(redis_server)
    queue = Queue("burst", connection=connection)
    jobs = [queue.enqueue("rq_jobs.timed", 0.25) for _ in range(80)]
    socket = str(tmp_path / "pool.sock")
    process = runner.start(["-v", "--config", str(config), "--socket", socket],
                           env=runner.env(REDIS_URL=redis_server, PYTHONPATH=f"{ROOT}:{PROGRAMS}"), cwd=tmp_path)
    last_seen: dict[int, float] = {}

    def watch() -> dict:
        """The pool's status (an empty one before it answers), noting when each worker was last seen."""
        try:
            status = request(socket, {"command": "status"})
        except OSError:
            return {"groups": {}, "workers": []}
        now = time.time()
        for row in status["workers"]:
            if row["pid"]:
                last_seen[row["pid"]] = now
        return status

    def wanted(group: str) -> int | None:
        return watch()["groups"].get(group, {}).get("wanted")

    wait_for(lambda: wanted("burst") == 5, 30, "burst to grow to 5")
    assert wanted("quiet") == 1
    wait_for(lambda: connection.llen("timed") == len(jobs), 60, "every job to run")
    wait_for(lambda: wanted("burst") == 1, 30, "burst to give its slots back")
    wait_for(lambda: len([r for r in watch()["workers"] if r["pid"]]) == 2, 30, "the moved workers to stop")
    os.kill(process.pid, signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    assert process.returncode == 0, out
    runs = [line.decode().split() for line in connection.lrange("timed", 0, -1)]
    assert sorted(job_id for job_id, *_ in runs) == sorted(job.id for job in jobs), "every job ran once"
    assert re.search(r"elastic: burst 1->5: \d+ waiting, oldest \d+ s", out), out
    # back to 1 in one move or a few, as its workers' last jobs end
    shrinks = [(int(a), int(b)) for a, b in re.findall(r"elastic: burst (\d+)->(\d+): idle for \d+ s", out)]
    assert shrinks and shrinks[0][0] == 5 and shrinks[-1][1] == 1, out
    assert all(later[0] == earlier[1] for earlier, later in itertools.pairwise(shrinks)), shrinks
    moved = {int(pid) for pid in re.findall(r"stopping burst\.\d+ pid (\d+) \(scaled down\)", out)}
    assert len(moved) == 4, out
    for pid in moved:
        last_end = max(float(end) for _job, worker, _start, end in runs if int(worker) == pid)
        assert last_end <= last_seen[pid] - shrink_after + 0.5, (
            f"worker {pid} was stopped {last_seen[pid] - last_end:.1f}s after its last job ended")
