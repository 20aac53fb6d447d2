"""A wall-clock budget per source: long loops call ``check()`` so that no file can keep a reader busy forever."""

from __future__ import annotations

import time

from .errors import VideoDecodeError


class Deadline:
    """Raises VideoDecodeError from ``check()`` once ``seconds`` have passed (``None`` = no limit)."""

    def __init__(self, source: str, seconds: float | None) -> None:
        self.source = source
        self.seconds = seconds
        self._end = None if seconds is None else time.monotonic() + seconds

    def check(self) -> None:
        if self._end is not None and time.monotonic() > self._end:
            raise VideoDecodeError(self.source, f"gave up after {self.seconds:g} s (time limit per file)")
