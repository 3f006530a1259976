"""Resque's '*' for RQ: a worker that listens to every queue in Redis, including ones created later."""

from __future__ import annotations

from rq import Queue

from entrypoint.rq_reliable import POLL_SECONDS, ReliableHerokuWorker, ReliableWorker


class EveryQueueMixin:
    """Queues named on the command line come first, in their order; every other queue follows,
    looked up again before each look at the queues (so a new queue is served within a second)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._named_first = [q.name for q in self.queues]

    def looks_again_after(self) -> float:
        return POLL_SECONDS  # a queue created meanwhile may come first

    def refresh_queues(self) -> None:
        known = sorted(q.name for q in Queue.all(connection=self.connection))
        names = self._named_first + [n for n in known if n not in self._named_first] or ["default"]
        if names != [q.name for q in self.queues]:
            self.queues = [self.queue_class(n, connection=self.connection, serializer=self.serializer)
                           for n in names]
            self._ordered_queues = self.queues[:]


class EveryQueueWorker(EveryQueueMixin, ReliableWorker):
    pass


class EveryQueueHerokuWorker(EveryQueueMixin, ReliableHerokuWorker):
    pass
