"""The guard's canned answers: what a refused or timed-out client reads."""

from __future__ import annotations

import pytest

from bridge.http.guard import REFUSED, TIMED_OUT


@pytest.mark.parametrize(("answer", "status", "body"), [
    (REFUSED, b"503", b"too many connections; retry"),
    (TIMED_OUT, b"408", b"request took too long"),
])
def test_a_canned_answer_is_whole_http_with_its_exact_length(answer: bytes, status: bytes,
                                                             body: bytes) -> None:
    head, _, rest = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].split()[1] == status
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    assert headers[b"Connection"] == b"close"
    assert int(headers[b"Content-Length"]) == len(rest)  # a client reads exactly the body
    assert rest == body
