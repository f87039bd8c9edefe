"""Commands: local command topics (`<base>/<id>/set`, `<base>/<id>/<entity>/set`) turned
into flespi REST calls, and exactly one result per request on `<base>/<id>/result`.
`handler.py` takes what arrives on the topics (parsing, retained refusal, limits, the one
result); `gateway.py` maps a request through the command profiles to one flespi call;
`limits.py` holds the rate limits and the memory of transaction ids.

Owns: the one-result-per-command rule, command rate limits.
May import: `bridge.core`, `bridge.config`, `bridge.flespi` (its REST client interface),
`bridge.normalize`, the shared leaves. Not the publishing side nor Home Assistant.
"""
