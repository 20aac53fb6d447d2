"""The public entry points: ``probe_video``, ``plan_sampling``, ``load_video`` and ``iter_clips``.

Flow: ``resolve_source`` (what was passed) → a reader (PyAV for videos, Pillow for images / GIF / frame
folders, or frames in memory) whose ``info`` gives count and rate → ``plan`` (the original's sampling rules for
that reader, REFERENCE §4) → frames decoded in plan order, each resized right away when ``size`` is given, and
either stacked (``load_video``) or grouped into clips as they arrive (``iter_clips``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import av
import numpy as np
from PIL import Image

from . import decode
from .deadline import Deadline
from .errors import VideoDecodeError, one_line
from .images import FramesReader, GifReader, ImageDirReader, ImageListReader, ImageReader
from .sampling import (
    DEFAULT_LOCAL_NUM_FRAMES,
    DEFAULT_MAX_FRAMES,
    DEFAULT_MIN_FRAMES,
    clip_window,
    image_dir_indices,
    sample_frame_indices,
    time_message,
    training_clip_indices,
)
from .sources import Source, resolve_source
from .types import Clip, DecodedFrame, LoadedVideo, SamplingPlan, VideoInfo

Reader = Any  # decode.PyAVReader or one of the images readers (same duck-typed interface)
_UNSAMPLED_KINDS = ("image", "frames")


# ------------------------------------------------------------------------------------------------ probing
def probe_video(
    source: Any, allow_url: bool = False, *, count_frames: bool = False, timeout_s: float | None = None
) -> VideoInfo:
    """Metadata of a source without decoding it (one frame at most).

    Videos: frame count and average rate from the header; when missing or implausible, from duration × rate,
    or by counting packets. ``count_frames=True`` always counts (one demux pass, nothing decoded) and returns
    exactly the numbers ``load_video`` samples from. Other sources (folders, GIF, images, frames) are counted.
    """
    src = resolve_source(source, allow_url=allow_url)
    try:
        deadline = Deadline(src.name, timeout_s)
        if src.kind == "video":
            return _guarded(src, lambda: decode.probe(src, count_frames=count_frames, deadline=deadline))
        with open_reader(src, deadline=deadline) as reader:
            return reader.info
    finally:
        src.close()


# ----------------------------------------------------------------------------------------------- planning
def plan_sampling(
    source: Any,
    max_frames: int = DEFAULT_MAX_FRAMES,
    *,
    min_frames: int = DEFAULT_MIN_FRAMES,
    local_num_frames: int = DEFAULT_LOCAL_NUM_FRAMES,
    sample: str = "dynamic_fps1",
    num_frames: int | None = None,
    fix_start: int | None = None,
    start: float | None = None,
    end: float | None = None,
    seed: int | None = None,
    time_message_style: str | None = "short",
    fps: float | None = None,
    allow_url: bool = False,
    timeout_s: float | None = None,
) -> SamplingPlan:
    """Which frames ``load_video`` / ``iter_clips`` will return (indices, timestamps, duration, message).

    ``source`` is anything ``load_video`` accepts (then it is indexed, not decoded) or a ``VideoInfo``.
    """
    settings = _settings(
        max_frames=max_frames,
        min_frames=min_frames,
        local_num_frames=local_num_frames,
        sample=sample,
        num_frames=num_frames,
        fix_start=fix_start,
        start=start,
        end=end,
        seed=seed,
        time_message_style=time_message_style,
    )
    if isinstance(source, VideoInfo):
        return plan(_with_fps(source, fps), **settings)
    src = resolve_source(source, allow_url=allow_url)
    try:
        with open_reader(src, fps=fps, deadline=Deadline(src.name, timeout_s)) as reader:
            return _guarded(src, lambda: plan(reader.info, **settings))
    finally:
        src.close()


def plan(
    info: VideoInfo,
    *,
    max_frames: int = DEFAULT_MAX_FRAMES,
    min_frames: int = DEFAULT_MIN_FRAMES,
    local_num_frames: int = DEFAULT_LOCAL_NUM_FRAMES,
    sample: str = "dynamic_fps1",
    num_frames: int | None = None,
    fix_start: int | None = None,
    start: float | None = None,
    end: float | None = None,
    seed: int | None = None,
    time_message_style: str | None = "short",
    clip_rule: str = "inference",
) -> SamplingPlan:
    """Apply the original's rules for ``info.kind`` (REFERENCE §4.1–§4.4). Raises ValueError on an empty plan.

    ``clip_rule``: how a ``start``/``end`` window is sampled — ``"inference"`` (the decord loader, §4.2/§4.3)
    or ``"training"`` (the original training loader's clip reader, §4.4).
    """
    record: dict[str, Any] = {
        "reader": info.kind,
        "sample": sample,
        "num_frames": num_frames,
        "min_frames": min_frames,
        "max_frames": max_frames,
        "local_num_frames": local_num_frames,
        "fix_start": fix_start,
        "seed": seed if sample == "rand" else None,
        "source_frames": info.num_frames,
        "fps": info.fps,
        "clip": None,
        "start_index": 0,
    }
    kwargs = dict(
        sample=sample,
        num_frames=num_frames,
        min_frames=min_frames,
        max_frames=max_frames,
        local_num_frames=local_num_frames,
        fix_start=fix_start,
        seed=seed,
    )
    if info.kind in _UNSAMPLED_KINDS:
        indices, duration = list(range(info.num_frames)), info.num_frames / info.fps
        record.update(sample="given", num_video_frames=info.num_frames)
    elif info.kind == "image_dir":
        indices, duration = image_dir_indices(info.num_frames, info.fps, start=start, end=end, **kwargs)
        record.update(num_video_frames=info.num_frames, clip=_clip_or_none(start, end))
    elif start is None and end is None:
        indices = sample_frame_indices(info.num_frames, info.fps, **kwargs)
        duration = info.num_frames / info.fps
        record["num_video_frames"] = info.num_frames
    elif clip_rule == "training":
        clip_start = max(0.0, float(start or 0.0))
        clip_end = float(end) if end is not None else info.duration
        indices, duration = training_clip_indices(
            info.num_frames,
            info.fps,
            clip_start,
            clip_end,
            sample=sample,
            min_frames=min_frames,
            max_frames=max_frames,
            local_num_frames=local_num_frames,
        )
        record.update(num_video_frames=info.num_frames, clip=[clip_start, clip_end], clip_rule="training")
    else:
        window = clip_window(info.duration, info.fps, start, end)
        indices = [
            i + window.start_index for i in sample_frame_indices(window.num_frames, info.fps, **kwargs)
        ]
        duration = window.duration
        record.update(
            num_video_frames=window.num_frames,
            clip=[window.start, window.end],
            start_index=window.start_index,
        )
    if not indices:
        raise ValueError(f"sampling {sample!r} picked no frame from {info.num_frames} frames")
    if min(indices) < 0 or max(indices) >= info.num_frames:
        raise ValueError(f"clip [{start}, {end}] s reaches outside the video ({info.num_frames} frames)")
    timestamps = tuple(i / info.fps for i in indices)
    message = time_message(duration, len(indices), style=time_message_style, timestamps=timestamps)
    return SamplingPlan(
        indices=tuple(indices),
        timestamps=timestamps,
        duration=duration,
        fps=info.fps,
        time_message=message,
        sampling=record,
        info=info,
    )


def _clip_or_none(start: float | None, end: float | None) -> list[float | None] | None:
    return None if start is None and end is None else [start, end]


def _with_fps(info: VideoInfo, fps: float | None) -> VideoInfo:
    if fps is None or fps == info.fps:
        return info
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return replace(info, fps=float(fps), duration=info.num_frames / fps, fps_source="given")


# ---------------------------------------------------------------------------------------------- readers
def open_reader(
    source: Source,
    *,
    fps: float | None = None,
    autorotate: bool = True,
    threads: int = 0,
    deadline: Deadline | None = None,
) -> Reader:
    """The reader for ``source.kind``; its ``info`` carries ``fps`` when one was given."""
    reader = _guarded(source, lambda: _make_reader(source, fps, autorotate, threads, deadline))
    if fps is not None:
        reader.info = _with_fps(reader.info, fps)
        reader.fps = reader.info.fps
    return reader


def _make_reader(
    source: Source, fps: float | None, autorotate: bool, threads: int, deadline: Deadline | None
) -> Reader:
    if source.kind == "video":
        return decode.PyAVReader(source, threads=threads, deadline=deadline, autorotate=autorotate)
    if source.kind == "image_dir":
        return ImageDirReader(source, autorotate=autorotate, deadline=deadline)
    if source.kind == "gif":
        return GifReader(source, deadline=deadline)
    if source.kind == "image":
        return ImageReader(source, autorotate=autorotate, deadline=deadline)
    if source.kind == "image_list":
        return ImageListReader(source, fps=fps or 1.0, autorotate=autorotate, deadline=deadline)
    return FramesReader(source, fps=fps or 1.0, deadline=deadline)


def _guarded(source: Source, action: Any) -> Any:
    """Run ``action``; FFmpeg / OS / sampling failures become a one-line VideoDecodeError naming the source."""
    try:
        return action()
    except VideoDecodeError:
        raise
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(
            source.name, f"decoding failed ({one_line(getattr(exc, 'strerror', exc))})"
        ) from None
    except (OSError, ValueError, MemoryError) as exc:
        raise VideoDecodeError(source.name, one_line(exc)) from None


# ------------------------------------------------------------------------------------------- frame stream
def resize_frame(rgb: np.ndarray, size: int | None) -> np.ndarray:
    """The model's resize (REFERENCE §3.1): PIL bicubic to exactly ``size``×``size``; unchanged when None."""
    if size is None:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BICUBIC))


