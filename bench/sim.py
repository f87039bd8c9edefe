"""The flespi simulator with its REST-over-MQTT responder, as a process of its own:
`python -m bench.sim --port P --devices N`. Prints `{"event": "ready", "responder": ...}`
once the fleet's retained state is published; stops on SIGTERM or after `--timeout`.

The responder (`bridge.sim.Responder`) is used when the simulator has one; without it the
command scenario reports why it cannot measure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any


async def serve(host: str, port: int, devices: int, timeout: float) -> None:
    import bridge.sim as sim_pkg
    from bridge.sim import Simulator

    sim = Simulator(host, port, devices=devices)
    await sim.start()
    responder: Any = None
    factory = getattr(sim_pkg, "Responder", None)
    if factory is not None:
        responder = factory(sim)
        await responder.attach()
    print(json.dumps({"event": "ready", "responder": responder is not None,
                      "devices": sorted(sim.devices)}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout)
    if responder is not None:
        await responder.close()
    await sim.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.sim")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--devices", type=int, default=20)
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.devices, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
