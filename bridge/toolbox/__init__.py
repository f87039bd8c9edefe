"""The flespi toolbox: history export (tracks, trips), telemetry, sessions and tokens over
flespi's REST API. Needs the optional extra `tools` for the track formats.

A separate program sharing the configuration: the running bridge never imports it.
May import: `bridge.config`, `bridge.flespi`, `bridge.normalize`, the shared leaves.
"""
