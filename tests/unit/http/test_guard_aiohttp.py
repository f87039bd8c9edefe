"""The aiohttp internals `bridge/http/guard.py` relies on (project rule: private API in one
module, and a test that fails by name when an aiohttp upgrade changes it). If one of these
fails, read the guard's docstring and the new aiohttp's `web_protocol.py` before anything."""

from __future__ import annotations

import inspect
import logging

import pytest
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError

from bridge.logs import RateLimitFilter


def test_aiohttp_request_handler_takes_the_guards_keyword_arguments() -> None:
    params = inspect.signature(web.RequestHandler.__init__).parameters
    assert list(params)[1] == "manager"
    for name in ("loop", "keepalive_timeout", "max_line_size", "max_field_size",
                 "lingering_time", "logger", "access_log"):
        assert name in params, f"web.RequestHandler no longer takes {name}="


def test_aiohttp_request_handler_is_the_asyncio_protocol_the_guard_overrides() -> None:
    for name in ("connection_made", "data_received", "connection_lost", "force_close"):
        assert callable(getattr(web.RequestHandler, name, None)), f"RequestHandler.{name}"
    assert isinstance(inspect.getattr_static(web.BaseRequest, "protocol"), property)
    assert isinstance(inspect.getattr_static(web.AppRunner, "server"), property)


def test_aiohttp_logs_a_malformed_request_with_the_parse_error_attached() -> None:
    # the guard's log filter recognises the client's fault by this exception class
    assert issubclass(BadHttpMessage, HttpProcessingError)
    assert BadHttpMessage("bad").message == "bad"
    source = inspect.getsource(web.RequestHandler.handle_error)
    assert "self.log_exception" in source
    assert "exc_info=exc" in source


def test_the_rate_limit_filter_keys_on_the_template(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.Logger("flood")
    logger.parent = logging.getLogger("test.flood")
    logger.addFilter(RateLimitFilter(logger, burst=3))
    caplog.set_level(logging.DEBUG)
    for i in range(50):
        logger.error("Error handling request from %s", f"10.0.0.{i}")
    assert len([r for r in caplog.records if r.name == "flood"]) == 3


def test_aiohttp_still_has_the_default_expect_handler_the_guard_delegates_to() -> None:
    from aiohttp import web_urldispatcher
    default = getattr(web_urldispatcher, "_default_expect_handler", None)
    assert default is not None, "aiohttp lost web_urldispatcher._default_expect_handler"
    assert inspect.iscoroutinefunction(default)
    assert list(inspect.signature(default).parameters) == ["request"]


def test_aiohttp_still_queues_parse_errors_where_the_guard_looks() -> None:
    # the guard stops parsing a connection whose last queued message is a parse error, or
    # that aiohttp took as upgraded (bridge.http.guard._unparseable)
    from aiohttp import web_protocol
    assert hasattr(web_protocol, "_ErrInfo"), "aiohttp lost web_protocol._ErrInfo"
    from aiohttp import base_protocol
    assert "_messages" in web.RequestHandler.__slots__, "RequestHandler lost _messages"
    assert "_upgraded" in base_protocol.BaseProtocol.__slots__, "BaseProtocol lost _upgraded"
    feed = inspect.getsource(web.RequestHandler.data_received)
    assert "_ErrInfo(" in feed
    assert "self._messages.append" in feed
