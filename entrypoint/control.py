"""The control socket: `--status`, `--scale` and `--reload` talk to the running pool over a unix socket."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Callable, Mapping

_MAX_REQUEST = 64 * 1024


def default_socket_path(env: Mapping[str, str], uid: int | None = None) -> str:
    """One socket per user, in a directory only that user may enter (no TCP port, no other user)."""
    return env.get("POOL_SOCKET") or f"/tmp/entrypoint-{os.getuid() if uid is None else uid}/pool.sock"


class ControlServer:
    """Accepts one JSON request per connection and answers with one JSON line.

    `modules` is answered here, for any pool: the modules this process has imported, so what
    PID 1 carries can be checked from outside (a test holds it to no PyYAML, rich, redis, rq).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if _answers(path):
            raise OSError(f"{path}: another pool is already listening there")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left behind by a pool that was KILLed
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window for another user
        try:
            self.sock.bind(path)
        finally:
            os.umask(old_umask)
        self.sock.listen(16)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def serve_pending(self, handle: Callable[[dict], dict]) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            with conn:
                conn.settimeout(1.0)  # a silent client must not stall the pool's loop for long
                try:
                    request = json.loads(_read_line(conn) or b"{}")
                    if not isinstance(request, dict):
                        reply = {"error": "bad request"}
                    elif request.get("command") == "modules":
                        reply = {"modules": sorted(sys.modules)}
                    else:
                        reply = handle(request)
                except (OSError, ValueError) as error:
                    reply = {"error": f"bad request: {error}"}
                with contextlib.suppress(OSError):
                    conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def request(path: str, payload: dict, timeout: float = 5.0) -> dict:
    """Send one request to the pool at `path`; OSError when no pool answers there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(path)
        conn.sendall(json.dumps(payload).encode() + b"\n")
        line = _read_line(conn)
    if not line:
        raise OSError(f"{path}: the pool closed the connection without answering")
    return json.loads(line)


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data and len(data) < _MAX_REQUEST:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


def _answers(path: str) -> bool:
    try:
        request(path, {"command": "ping"}, timeout=0.5)
    except (OSError, ValueError):
        return False
    return True
