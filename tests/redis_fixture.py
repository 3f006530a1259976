"""A real, private redis-server for tests: `from redis_fixture import redis_server`.

Starts `redis-server --port P --save '' --appendonly no` on a free port in a temporary
directory, yields its URL (redis://127.0.0.1:P/0), and shuts it down afterwards. Without
redis-server the test fails, naming what installs it (scripts/test does): a test of ours that
needs Redis never skips.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(directory: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A redis-server answering PING, and its URL. On a free port a port taken meanwhile gets
    another try; on a given one (a restart must come back where it was) there is one try."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: scripts/test installs it (apt-get install redis-server)",
                    pytrace=False)
    for _attempt in range(3 if port is None else 1):
        chosen = port or free_port()
        log_path = directory / f"redis-{chosen}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - closed below
        process = subprocess.Popen(
            [binary, "--port", str(chosen), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(directory)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            if _answers(chosen):
                return process, f"redis://127.0.0.1:{chosen}/0"
            time.sleep(0.02)
        stop_redis(process)
    pytest.fail(f"redis-server did not start:\n{log_path.read_text(errors='replace')[-2000:]}")


def stop_redis(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a fresh, empty redis-server of this test's own."""
    process, url = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield url
    finally:
        stop_redis(process)
