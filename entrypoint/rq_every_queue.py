"""Resque's '*' for RQ: a worker that listens to every queue in Redis, including ones created later."""

from __future__ import annotations

from rq import Queue, Worker
from rq.worker import HerokuWorker

# How long an idle worker blocks before it looks for queues created since.
REFRESH_SECONDS = 5


class EveryQueueMixin:
    """Queues named on the command line come first, in their order; every other queue follows."""

    def listen_to_every_queue(self) -> None:
        named = [q.name for q in self.queues if q.name in self._named_first]
        known = sorted(q.name for q in Queue.all(connection=self.connection))
        names = named + [n for n in known if n not in named] or ["default"]
        if names != [q.name for q in self.queues]:
            self.queues = [Queue(n, connection=self.connection, serializer=self.serializer) for n in names]
            self._ordered_queues = self.queues[:]

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        if not hasattr(self, "_named_first"):
            self._named_first = {q.name for q in self.queues}
        if timeout is None or max_idle_time is not None:  # burst mode, or the caller's own idle limit
            self.listen_to_every_queue()
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        while True:
            self.listen_to_every_queue()
            result = super().dequeue_job_and_maintain_ttl(timeout, REFRESH_SECONDS)
            if result is not None or self._stop_requested:
                return result


class EveryQueueWorker(EveryQueueMixin, Worker):
    pass


class EveryQueueHerokuWorker(EveryQueueMixin, HerokuWorker):
    pass
