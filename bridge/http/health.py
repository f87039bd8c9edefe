"""The metrics and health listener: GET /metrics, /healthz and /readyz on one port."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from aiohttp import web

from bridge.http.guard import Guard
from bridge.http.metrics import Metrics
from bridge.http.seats import Limits
from bridge.http.server import WebServer, add_get, listen, text

log = logging.getLogger(__name__)

# Scrapers and probes: a few at a time, each request a small GET. Limits of its own, apart
# from the stream's, so a flood there never takes a connection here (and 64 + the stream's
# 256 stay well under 1,024 open files). No per-address cap: probes come from one kubelet.
LIMITS = Limits(header_timeout=10.0, body_timeout=10.0, keepalive_timeout=15.0,
                max_connections=64, max_per_address=64)


class HealthServer(WebServer):
    """GET (or HEAD) /metrics, /healthz (alive() is true: every essential task runs) and
    /readyz (ready() is true)."""

    def __init__(self, metrics: Metrics, ready: Callable[[], bool], host: str, port: int,
                 alive: Callable[[], bool] = lambda: True) -> None:
        app = web.Application()
        add_get(app, "/metrics", self._metrics)
        add_get(app, "/healthz", self._healthz)
        add_get(app, "/readyz", self._readyz)
        super().__init__(app, host, port, guard=Guard(LIMITS, Counter(), __name__))
        self.metrics = metrics
        self.ready = ready
        self.alive = alive

    async def start(self) -> None:
        await listen(super().start(), "metrics", self.host, self.port)
        log.info("metrics on http://%s:%s/metrics", self.host, self.port)

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            body, content_type = self.metrics.render(request.headers.get("Accept", ""))
        except Exception:
            log.exception("rendering the metrics failed")
            return text(500, "metrics unavailable\n")
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _healthz(self, _request: web.Request) -> web.Response:
        if self.alive():
            return text(200, "ok\n")
        return text(503, "an essential task ended; restart the bridge\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self.ready():
            return text(200, "ready\n")
        return text(503, "not ready\n")
