"""`sessions` end to end against the simulator's REST API."""

from __future__ import annotations

import json

from support.toolbox_helpers import Api, cli


async def test_sessions_mark_the_bridge_and_warn_on_a_shared_client_id(api: Api) -> None:
    run = await cli(api, "sessions")
    assert run.code == 0, run.err
    assert "panel-4.45.24-sim" in run.out
    assert "warning" not in run.err
    own = {"id": "s2", "client_id": "flespi-bridge", "connected": True, "clean": False,
           "expires": 604800, "size": 12, "ip": "10.0.0.2", "cid": 1000001}
    api.responder.tools.sessions += [own, {**own, "id": "s3", "ip": "10.0.0.3"}]
    run = await cli(api, "sessions")
    assert run.code == 0, run.err
    marked = [line for line in run.out.splitlines() if line.startswith("*")]
    assert len(marked) == 2
    assert all("flespi-bridge" in line for line in marked)
    assert "warning: 2 sessions use the client id 'flespi-bridge'" in run.err
    as_json = json.loads((await cli(api, "sessions", "--json")).out)
    assert [s["bridge"] for s in as_json] == [False, True, True]
