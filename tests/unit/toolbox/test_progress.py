"""The progress bar: on a terminal only."""

from __future__ import annotations

import io

from bridge.toolbox.progress import Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal() -> None:
    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = Progress(0, 100, stream, mininterval=0)
        for ts in range(0, 101, 10):
            bar.update(float(ts))
        bar.close()
    assert "%" in tty.getvalue()
    assert "100%" in tty.getvalue()
    assert pipe.getvalue() == ""
