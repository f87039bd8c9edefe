"""flespi-bridge: a flespi fleet on a local MQTT broker.

How a message travels, package by package (each package's docstring says what it owns and
what it may import; import-linter holds those rules, see `pyproject.toml`):

    flespi MQTT ─► flespi/ (session, ingest) ─► normalize/ ─► core/ (store, ledger)
    flespi HTTP stream ─► http/stream_endpoint ─┘                       │
                                                                        ▼
    local broker ◄── mqtt/ (our client) ◄── publish/ (renderer, publisher) ◄── homeassistant/
         │
         └─► commands/ (handler, gateway) ─► flespi/rest ─► flespi

`config/` reads the settings, `http/` serves metrics and health, `app/` wires one running
bridge and holds the CLI. The hot path above is direct calls; cold-path news (a local
connect, Home Assistant's `online`, a deleted device, a device type's name) goes through
the event hub in `core/events.py`, and every part starts and stops the same way
(`core/lifecycle.py`); `sim/` (a stand-in for flespi) and `toolbox/` (history, tokens)
are programs of their own that the running bridge never imports. The two shared leaves are
`exceptions` (every error raised on purpose) and `logs` (logging, secrets scrubbed).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flespi-bridge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