class FrameStream:
    """Frames of a plan in plan order (padding repeats frames), decoded lazily; owns the reader and source."""

    def __init__(
        self,
        source: Any,
        settings: dict[str, Any],
        *,
        size: int | None,
        fps: float | None,
        autorotate: bool,
        allow_url: bool,
        threads: int,
        timeout_s: float | None,
    ) -> None:
        if size is not None and int(size) <= 0:
            raise ValueError(f"size must be a positive int, got {size}")
        self.size = None if size is None else int(size)
        self.source = resolve_source(source, allow_url=allow_url)
        self.reader: Reader = None
        try:
            self.reader = open_reader(
                self.source,
                fps=fps,
                autorotate=autorotate,
                threads=threads,
                deadline=Deadline(self.source.name, timeout_s),
            )
            self.plan = _guarded(self.source, lambda: plan(self.reader.info, **settings))
        except BaseException:
            self.close()
            raise
        self.plan.sampling.update(size=self.size, autorotate=autorotate)
        self._shape: tuple[int, ...] | None = None

    def frames(self) -> Iterator[DecodedFrame]:
        """One ``DecodedFrame`` (resized) per plan entry, in plan order; padding repeats the same frame."""
        indices = list(self.plan.indices)
        if any(b < a for a, b in zip(indices, indices[1:], strict=False)):
            yield from self._frames_unordered(indices)
            return
        decoded = _guarded_iter(self.source, self.reader.read(sorted(set(indices))))
        current: DecodedFrame | None = None
        for index in indices:
            while current is None or current.index != index:
                item = next(decoded, None)
                if item is None:
                    raise VideoDecodeError(self.source.name, f"reader stopped before frame {index}")
                current = item._replace(rgb=self._fit(item.rgb))
            yield current

    def _frames_unordered(self, indices: list[int]) -> Iterator[DecodedFrame]:
        decoded = _guarded_iter(self.source, self.reader.read(sorted(set(indices))))
        cache = {item.index: item._replace(rgb=self._fit(item.rgb)) for item in decoded}
        for index in indices:
            yield cache[index]

    def _fit(self, rgb: np.ndarray) -> np.ndarray:
        """Resize to ``size``; without one, frames of a different size are resized to the first frame's size."""
        out = resize_frame(rgb, self.size)
        if self._shape is None:
            self._shape = out.shape
        elif out.shape != self._shape:
            self.reader.problems.add(
                f"frame size changed to {out.shape[1]}x{out.shape[0]}; resized to the first size"
            )
            out = np.asarray(
                Image.fromarray(out).resize((self._shape[1], self._shape[0]), Image.Resampling.BICUBIC)
            )
        return out

    @property
    def problems(self) -> decode.Problems:
        return self.reader.problems

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        self.source.close()


