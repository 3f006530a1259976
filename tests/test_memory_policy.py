"""The pool's memory decisions with plain values: which worker to recycle, how many `auto` workers fit."""

from __future__ import annotations

from entrypoint.memory_policy import WARM_SAMPLES, Recycle, auto_sizes, guard_victim, over_ceiling
from entrypoint.pool import Worker
from entrypoint.poolconfig import Group

MIB = 2**20
AUTO = Group(name="q", queues=("q",), count=None, min_count=1, max_count=50, argv=("w",))
FORKED = Group(name="q", queues=("q",), count=None, min_count=1, max_count=50, argv=("w",), forked=True)


def worker(pid: int, spec: Group = AUTO, pss: int = 0, private: int = 0, stop_sent: float | None = None) -> Worker:
    """A worker measured WARM_SAMPLES times, at these figures."""
    measured = Worker(spec.name, pid, pid, spec, 0.0, stop_sent=stop_sent)
    measured.pss = measured.peak_pss = pss
    measured.private = measured.peak_private = private
    measured.samples = WARM_SAMPLES
    return measured


def test_exec_d_workers_are_planned_by_their_peak_pss() -> None:
    workers = [worker(n, pss=30 * MIB if n == 1 else 40 * MIB) for n in range(1, 9)]
    (resize,) = auto_sizes({"q": (AUTO, 8)}, workers, 20 * MIB, 512 * MIB, 0.85)  # the manager: 20 MiB
    # (0.85 * 512 - 20) MiB left for workers of 40 MiB at peak: 10
    assert (resize.group, resize.count) == ("q", 10)
    assert resize.reason == ("auto: q 8->10 workers (40.0 MiB per worker at peak, 20.0 MiB for the rest, "
                             "limit 512.0 MiB x 0.85: 10 fit)")


def test_forked_workers_are_planned_by_what_they_hold_alone() -> None:
    """A forked worker's PSS includes its share of the template's pages, which shrinks as more
    workers share them: planning by it would stop far short of what fits. Those pages are paid
    once, in the base (the template's every page); a worker costs what it holds alone."""
    workers = [worker(1, FORKED, pss=25 * MIB, private=9 * MIB), worker(2, FORKED, pss=25 * MIB, private=10 * MIB)]
    base = 12 * MIB + 40 * MIB  # the manager, the template's resident pages
    (resize,) = auto_sizes({"q": (FORKED, 2)}, workers, base, 512 * MIB, 0.85)
    assert resize.reason.endswith("(10.0 MiB per worker at peak, not shared with the template, 52.0 MiB for the "
                                  "rest, limit 512.0 MiB x 0.85: 38 fit)")
    assert resize.count == 4, "it doubles at most, on its way to 38"


def test_auto_waits_until_every_worker_has_been_measured_a_few_times() -> None:
    cold = worker(2, pss=30 * MIB)
    cold.samples = WARM_SAMPLES - 1
    assert auto_sizes({"q": (AUTO, 2)}, [worker(1, pss=30 * MIB), cold], 80 * MIB, 512 * MIB, 0.85) == []
    assert auto_sizes({"q": (AUTO, 3)}, [worker(1, pss=30 * MIB)], 80 * MIB, 512 * MIB, 0.85) == [], (
        "nor while the group is still growing to its count")


def test_a_ceiling_recycles_each_worker_above_it_once() -> None:
    spec = Group(name="q", queues=("q",), count=2, min_count=2, max_count=2, argv=("w",), max_memory=100 * MIB)
    big, small = worker(1, spec, pss=120 * MIB), worker(2, spec, pss=80 * MIB)
    stopping = worker(3, spec, pss=150 * MIB, stop_sent=1.0)
    assert [r.worker for r in over_ceiling([big, small, stopping])] == [big]


def test_the_guard_picks_the_largest_worker_one_at_a_time() -> None:
    workers = [worker(1, pss=100 * MIB), worker(2, pss=300 * MIB)]
    # The guard acts halfway between the headroom (85%) and the limit: at 92.5% of 512 MiB, 473.6 MiB.
    assert guard_victim(workers, 474 * MIB, 512 * MIB, 0.85) == Recycle(
        workers[1], "the pool uses 474.0 MiB of 512.0 MiB: recycling the largest worker")
    assert guard_victim(workers, 473 * MIB, 512 * MIB, 0.85) is None
    workers[0].stop_sent = 1.0
    assert guard_victim(workers, 500 * MIB, 512 * MIB, 0.85) is None, "one recycled worker at a time"
    assert guard_victim(workers, 500 * MIB, None, 0.85) is None


FIXED = Group(name="f", queues=("f",), count=2, min_count=2, max_count=2, argv=("w",))


def test_another_groups_jobs_coming_and_going_do_not_make_a_group_flap() -> None:
    """Other workers count at their peak, whether their jobs run now or not. (Counted as they were
    at each sample, the pool flapped 11 <-> 12 under load as their jobs came and went.)"""
    mine = [worker(pid, pss=40 * MIB) for pid in range(1, 9)]
    other = worker(20, FIXED, pss=40 * MIB)
    other.peak_pss = 80 * MIB  # its work-horse has come and gone
    desired = {"q": (AUTO, 8), "f": (FIXED, 1)}
    # At the other's peak: (435.2 - 20 - 80) / 40 = 8.4 fit, whether it is at 40 MiB now or at 80.
    assert auto_sizes(desired, [*mine, other], 20 * MIB, 512 * MIB, 0.85) == []
    other.pss = 80 * MIB
    assert auto_sizes(desired, [*mine, other], 20 * MIB, 512 * MIB, 0.85) == []


def test_a_group_shrinks_at_once_but_grows_only_when_settled() -> None:
    first = worker(1, pss=100 * MIB)
    # Three workers of 100 MiB cannot all fit with 20 MiB for the manager: shrink, though slot 3 is empty.
    (resize,) = auto_sizes({"q": (AUTO, 6)}, [first, worker(2, pss=100 * MIB)], 20 * MIB, 512 * MIB, 0.85)
    assert resize.count == 4
    growing = worker(2, pss=10 * MIB)
    growing.growing = True
    assert auto_sizes({"q": (AUTO, 2)}, [worker(1, pss=10 * MIB), growing], 20 * MIB, 512 * MIB, 0.85) == [], (
        "a worker still growing holds a group back from growing")
    growing.growing = False
    (resize,) = auto_sizes({"q": (AUTO, 2)}, [worker(1, pss=10 * MIB), growing], 20 * MIB, 512 * MIB, 0.85)
    assert (resize.count, resize.reason[-7:]) == (4, "41 fit)"), "it doubles at most"


def test_a_forked_workers_cost_adds_its_horses_peak_to_its_own() -> None:
    """While RQ's work-horse runs, the pages it shares with its worker are private to neither: a
    sample then shows both small. What one more such worker costs is its own peak, idle, plus the
    most its horse held alone."""
    from entrypoint.memory_policy import cost

    busy = worker(1, FORKED, pss=25 * MIB, private=9 * MIB)
    busy.peak_children = 5 * MIB
    assert cost(busy) == 14 * MIB
    execd = worker(2, pss=30 * MIB, private=28 * MIB)
    execd.peak_children = 5 * MIB
    assert cost(execd) == 30 * MIB, "an exec'd worker's PSS, its children's included, says it already"
