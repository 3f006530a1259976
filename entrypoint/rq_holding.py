"""Holding lists in Redis: each worker's jobs between taking and starting them, and what dead workers left there.

A job is always in exactly one place: its queue, one worker's holding list, or started. A worker
takes a job with one atomic move from the first non-empty queue into its own holding list; its
work-horse takes it out of that list in the same step as it marks the job started; a stop or a
dead horse moves it back to the head of its queue, again in one step. So no instant of a stop,
a kill -9 or a lost connection can drop a job: what a dead worker leaves in its list never
started, and another worker puts it back (Sidekiq Pro's reliable fetch, for RQ).

Nothing here imports RQ: the worker classes in rq_reliable.py bring the job knowledge.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from entrypoint.reaper import stat_fields

PREFIX = "rq:entrypoint:"
HOLDERS = PREFIX + "holders"  # set: the names of every worker that may hold jobs

# KEYS: the holding list, then the queues in priority order. The first job found moves over.
_TAKE = """
for i = 2, #KEYS do
    local job_id = redis.call('LPOP', KEYS[i])
    if job_id then
        redis.call('LPUSH', KEYS[1], job_id)
        return {KEYS[i], job_id}
    end
end
return false
"""
# KEYS: the holding list, the job's hash; ARGV: the job id, RQ's "started" status.
_CLAIM = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
    redis.call('HSET', KEYS[2], 'status', ARGV[2])
    return 1
end
return 0
"""
# KEYS: the holding list, the job's queue; ARGV: the job id.
_GIVE_BACK = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[1])
    return 1
end
return 0
"""
# KEYS: the holding list, the holder's record, the set of holders; ARGV: the holder's name.
_UNREGISTER = """
if redis.call('LLEN', KEYS[1]) == 0 then
    redis.call('DEL', KEYS[2])
    redis.call('SREM', KEYS[3], ARGV[1])
    return 1
end
return 0
"""


@dataclass(frozen=True)
class Place:
    """A kernel boot and a PID namespace: where a pid names one process, found in /proc."""

    boot_id: str
    pid_namespace: str

    @classmethod
    def here(cls, proc: str = "/proc") -> Place | None:
        try:
            with open(f"{proc}/sys/kernel/random/boot_id") as boot:
                boot_id = boot.read().strip()
            namespace = os.readlink(f"{proc}/self/ns/pid")
        except OSError:
            return None
        return cls(boot_id, namespace)


@dataclass(frozen=True)
class Holder:
    """Who owns a holding list, recorded when the worker starts."""

    name: str  # RQ's worker name
    worker_key: str  # RQ's registration of that worker, kept alive by its heartbeats
    place: Place | None = None
    pid: int | None = None
    start_time: int | None = None  # in clock ticks since boot: a pid reused later has another
    pool: str = ""  # POOL_ID and POOL_WORKER, to say in the log whose jobs came back
    slot: str = ""

    def fields(self) -> dict[str, str]:
        fields = {"worker_key": self.worker_key, "pool": self.pool, "slot": self.slot}
        if self.place is not None and self.pid is not None and self.start_time is not None:
            fields.update(boot_id=self.place.boot_id, pid_namespace=self.place.pid_namespace,
                          pid=str(self.pid), start_time=str(self.start_time))
        return fields

    @classmethod
    def from_fields(cls, name: str, fields: Mapping[str, str], worker_key: str) -> Holder:
        """A holder from its record; a missing record leaves only RQ's registration to judge by."""
        try:
            place = Place(fields["boot_id"], fields["pid_namespace"])
            pid, start_time = int(fields["pid"]), int(fields["start_time"])
        except (KeyError, ValueError):
            place, pid, start_time = None, None, None
        return cls(name, fields.get("worker_key") or worker_key, place, pid, start_time,
                   fields.get("pool", ""), fields.get("slot", ""))


def process_start_time(pid: int, proc: str = "/proc") -> int | None:
    """When a live process started (clock ticks since boot), None when it is gone or a zombie."""
    fields = stat_fields(pid, proc)
    if fields is None or len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of stat; fields[0] is field 3


def owner_is_dead(holder: Holder, here: Place | None, start_time_of: Callable[[int], int | None],
                  registered: bool) -> bool:
    """Whether the worker that owns a holding list is gone for good, so its jobs are ours to return.

    In our own PID namespace the answer is exact and immediate: the process with that pid and
    that start time runs or it does not (a worker replaced after a kill -9 or an OOM kill finds
    its predecessor gone at once). Anywhere else (another container, a lost dyno) only RQ's
    registration can tell: a clean exit marks it dead, a killed worker's lapses when its last
    heartbeat expires (worker_ttl + 60 s, 8 minutes by default).
    """
    if holder.place is not None and holder.place == here and holder.pid is not None:
        return start_time_of(holder.pid) != holder.start_time
    return not registered