def _guarded_iter(source: Source, frames: Iterator[Any]) -> Iterator[Any]:
    """``frames`` with every failure turned into a VideoDecodeError naming the source."""
    while (item := _guarded(source, lambda: next(frames, None))) is not None:
        yield item


# ---------------------------------------------------------------------------------------------- loading
def load_video(
    source: Any,
    max_frames: int = DEFAULT_MAX_FRAMES,
    *,
    min_frames: int = DEFAULT_MIN_FRAMES,
    local_num_frames: int = DEFAULT_LOCAL_NUM_FRAMES,
    sample: str = "dynamic_fps1",
    start: float | None = None,
    end: float | None = None,
    size: int | None = None,
    allow_url: bool = False,
    seed: int | None = None,
    time_message_style: str | None = "short",
    num_frames: int | None = None,
    fix_start: int | None = None,
    fps: float | None = None,
    autorotate: bool = True,
    threads: int = 0,
    timeout_s: float | None = None,
    clip_rule: str = "inference",
) -> LoadedVideo:
    """Sample and decode frames the way the original inference loader does (REFERENCE §4.3), in bounded memory.

    ``source``: path, URL (only with ``allow_url=True``), bytes, file object, folder of frame images, image,
    GIF, or frames (array ``[T,H,W,3]`` / list, used as given at ``fps``, default 1). ``size``: resize every
    frame right after decoding to ``size``×``size`` (PIL bicubic, the model's own resize). ``start``/``end``:
    a clip window in seconds. ``autorotate``: apply display rotation (the original's decord reader did not).
    ``timeout_s``: give up on a file after that many seconds. Raises VideoDecodeError (one line) on failure.
    """
    stream = FrameStream(
        source,
        _settings(
            max_frames=max_frames,
            min_frames=min_frames,
            local_num_frames=local_num_frames,
            sample=sample,
            num_frames=num_frames,
            fix_start=fix_start,
            start=start,
            end=end,
            seed=seed,
            time_message_style=time_message_style,
            clip_rule=clip_rule,
        ),
        size=size,
        fps=fps,
        autorotate=autorotate,
        allow_url=allow_url,
        threads=threads,
        timeout_s=timeout_s,
    )
    try:
        frames: np.ndarray | None = None
        times: list[float] = []
        sources: list[int] = []
        for i, item in enumerate(stream.frames()):
            if frames is None:
                frames = np.empty((stream.plan.num_frames, *item.rgb.shape), dtype=np.uint8)
            frames[i] = item.rgb
            times.append(item.seconds)
            sources.append(item.source_index)
        assert frames is not None
        plan_ = stream.plan
        return LoadedVideo(
            frames=frames,
            indices=list(plan_.indices),
            timestamps=list(plan_.timestamps),
            duration=plan_.duration,
            fps=plan_.fps,
            time_message=plan_.time_message,
            sampling=plan_.sampling,
            info=plan_.info,
            frame_times=times,
            source_indices=sources,
            warnings=stream.problems.summary(),
            skipped_packets=stream.problems.skipped_packets,
            stats=stream.reader.stats.as_dict(),
        )
    finally:
        stream.close()


