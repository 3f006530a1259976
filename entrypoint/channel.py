"""The link between the manager and a helper process of ours: a SOCK_SEQPACKET socket, one JSON message per packet."""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping, Sequence

from entrypoint.spawn import CHANNEL_FD, Child, spawn

MAX_MESSAGE = 1 << 20


def spawn_helper(argv: Sequence[str], env: Mapping[str, str],
                 output: int | None = None) -> tuple[Child, socket.socket]:
    """Start a helper with its end of a new channel at CHANNEL_FD; our end never blocks."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        child = spawn(argv, env, output=output, channel=theirs.fileno())
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    ours.setblocking(False)
    return child, ours


def send(channel: socket.socket, message: dict, fd: int | None = None) -> None:
    """One message, with a descriptor if given; OSError when the peer is gone or its queue is full."""
    socket.send_fds(channel, [json.dumps(message).encode()], [fd] if fd is not None else [])


def receive(channel: socket.socket) -> tuple[list[dict], bool]:
    """Every message waiting now on a non-blocking channel, and whether the peer has closed its end."""
    messages = []
    while True:
        try:
            data = channel.recv(MAX_MESSAGE)
        except BlockingIOError:
            return messages, False
        except OSError:
            data = b""
        if not data:
            return messages, True
        messages.append(json.loads(data))


def from_parent() -> socket.socket:
    """In a helper: the channel the manager handed us; our own children never inherit it."""
    channel = socket.socket(fileno=CHANNEL_FD)
    channel.set_inheritable(False)
    return channel
