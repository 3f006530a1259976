"""The monitor process: reads each RQ group's backlog from Redis, publishes the pool to the fleet, serves metrics.

It runs as `python -m entrypoint.monitor`, a child of the pool's manager, never inside PID 1: redis-py
(and prometheus_client, when metrics are on) live here. Every `interval` seconds it sends the manager
one message, the backlog it read or why it could not; a Redis that is down or slow costs this loop a
short socket timeout, never the manager's. It ignores TERM and INT (the platform's TERM is for the
workers) and exits when the manager closes the channel, taking the pool's fleet entry with it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from entrypoint import channel as link

QUEUE_PREFIX = "rq:queue:"
QUEUES_KEY = "rq:queues"  # RQ's set of every queue's key
JOB_PREFIX = "rq:job:"
FLEET_PREFIX = "entrypoint:fleet:"
# A Redis that does not answer within this long counts as down for this round: no retries, the next
# round tries again.
SOCKET_TIMEOUT = 1.0


def connect(url: str, env: Mapping[str, str], timeout: float = SOCKET_TIMEOUT) -> redis.Redis:
    """A client that fails fast. Heroku Redis's rediss:// URLs carry a certificate no CA signed:
    on a dyno, and unless the URL's query says otherwise (`?ssl_cert_reqs=required`), it is not
    checked, as Heroku advises. Any other TLS setting goes in the URL's query, which redis-py reads."""
    options: dict = {}
    if url.startswith("rediss://") and env.get("DYNO") and "ssl_cert_reqs" not in parse_qs(urlsplit(url).query):
        options["ssl_cert_reqs"] = None
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                retry=Retry(NoBackoff(), 0), **options)


def server_of(url: str) -> str:
    """host:port/db of a Redis URL, for messages: never its password."""
    parts = urlsplit(url)
    try:
        port = parts.port or 6379
    except ValueError:
        port = 6379
    return f"{parts.hostname or 'localhost'}:{port}{parts.path or '/0'}"


def enqueued_at(value: bytes | None) -> float | None:
    """RQ's `enqueued_at` (UTC, `2024-05-01T12:00:00.123456Z`) as seconds since the epoch."""
    if not value:
        return None
    text = value.decode(errors="replace").removesuffix("Z")
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


def queue_names(groups: Mapping[str, Sequence[str]], known: Iterable[bytes]) -> dict[str, list[str]]:
    """Each group's queues, '*' standing for every queue RQ knows (its `rq:queues` set)."""
    every = sorted(key.decode(errors="replace").removeprefix(QUEUE_PREFIX) for key in known)
    return {name: list(dict.fromkeys(q for queue in queues for q in (every if queue == "*" else [queue])))
            for name, queues in groups.items()}


def read_backlog(client: redis.Redis, groups: Mapping[str, Sequence[str]], now: float) -> dict[str, dict]:
    """Jobs waiting in each group's queues and the age of the oldest (the job at the head of a
    queue): LLEN and LINDEX of every queue in one pipeline, the heads' `enqueued_at` in a second,
    and RQ's list of queues before them when a group serves '*'."""
    every = any("*" in queues for queues in groups.values())
    names = queue_names(groups, client.smembers(QUEUES_KEY) if every else ())
    queues = list(dict.fromkeys(q for listed in names.values() for q in listed))
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.llen(QUEUE_PREFIX + queue)
        pipe.lindex(QUEUE_PREFIX + queue, 0)
    answers = pipe.execute()
    lengths = dict(zip(queues, answers[0::2], strict=True))
    heads = {queue: head for queue, head in zip(queues, answers[1::2], strict=True) if head}
    pipe = client.pipeline(transaction=False)
    for head in heads.values():
        pipe.hget(JOB_PREFIX + head.decode(errors="replace"), "enqueued_at")
    ages = {queue: now - at for queue, at in zip(heads, map(enqueued_at, pipe.execute()), strict=True)
            if at is not None}
    backlog = {}
    for name, listed in names.items():
        oldest = [ages[q] for q in listed if q in ages]
        backlog[name] = {"waiting": sum(lengths[q] for q in listed),
                         "oldest": round(max(0.0, max(oldest)), 1) if oldest else None}
    return backlog