def _settings(**settings: Any) -> dict[str, Any]:
    """The keyword arguments of ``plan`` (sampling settings), in one dict."""
    return settings


# -------------------------------------------------------------------------------------------- streaming
class ClipStream(Iterator[Clip]):
    """Iterator of ``Clip`` s; ``plan`` is known before the first clip is decoded.

    Holds only the clip being filled plus decoder state. ``warnings`` / ``skipped_packets`` / ``stats`` grow
    while iterating. Closes the source when exhausted (or on ``close()`` / leaving a ``with`` block).
    """

    def __init__(self, stream: FrameStream, clip_len: int) -> None:
        if clip_len <= 0:
            stream.close()
            raise ValueError(f"clip_len must be positive, got {clip_len}")
        self._stream = stream
        self.plan = stream.plan
        self.clip_len = clip_len
        self._clips = self._generate()
        self._closed = False

    @property
    def num_clips(self) -> int:
        return -(-self.plan.num_frames // self.clip_len)

    @property
    def warnings(self) -> list[str]:
        return self._stream.problems.summary()

    @property
    def skipped_packets(self) -> int:
        return self._stream.problems.skipped_packets

    @property
    def stats(self) -> dict[str, Any]:
        return self._stream.reader.stats.as_dict()

    def _generate(self) -> Iterator[Clip]:
        batch: list[DecodedFrame] = []
        position = 0
        for item in self._stream.frames():
            batch.append(item)
            if len(batch) == self.clip_len:
                yield self._clip(batch, position)
                batch, position = [], position + 1
        if batch:
            yield self._clip(batch, position)

    def _clip(self, batch: list[DecodedFrame], position: int) -> Clip:
        start = position * self.clip_len
        timestamps = list(self.plan.timestamps[start : start + len(batch)])
        padded = self.clip_len - len(batch)
        batch = batch + [batch[-1]] * padded
        timestamps += [timestamps[-1]] * padded
        return Clip(
            frames=np.stack([item.rgb for item in batch]),
            indices=[item.index for item in batch],
            timestamps=timestamps,
            frame_times=[item.seconds for item in batch],
            position=position,
            padded=padded,
            source_indices=[item.source_index for item in batch],
        )

    def __iter__(self) -> ClipStream:
        return self

    def __next__(self) -> Clip:
        if self._closed:
            raise StopIteration
        try:
            return next(self._clips)
        except StopIteration:
            self.close()
            raise
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._stream.close()

    def __enter__(self) -> ClipStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_clips(
    source: Any,
    max_frames: int = DEFAULT_MAX_FRAMES,
    *,
    clip_len: int = 4,
    size: int | None = None,
    min_frames: int = DEFAULT_MIN_FRAMES,
    local_num_frames: int = DEFAULT_LOCAL_NUM_FRAMES,
    sample: str = "dynamic_fps1",
    start: float | None = None,
    end: float | None = None,
    allow_url: bool = False,
    seed: int | None = None,
    time_message_style: str | None = "short",
    num_frames: int | None = None,
    fix_start: int | None = None,
    fps: float | None = None,
    autorotate: bool = True,
    threads: int = 0,
    timeout_s: float | None = None,
) -> ClipStream:
    """Stream the frames ``load_video`` would return as ``clip_len``-frame clips while decoding continues.

    The source is opened and indexed now (errors raise here); ``.plan`` tells the frame count and time message
    before decoding. The last clip repeats its last frame when the count is not a multiple of ``clip_len``.
    """
    stream = FrameStream(
        source,
        _settings(
            max_frames=max_frames,
            min_frames=min_frames,
            local_num_frames=local_num_frames,
            sample=sample,
            num_frames=num_frames,
            fix_start=fix_start,
            start=start,
            end=end,
            seed=seed,
            time_message_style=time_message_style,
        ),
        size=size,
        fps=fps,
        autorotate=autorotate,
        allow_url=allow_url,
        threads=threads,
        timeout_s=timeout_s,
    )
    return ClipStream(stream, clip_len)
