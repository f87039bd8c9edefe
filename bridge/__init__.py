"""flespi-bridge: a flespi fleet on a local MQTT broker."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flespi-bridge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