def fate_of_held_job(status: str | None, queued: str) -> str:
    """'requeue' or 'drop': a job found in a holding list never started (the horse takes it out as
    it marks it started), so it goes back to its queue, unless it is gone or RQ settled it since
    (canceled, deleted): then it only leaves the list."""
    return "requeue" if status == queued else "drop"


def holding_key(name: str) -> str:
    return f"{PREFIX}holding:{name}"


class HoldingList:
    """One worker's holding list, and the atomic moves into and out of it."""

    def __init__(self, connection, name: str) -> None:
        self.connection = connection
        self.name = name
        self.key = holding_key(name)
        self.record_key = f"{PREFIX}holder:{name}"
        self._take = connection.register_script(_TAKE)
        self._claim = connection.register_script(_CLAIM)
        self._give_back = connection.register_script(_GIVE_BACK)
        self._unregister = connection.register_script(_UNREGISTER)

    def take(self, queue_keys: Sequence[str]) -> tuple[str, str] | None:
        """(queue key, job id) of the first job of the first non-empty queue, now in this list."""
        found = self._take(keys=[self.key, *queue_keys]) if queue_keys else None
        return (_text(found[0]), _text(found[1])) if found else None

    def wait(self, queue_key: str, seconds: float) -> str | None:
        """Block up to `seconds` for a job on one queue; it arrives straight in this list."""
        job_id = self.connection.blmove(queue_key, self.key, seconds, "LEFT", "LEFT")
        return _text(job_id) if job_id is not None else None

    def claim(self, job_id: str, job_key: str, started: str) -> bool:
        """The horse starts the job: out of the list and marked started in one step. False when
        the job is no longer here (given back meanwhile): then it must not run."""
        return bool(self._claim(keys=[self.key, job_key], args=[job_id, started]))

    def give_back(self, job_id: str, queue_key: str) -> bool:
        """Out of the list and onto the head of its queue in one step; False when it was not here."""
        return bool(self._give_back(keys=[self.key, queue_key], args=[job_id]))

    def drop(self, job_id: str) -> bool:
        return bool(self.connection.lrem(self.key, 1, job_id))

    def job_ids(self) -> list[str]:
        return [_text(job_id) for job_id in self.connection.lrange(self.key, 0, -1)]

    def holds(self, job_id: str) -> bool:
        return job_id in self.job_ids()  # a list of one job, two at the most

    def register(self, holder: Holder) -> None:
        """Make this list findable by whoever recovers after us (again after a Redis restart)."""
        with self.connection.pipeline() as pipe:
            pipe.sadd(HOLDERS, self.name)
            pipe.delete(self.record_key)
            pipe.hset(self.record_key, mapping=holder.fields())
            pipe.execute()

    def unregister(self) -> bool:
        """Forget this holder, only once its list is empty; False when jobs are still in it."""
        return bool(self._unregister(keys=[self.key, self.record_key, HOLDERS], args=[self.name]))


def holders(connection, worker_key_of: Callable[[str], str]) -> list[Holder]:
    """Every registered holder with its record (RQ's worker key guessed when the record is lost)."""
    names = sorted(_text(name) for name in connection.smembers(HOLDERS))
    with connection.pipeline() as pipe:
        for name in names:
            pipe.hgetall(f"{PREFIX}holder:{name}")
        records = pipe.execute()
    return [
        Holder.from_fields(name, {_text(k): _text(v) for k, v in record.items()}, worker_key_of(name))
        for name, record in zip(names, records, strict=True)
    ]


def registered(connection, worker_keys: Sequence[str]) -> list[bool]:
    """For each RQ worker key: whether RQ still counts that worker alive (there, and no death date)."""
    with connection.pipeline() as pipe:
        for key in worker_keys:
            pipe.exists(key)
            pipe.hexists(key, "death")
        answers = pipe.execute()
    return [bool(exists) and not dead for exists, dead in zip(answers[::2], answers[1::2], strict=True)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def held_job_ids(connection) -> set[str]:
    """Every job id in any registered holding list: taken by a worker and not started (yet)."""
    names = [_text(name) for name in connection.smembers(HOLDERS)]
    with connection.pipeline() as pipe:
        for name in names:
            pipe.lrange(holding_key(name), 0, -1)
        return {_text(job_id) for ids in pipe.execute() for job_id in ids}