class Monitor:
    """The loop: one reading per interval, the manager's messages in between."""

    def __init__(self, channel: socket.socket, env: Mapping[str, str]) -> None:
        self.channel = channel
        self.env = env
        self.clients: dict[str, redis.Redis] = {}
        self.setup: dict = {}
        self.snapshot: dict | None = None  # the manager's latest, published on the next round
        self.published_to: str | None = None  # where our fleet entry is, to take it away
        self.metrics = None

    def client(self, url: str) -> redis.Redis:
        if url not in self.clients:
            self.clients[url] = connect(url, self.env)
        return self.clients[url]

    def run(self) -> None:
        next_round = time.monotonic()
        while True:
            ready, _, _ = select.select([self.channel], [], [], max(0.0, next_round - time.monotonic()))
            if ready:
                messages, closed = link.receive(self.channel)
                for message in messages:
                    self.on_message(message)
                if closed:
                    self.withdraw()
                    return
            if time.monotonic() >= next_round:
                if self.setup["groups"] or self.setup["fleet_url"]:
                    self.tell(self.one_round())
                next_round = max(next_round + self.setup["interval"], time.monotonic())

    def on_message(self, message: dict) -> None:
        if "setup" in message:
            self.setup = message["setup"]
            if self.published_to and self.published_to != self.setup["fleet_url"]:
                self.withdraw()
            if self.setup["metrics_port"] and self.metrics is None:
                self.metrics = self.start_metrics()
        if "fleet" in message:
            self.snapshot = message["fleet"]

    def one_round(self) -> dict:
        """Publish the pool to the fleet, then read the backlog: the message for the manager."""
        errors = []
        fleet_url = self.setup["fleet_url"]
        if fleet_url and self.snapshot is not None:
            key = FLEET_PREFIX + self.setup["pool_id"]
            value = json.dumps({**self.snapshot, "published": round(time.time(), 3)})
            try:
                self.client(fleet_url).set(key, value, ex=max(1, round(self.setup["fleet_ttl"])))
                self.published_to = fleet_url
            except redis.RedisError as error:
                errors.append(f"fleet: Redis at {server_of(fleet_url)}: {error}")
        by_url: dict[str, dict[str, list[str]]] = {}
        for group in self.setup["groups"]:
            by_url.setdefault(group["url"], {})[group["name"]] = group["queues"]
        backlog = {}
        for url, groups in by_url.items():
            try:
                backlog.update(read_backlog(self.client(url), groups, time.time()))
            except redis.RedisError as error:
                errors.append(f"backlog: Redis at {server_of(url)}: {error}")
        return {"backlog": backlog, "error": "; ".join(errors) or None}

    def withdraw(self) -> None:
        """Take our fleet entry away at once: a pool that stops says so rather than waiting for its TTL."""
        if self.published_to is None:
            return
        with contextlib.suppress(redis.RedisError):
            self.client(self.published_to).delete(FLEET_PREFIX + self.setup["pool_id"])
        self.published_to = None

    def start_metrics(self) -> object | None:
        port = self.setup["metrics_port"]
        try:
            from entrypoint.metrics import serve
        except ImportError as error:
            self.tell({"metrics_error": f"--metrics-port {port}: {error.msg}: the metrics need "
                                        "prometheus_client (pip install 'worker-entrypoint[metrics]')"})
            return None
        try:
            server = serve(port, self.setup["socket"])
        except OSError as error:
            self.tell({"metrics_error": f"--metrics-port {port}: cannot listen: {error.strerror or error}"})
            return None
        self.tell({"metrics": f"metrics on port {port} (/metrics)"})
        return server

    def tell(self, message: dict) -> None:
        with contextlib.suppress(BlockingIOError):
            link.send(self.channel, message)


def main() -> int:
    # The platform's TERM (Heroku sends it to every process) and a terminal's Ctrl-C are for the
    # workers; the manager retires us by closing the channel.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = link.from_parent()
    monitor = Monitor(channel, os.environ)
    first = channel.recv(link.MAX_MESSAGE)
    if not first:
        return 0
    try:
        monitor.on_message(json.loads(first))
        channel.setblocking(False)
        monitor.run()
    except BrokenPipeError:
        monitor.withdraw()  # the manager is gone
    return 0


if __name__ == "__main__":
    sys.exit(main())
