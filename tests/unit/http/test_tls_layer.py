"""The one use of asyncio's private TLS protocol (bridge.http.tls_layer): fails by name if a
Python upgrade changes what it relies on."""

from __future__ import annotations

import asyncio
import inspect
from asyncio import sslproto


def test_asyncio_still_has_the_tls_layer_the_guard_puts_on_connections() -> None:
    # a BufferedProtocol taking (loop, app_protocol, sslcontext, waiter) and these keywords
    assert issubclass(sslproto.SSLProtocol, asyncio.BufferedProtocol)
    params = list(inspect.signature(sslproto.SSLProtocol).parameters)
    assert params[:4] == ["loop", "app_protocol", "sslcontext", "waiter"]
    for keyword in ("server_side", "call_connection_made", "ssl_handshake_timeout"):
        assert keyword in params, f"asyncio.sslproto.SSLProtocol lost `{keyword}`"
