"""A stand-in for the Home Assistant Supervisor's API, on a free loopback port: what an add-on
that declares `services: [mqtt:want]` asks of it. `GET /services/mqtt` with
`Authorization: Bearer <SUPERVISOR_TOKEN>` answers as the Supervisor documents it
(`{"result": "ok", "data": {"host", "port", "ssl", "protocol", "username", "password"}}`); any
other path is the Supervisor's error form with 404. It records every Authorization header
seen, for the tests to check the add-on presented its token."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Supervisor:
    url: str
    seen: list[str] = field(default_factory=list)


@contextmanager
def supervisor(service: Mapping[str, Any]) -> Iterator[Supervisor]:
    """The stand-in serving `service` as the `mqtt` service, stopped on exit."""
    stand_in = Supervisor(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            stand_in.seen.append(self.headers.get("Authorization", ""))
            ok = self.path == "/services/mqtt"
            body = json.dumps({"result": "ok", "data": dict(service)} if ok else
                              {"result": "error", "message": "no"}).encode()
            self.send_response(200 if ok else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stand_in.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stand_in
    finally:
        server.shutdown()
        server.server_close()
