"""`token create` end to end against the simulator's REST API: no token shown unless asked."""

from __future__ import annotations

from support.helpers import TOKEN
from support.toolbox_helpers import Api, cli


async def test_token_create_hides_the_new_token_unless_asked(api: Api) -> None:
    run = await cli(api, "token", "create", "--ttl", "3600", "--info", "test")
    assert run.code == 0, run.err
    created = api.responder.tools.tokens[-1]
    assert created["ttl"] == 3600
    assert created["access"] == {"type": 0}
    assert created["key"] not in run.out + run.err
    assert "--show" in run.out
    shown = await cli(api, "token", "create", "--ttl", "60", "--show")
    assert shown.code == 0, shown.err
    assert f"token: {api.responder.tools.tokens[-1]['key']}" in shown.out
    for r in (run, shown):
        assert TOKEN not in r.out + r.err
    request = api.responder.requests[-1]
    assert request.method == "post"
    assert request.uri == "platform/tokens"


async def test_a_rejected_token_request_never_echoes_a_token(api: Api) -> None:
    api.responder.fail_queue.append((403, "access denied"))
    run = await cli(api, "token", "create", "--ttl", "60", "--show")
    assert run.code == 1
    assert "flespi answered 403: access denied" in run.err
    assert TOKEN not in run.out + run.err
