"""Questions over a live source: a growing file, a camera/RTSP URL, or an iterator of frames.

A reader thread pulls frames from the source and keeps about one per second (``sample_fps``); every
complete 4-frame clip is encoded once, as soon as `update` (or `ask`) runs, and its tokens are kept. A
question is answered over everything seen so far. When the tokens would exceed the context budget, a uniform
subsample of the clips is used and the answer's notes say so. Memory: the encoded tokens plus at most one
partial clip of frames and the reader's queue.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from .. import video as vid
from ..video.decode import frame_to_rgb
from .prompt import build_chat_prompt, extend_history
from .tokens import VideoTokens

log = logging.getLogger(__name__)
_DONE = object()
_TEXT_RESERVE = 512  # tokens kept free for the prompt text and the answer


class StreamSession:
    """``session = model.stream(source)``; ``session.ask("what just happened?")`` at any moment."""

    def __init__(
        self,
        model,
        source,
        *,
        source_fps: float | None = None,
        sample_fps: float = 1.0,
        allow_url: bool = False,
        follow: bool = True,
        poll_seconds: float = 0.2,
        max_context_tokens: int | None = None,
        queue_size: int = 64,
    ):
        self.model = model
        self.sample_fps = float(sample_fps)
        self.poll_seconds = poll_seconds
        limit = model.config.tokenizer_model_max_length or model.config.llm.max_position_embeddings
        self.max_context_tokens = max_context_tokens or max(int(limit) - _TEXT_RESERVE, 1)
        self.history: list[dict] = []
        self.notes: list[str] = []
        self._frames: list[np.ndarray] = []  # the partial clip
        self._times: list[float] = []
        self._chunks: list[torch.Tensor] = []
        self._clip_times: list[float] = []
        self._clip_indices: list[int] = []
        self._seen = 0
        self._error: BaseException | None = None
        self._finished = False
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        frames = _frame_source(source, source_fps, allow_url, follow, poll_seconds, self._stop)
        self._thread = threading.Thread(
            target=self._read, args=(frames,), daemon=True, name="videochat-stream"
        )
        self._thread.start()

    # ------------------------------------------------------------------ reading
    def _read(self, frames: Iterator[tuple[np.ndarray, float]]) -> None:
        next_time = 0.0
        try:
            for frame, seconds in frames:
                if self._stop.is_set():
                    break
                if seconds + 1e-9 < next_time:  # keep about sample_fps frames per second
                    continue
                next_time = seconds + 1.0 / self.sample_fps
                self._queue.put((frame, seconds))
        except BaseException as exc:  # reported to the caller on the next update()
            self._error = exc
        finally:
            self._queue.put(_DONE)

    def update(self, wait: float = 0.0) -> int:
        """Encode every complete clip received so far; returns the number of new clips."""
        deadline = time.monotonic() + wait
        added = 0
        while True:
            timeout = max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout) if timeout else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _DONE:
                self._finished = True
                break
            frame, seconds = item
            self._frames.append(
                vid.resize_frame(np.ascontiguousarray(frame[..., :3]), self.model.config.image_size)
            )
            self._times.append(float(seconds))
            if len(self._frames) == self.model.config.frames_per_clip:
                self._encode_clip()
                added += 1
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return added

    def _encode_clip(self) -> None:
        with torch.inference_mode():
            pixels = self.model.preprocess_video(np.stack(self._frames))
            self._chunks.append(self.model.encode_pixels(pixels).cpu())
        self._clip_times.extend(self._times)
        self._clip_indices.extend(range(self._seen, self._seen + len(self._times)))
        self._seen += len(self._times)
        self._frames, self._times = [], []

    @property
    def finished(self) -> bool:
        """True once the source has ended and everything was read."""
        return self._finished

    @property
    def num_clips(self) -> int:
        return len(self._chunks)

    def wait_until_finished(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while not self._finished and time.monotonic() < end:
            self.update(wait=self.poll_seconds)

    # ------------------------------------------------------------------ answering
    def tokens(self) -> VideoTokens:
        """Everything seen so far as `VideoTokens` (a uniform clip subsample if over the context budget)."""
        if not self._chunks:
            raise vid.VideoDecodeError("stream", "no complete 4-frame clip has been received yet")
        per_clip = self.model.config.frames_per_clip
        duration = self._clip_times[-1] - self._clip_times[0] + 1.0 / self.sample_fps
        seen = VideoTokens(
            tokens=torch.cat(self._chunks),
            timestamps=list(self._clip_times),
            indices=list(self._clip_indices),
            duration=duration,
            fps=self.sample_fps,
            time_message=vid.time_message(duration, len(self._clip_times)),
            frames_per_clip=per_clip,
            sampling={"sample": "live", "sample_fps": self.sample_fps},
        )
        budget = self.max_context_tokens // max(seen.tokens_per_clip, 1)
        out = seen.subsample_clips(max(budget, 1))
        for note in out.notes:
            if note not in self.notes:
                log.warning(note)
                self.notes.append(note)
        return out

    def ask(
        self, question: str, *, generation: dict | None = None, compression=None, keep_history: bool = True
    ) -> str:
        self.update()
        tokens = self.tokens()
        prompt, user_text = build_chat_prompt(
            question, tokens.time_message, self.history if keep_history else None
        )
        result = self.model.generate(prompt, tokens.tokens, generation=generation, compression=compression)
        if keep_history:
            self.history = extend_history(self.history, user_text, result.text)
        return result.text

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a reader waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.1)

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------- sources
def _frame_source(
    source, source_fps, allow_url, follow, poll_seconds, stop
) -> Iterator[tuple[np.ndarray, float]]:
    """(frame, seconds) pairs from any supported live source."""
    if isinstance(source, str | os.PathLike) and "://" in str(source):
        if not allow_url:
            raise vid.VideoDecodeError(str(source), "URLs are opened only with allow_url=True")
        return _container_frames(str(source))
    if isinstance(source, str | os.PathLike):
        return _growing_file_frames(Path(source), follow, poll_seconds, stop)
    if isinstance(source, Iterable):
        return _iterator_frames(source, source_fps or 1.0)
    raise TypeError(f"unsupported stream source {type(source).__name__}")


def _iterator_frames(frames: Iterable, fps: float) -> Iterator[tuple[np.ndarray, float]]:
    for i, frame in enumerate(frames):
        array = np.asarray(frame, dtype=np.uint8)
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise vid.VideoDecodeError("stream", f"frame {i} has shape {array.shape}, expected [H, W, 3]")
        yield array, i / fps


def _container_frames(url: str) -> Iterator[tuple[np.ndarray, float]]:
    import av

    with av.open(url, timeout=(10, 10)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if frame.time is not None:
                yield frame_to_rgb(frame), float(frame.time)


def _growing_file_frames(
    path: Path,
    follow: bool,
    poll_seconds: float,
    stop: threading.Event,
    hold_frames: int = 3,
    settle_polls: int = 3,
):
    """Frames of a file that may still be written: re-read when it grows, continue after the last frame taken.

    Streamable containers (MPEG-TS, Matroska, fragmented MP4) decode while incomplete. The last few frames
    decoded from an unfinished file may be damaged or still waiting for their reference frames, so the
    newest ``hold_frames`` are only taken once the file has stopped growing for ``settle_polls`` polls.
    """
    from collections import deque

    last_time = float("-inf")
    last_size = -1
    stable = 0
    while not stop.is_set():
        size = path.stat().st_size if path.exists() else 0
        grown = size != last_size
        stable = 0 if grown else stable + 1
        last_size = size
        settled = stable >= settle_polls or (not follow and stable >= 1)
        if size > 0 and (grown or stable == settle_polls or (not follow and stable == 1)):
            held: deque = deque()
            for frame, t in _frames_after(path, last_time):
                held.append((frame, t))
                if len(held) > hold_frames:
                    frame0, last_time = held.popleft()
                    yield frame0, last_time
            while settled and held:
                frame0, last_time = held.popleft()
                yield frame0, last_time
        if not follow and settled:
            return
        time.sleep(poll_seconds)


def _frames_after(
    path: Path, last_time: float, rewind_seconds: float = 30.0
) -> Iterator[tuple[np.ndarray, float]]:
    """Decodable frames of ``path`` later than ``last_time`` (stops quietly at an unreadable tail).

    To avoid decoding the whole file again it seeks to ``rewind_seconds`` before ``last_time``; seeking in
    some containers (MPEG-TS) lands by byte position, so if the first frame decoded is already past
    ``last_time`` frames may have been skipped and the file is read again from the start.
    """
    import av

    seek_to = last_time - rewind_seconds
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if seek_to > 0 and stream.time_base:
                container.seek(int(seek_to / stream.time_base), stream=stream, backward=True)
                first = next((f for f in container.decode(stream) if f.time is not None), None)
                if first is None or first.time > last_time:
                    yield from _frames_after(path, last_time, rewind_seconds=float("inf"))
                    return
            for frame in container.decode(stream):
                if frame.time is not None and frame.time > last_time:
                    yield frame_to_rgb(frame), float(frame.time)
    except av.error.FFmpegError:
        return  # incomplete tail (or not yet a container): retried when the file grows
