"""A progress bar (tqdm) over a time range, shown only when the stream is a terminal."""

from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tqdm import tqdm


class Progress:
    def __init__(self, start: float, end: float, stream: IO[str] | None = None,
                 label: str = "messages", mininterval: float = 0.2) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.start = start
        self.count = 0
        self._done = 0
        self._bar: tqdm[Any] | None = None
        self._total = max(1, round(end - start))
        if self.stream.isatty():
            from tqdm import tqdm  # the `tools` extra; the CLI itself must load without it

            self._bar = tqdm(total=self._total, file=self.stream, unit="s",
                             desc=label, leave=False, dynamic_ncols=True, mininterval=mininterval,
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def update(self, ts: float) -> None:
        self.count += 1
        if self._bar is not None:
            done = max(self._done, min(round(ts - self.start), self._total))
            if done > self._done:
                self._bar.update(done - self._done)
                self._done = done
            if self.count % 1000 == 0:
                self._bar.set_postfix_str(f"{self.count} messages", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
