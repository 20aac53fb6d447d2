"""`VideoDecodeError`: the one exception the video layer raises for inputs it cannot turn into frames.

Its message is a single line ``"<source>: <reason>"`` so the CLI can print it as is.
"""

from __future__ import annotations

from ..errors import VideoChatFlashError


class VideoDecodeError(VideoChatFlashError, ValueError):
    """A video / image source is missing, empty, unreadable, has no video stream, or could not be decoded."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = one_line(reason)
        super().__init__(f"{source}: {self.reason}")


def one_line(text: object, limit: int = 300) -> str:
    """``text`` as a single stripped line of at most ``limit`` characters (FFmpeg messages can be multi-line)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
