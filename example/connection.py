"""Connecting to Redis from $REDIS_URL, locally (redis://) and on Heroku (rediss://)."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

import redis

DEFAULT_URL = "redis://localhost:6379/0"


class Redis(redis.Redis):
    """redis.Redis that accepts Heroku Redis's self-signed TLS certificate.

    Heroku Redis hands out rediss:// URLs whose certificate no CA signed, and Heroku's own
    guidance is to connect with ssl_cert_reqs=None. We do that only on a dyno ($DYNO set) and
    only when the URL does not choose for itself (`?ssl_cert_reqs=required` keeps checking).
    The pool's workers use this class through RQ's RQ_CONNECTION_CLASS (see example/pool.yml).
    """

    @classmethod
    def from_url(cls, url: str, **kwargs):
        if (
            url.startswith("rediss://")
            and os.environ.get("DYNO")
            and "ssl_cert_reqs" not in parse_qs(urlsplit(url).query)
        ):
            kwargs.setdefault("ssl_cert_reqs", None)
        return super().from_url(url, **kwargs)


def connect(url: str | None = None) -> Redis:
    return Redis.from_url(url or os.environ.get("REDIS_URL") or DEFAULT_URL)
