"""The flespi toolbox: history export (tracks, trips), telemetry, sessions and tokens over
flespi's REST API. Needs the optional extra `tools` for the track formats."""
