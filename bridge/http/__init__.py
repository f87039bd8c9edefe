"""HTTP listeners: the aiohttp server base (`server.py`), Prometheus metrics (`metrics.py`)
served with `/healthz` and `/readyz` (`health.py`), and the flespi HTTP stream endpoint
(`stream_endpoint.py`), which answers 200 only once a batch is published locally. Each
listener runs behind a guard of its own (`guard.py`: deadlines, connection caps, the
one module with aiohttp internals; `seats.py`: who counts as one client, the trusted
reserve; `tls_layer.py`: TLS put on after admission, the one use of asyncio's private TLS
protocol).

Owns: metric names (a contract), the stream's answer codes and its limits.
May import: everything below the app (`bridge.flespi`, `bridge.core`, `bridge.config`,
`bridge.normalize`, the shared leaves), not the publishing side or the commands.
"""
