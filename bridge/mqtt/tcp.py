"""TCP options for the local broker's connection: small packets go out at once, and the
broker's acknowledgements are acknowledged at once."""

from __future__ import annotations

import contextlib
import socket

# TCP_QUICKACK where the platform has it (Linux), else None.
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class QuickAck:
    """Keeps a socket in quick-ack mode (Linux). A stock Mosquitto keeps Nagle's algorithm
    on: of the PUBACKs of a batch it sends the first, and holds the rest until that one is
    acknowledged, which a delayed ACK puts off by up to 40 ms. Linux leaves quick-ack mode
    by itself, so `again()` is called after each read.

    `sock` is the transport's socket; Nagle's algorithm is switched off on it too."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket | None) -> None:
        self._sock: socket.socket | None = None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if QUICKACK is not None:
            # our own handle on the socket (uvloop's would make a socket object per call),
            # closed with the connection
            with contextlib.suppress(OSError):
                self._sock = socket.fromfd(sock.fileno(), sock.family, sock.type)
        self.again()

    def again(self) -> None:
        sock = self._sock
        if sock is not None and QUICKACK is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
            except OSError:
                self.close()  # not supported here: never asked again

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()
