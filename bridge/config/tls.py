"""TLS contexts built from the checked file options of each section (the flespi
connection, the local broker, the HTTP stream endpoint)."""

from __future__ import annotations

import ssl

from bridge.config.sections import FlespiSettings, LocalSettings, StreamSettings


def local_tls_context(settings: LocalSettings) -> ssl.SSLContext | None:
    """The TLS context of the local broker connection, or None without `local.tls`."""
    if not settings.tls:
        return None
    ctx = ssl.create_default_context(
        cafile=str(settings.ca_file) if settings.ca_file else None
    )
    if settings.cert_file and settings.key_file:
        ctx.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    if settings.tls_insecure:
        ctx.check_hostname = False
    return ctx


def flespi_tls_context(settings: FlespiSettings) -> ssl.SSLContext | None:
    """The TLS context of the flespi connection (the server is always verified: system
    trust store unless `flespi.ca_file`), or None without `flespi.tls`."""
    if not settings.tls:
        return None
    return ssl.create_default_context(
        cafile=str(settings.ca_file) if settings.ca_file else None
    )


def stream_tls_context(settings: StreamSettings) -> ssl.SSLContext | None:
    """The server TLS context of the stream's ingest endpoint, or None (plain HTTP) without
    `stream.cert_file`."""
    if settings.cert_file is None or settings.key_file is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(settings.cert_file), str(settings.key_file))
    return ctx
