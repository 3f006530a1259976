"""`entrypoint --fleet`: every pool that publishes its status to the same Redis, read there (a client, never PID 1)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import redis

from entrypoint.monitor import FLEET_PREFIX, connect, server_of

# A person waits for this one: a Redis across the internet (Heroku's) gets longer than the monitor's.
TIMEOUT = 5.0


class FleetError(Exception):
    """Redis could not be read: one line for the user."""


def read_fleet(url: str, env: Mapping[str, str]) -> list[dict]:
    """Every pool's entry, by pool id. An entry that expires while we read is simply not there."""
    client = connect(url, env, timeout=TIMEOUT)
    try:
        keys = sorted(client.scan_iter(match=FLEET_PREFIX + "*", count=1000))
        values = client.mget(keys) if keys else []
    except redis.RedisError as error:
        raise FleetError(f"cannot read the fleet from Redis at {server_of(url)}: {error}") from None
    finally:
        client.close()
    pools = []
    for value in values:
        try:
            entry = json.loads(value) if value is not None else None
        except ValueError:
            continue  # not ours after all
        if isinstance(entry, dict) and "pool_id" in entry:
            pools.append(entry)
    return sorted(pools, key=lambda entry: str(entry["pool_id"]))
