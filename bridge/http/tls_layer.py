"""asyncio's TLS layer put on an accepted connection at once, so a listener can admit (and
count) a connection before its handshake.

THE ONE PLACE WITH asyncio's PRIVATE TLS PROTOCOL (project rule): `asyncio.sslproto.
SSLProtocol`, the very layer `loop.create_server(ssl=...)` puts on each connection. Why not
the public ways: with `create_server(ssl=...)` the protocol sees a connection only once its
handshake is over, so stalled handshakes escape every cap; `loop.start_tls` is a coroutine,
and between a connection's start and its first step uvloop reads (it starts reading after
`connection_made` whatever the protocol paused): a ClientHello read then is lost and the
handshake stalls. Installed synchronously from `connection_made`, the layer gets every byte,
on either event loop. `tests/unit/http/test_tls_layer.py` fails by name if a Python upgrade
changes what is used here.
"""

from __future__ import annotations

import asyncio
import ssl
from asyncio import sslproto


def install(transport: asyncio.Transport, app: asyncio.BaseProtocol, context: ssl.SSLContext,
            handshake_timeout: float) -> asyncio.Future[None]:
    """Make `transport`'s bytes go through a server-side TLS layer for `app`, whose
    `connection_made` is called with the secure transport once the handshake is done. The
    future is done then, or fails with the handshake (the layer closes the connection; a
    handshake over `handshake_timeout` seconds is aborted)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    layer = sslproto.SSLProtocol(loop, app, context, done, server_side=True,
                                 call_connection_made=True,
                                 # typeshed says int: asyncio takes any positive number
                                 ssl_handshake_timeout=handshake_timeout)  # type: ignore[arg-type]
    transport.set_protocol(layer)
    layer.connection_made(transport)
    return done
