"""PyAV decoding: metadata with fallbacks, an exact frame index, and a reader that seeks or decodes sequentially.

How a frame is identified: one demux pass (packets only, nothing decoded, nothing kept but timestamps) lists
every frame's presentation timestamp and every keyframe. Frame number ``i`` is the ``i``-th timestamp in
presentation order, which is the ``i``-th frame a plain sequential decode returns, also with variable frame
rate and B-frames (tested). Decoded frames are matched back to their number by timestamp, so the number
returned with each frame is known, not estimated.

How frames are read (``PyAVReader.read``): for every wanted frame the reader compares the cost of decoding on
from where it is with the cost of seeking to the last keyframe at or before the frame (by presentation time).
Sparse picks therefore seek, dense picks decode straight through, and frames in between that are not wanted
are not converted. Packets of non-reference frames that are not wanted are not even decoded
(``skip_frame=NONREF``), and when a seek follows a wanted frame the decoder is drained right after that
frame's packet instead of being fed more. Frames are converted to RGB (and rotated) right after decoding;
resizing is the caller's job, one frame at a time.

Files whose packets carry no usable timestamps fall back to counting frames in a sequential decode.
"""

from __future__ import annotations

import bisect
from array import array
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np

from .deadline import Deadline
from .errors import VideoDecodeError, one_line
from .sources import Source
from .types import DecodedFrame, VideoInfo

MAX_SANE_FPS = 1000.0
# Decoding this many frames costs about as much as one seek (flushing the decoder, re-reading a keyframe).
SEEK_COST_FRAMES = 8
# After a seek lands past the wanted frame, retry from this many earlier keyframes before starting over.
MAX_SEEK_RETRIES = 2
# Seeks that land far before the requested keyframe this many times: seeking is useless here, stop seeking.
MAX_IMPRECISE_SEEKS = 3
# Frames whose timestamp is not in the index before we stop trusting the index and count frames instead.
MAX_UNMATCHED_FRAMES = 16
MAX_WARNINGS = 20
_CHECK_EVERY_PACKETS = 2048
URL_TIMEOUT_S = 30.0


@dataclass
class ReadStats:
    """What a read cost; reported in ``LoadedVideo.stats`` (and used by tests and the benchmark)."""

    mode: str = "seek"  # "seek" (exact index, may seek) | "sequential" (exact index, never seeks) | "count"
    seeks: int = 0
    packets_read: int = 0
    frames_decoded: int = 0
    frames_converted: int = 0
    index_packets: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Problems:
    """Decode problems that were worked around: counted, and the first few described."""

    skipped_packets: int = 0
    messages: list[str] = field(default_factory=list)
    _dropped: int = 0

    def add(self, message: str) -> None:
        if len(self.messages) < MAX_WARNINGS:
            self.messages.append(one_line(message))
        else:
            self._dropped += 1

    def summary(self) -> list[str]:
        extra = [f"... and {self._dropped} more problems"] if self._dropped else []
        return self.messages + extra


# ------------------------------------------------------------------------------------------------- opening
def open_container(source: Source) -> av.container.InputContainer:
    """Open a source with PyAV; every failure becomes a one-line VideoDecodeError naming the source."""
    source.rewind()
    target: Any = source.fileobj if source.fileobj is not None else source.path
    options: dict[str, Any] = {"metadata_errors": "ignore"}
    if source.is_url:
        options["timeout"] = (URL_TIMEOUT_S, URL_TIMEOUT_S)
    try:
        return av.open(target, mode="r", **options)
    except av.error.FFmpegError as exc:
        raise VideoDecodeError(source.name, f"cannot open as a video ({_ffmpeg_reason(exc)})") from None
    except (OSError, ValueError) as exc:
        raise VideoDecodeError(source.name, f"cannot open ({exc})") from None


def video_stream(container: av.container.InputContainer, name: str) -> av.video.stream.VideoStream:
    """The first real video stream (cover art is not a video); other streams are set to be discarded."""
    candidates = [
        s for s in container.streams.video if not (s.disposition & av.stream.Disposition.attached_pic)
    ]
    if not candidates:
        what = "only cover art" if container.streams.video else _stream_kinds(container)
        raise VideoDecodeError(name, f"no video stream ({what})")
    stream = candidates[0]
    if stream.codec_context is None or not stream.codec_context.name:
        raise VideoDecodeError(name, "video stream uses a codec FFmpeg cannot decode")
    for other in container.streams:
        if other.index != stream.index:
            other.discard = av.stream.Discard.all
    return stream


def configure_threads(stream: av.video.stream.VideoStream, threads: int, thread_type: str = "AUTO") -> None:
    """Let FFmpeg decode with threads (0 = one per CPU). ``AUTO`` = frame + slice threads: measured faster than
    slice threads alone also for the seek path on 2 cores, despite the frame-thread pipeline delay per seek."""
    codec = stream.codec_context
    codec.thread_type = thread_type
    codec.thread_count = max(0, int(threads))


def _stream_kinds(container: av.container.InputContainer) -> str:
    kinds = sorted({s.type for s in container.streams})
    return (
        "audio-only"
        if kinds == ["audio"]
        else ("streams: " + ", ".join(kinds) if kinds else "no streams at all")
    )


def _ffmpeg_reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return one_line(text, limit=160)


# -------------------------------------------------------------------------------------------- frame index
@dataclass
class FrameIndex:
    """Presentation timestamps of every frame (sorted) and where the keyframes are, from one demux pass."""

    pts: np.ndarray  # int64, sorted; frame i has timestamp pts[i] (stream time base)
    key_positions: list[int]  # frame numbers of keyframes, sorted
    key_seek_ts: list[int]  # timestamp to seek to for each keyframe (its pts)
    time_base: Fraction
    exact: bool  # timestamps present and unique: frames can be identified by timestamp
    num_packets: int
    demux_error: str | None = None

    @property
    def num_frames(self) -> int:
        return self.num_packets

    def position_of(self, timestamp: int) -> int | None:
        i = int(np.searchsorted(self.pts, timestamp))
        return i if i < len(self.pts) and int(self.pts[i]) == timestamp else None

    def keyframe_before(self, frame: int) -> int:
        """Index into ``key_positions`` of the last keyframe at or before ``frame`` (-1: none)."""
        return bisect.bisect_right(self.key_positions, frame) - 1

    def seconds(self, position: int) -> float:
        return float((int(self.pts[position]) - int(self.pts[0])) * self.time_base)


def build_frame_index(container: av.container.InputContainer, stream: Any, deadline: Deadline) -> FrameIndex:
    """Demux every packet of ``stream`` once (no decoding) and index frames by presentation timestamp."""
    pts_list = array("q")
    keys: list[int] = []
    missing = False
    demux_error = None
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:
                continue
            pts = packet.pts
            if pts is None:
                missing = True
                pts = packet.dts if packet.dts is not None else 0
            pts_list.append(pts)
            if packet.is_keyframe:
                keys.append(count)
            count += 1
            if count % _CHECK_EVERY_PACKETS == 0:
                deadline.check()
    except av.error.FFmpegError as exc:
        demux_error = (
            f"container damaged after {count} frames ({_ffmpeg_reason(exc)}); using the frames before it"
        )
    pts = np.frombuffer(pts_list, dtype=np.int64) if count else np.zeros(0, np.int64)
    order = np.argsort(pts, kind="stable")
    sorted_pts = pts[order]
    exact = not missing and count > 0 and bool(np.all(np.diff(sorted_pts) > 0))
    key_positions, key_seek = _keyframes(keys, pts, sorted_pts) if exact else ([], [])
    return FrameIndex(
        pts=sorted_pts,
        key_positions=key_positions,
        key_seek_ts=key_seek,
        time_base=Fraction(stream.time_base) if stream.time_base else Fraction(1, 1),
        exact=exact and bool(key_positions),
        num_packets=count,
        demux_error=demux_error,
    )


def _keyframes(keys: list[int], pts: np.ndarray, sorted_pts: np.ndarray) -> tuple[list[int], list[int]]:
    """Frame numbers of the keyframe packets and the timestamps to seek to for them (their pts: FFmpeg's
    demuxers, mov included, seek on presentation time; seeking to the dts can land one keyframe early)."""
    key_pts = np.sort(pts[keys]) if keys else np.zeros(0, np.int64)
    positions = np.searchsorted(sorted_pts, key_pts)
    return [int(p) for p in positions], [int(t) for t in key_pts]


# ------------------------------------------------------------------------------------------ rate and count
def stream_seconds(stream: Any) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


def container_seconds(container: av.container.InputContainer) -> float | None:
    return container.duration / av.time_base if container.duration and container.duration > 0 else None


def _valid_rate(rate: Any) -> float | None:
    try:
        value = float(rate) if rate is not None else None
    except (TypeError, ZeroDivisionError, ValueError):
        return None
    return value if value is not None and 0 < value <= MAX_SANE_FPS else None


def frame_rate(
    stream: Any, container: Any, num_frames: int, index: FrameIndex | None, *, av_reader: bool = False
) -> tuple[float, str]:
    """Average frame rate and where it came from: header, timestamps, duration, guess, or an assumed 1 fps.

    ``av_reader`` reproduces the original's PyAV reader (used for ``.avi``): frames / stream duration.
    """
    duration = stream_seconds(stream) or container_seconds(container)
    if av_reader and duration and num_frames:
        return num_frames / duration, "duration"
    rate = _valid_rate(stream.average_rate)
    if rate:
        return rate, "metadata"
    if index is not None and index.exact and len(index.pts) >= 2:
        span = index.seconds(len(index.pts) - 1)
        if span > 0:
            return (len(index.pts) - 1) / span, "timestamps"
    if duration and num_frames:
        rate = _valid_rate(num_frames / duration)
        if rate:
            return rate, "duration"
    rate = _valid_rate(stream.guessed_rate) or _valid_rate(stream.base_rate)
    if rate:
        return rate, "guessed"
    return 1.0, "assumed"


def metadata_frame_count(stream: Any, container: Any, fps: float, fps_source: str) -> tuple[int, str]:
    """Frame count from the header, else from duration × rate (0 when neither is known)."""
    if stream.frames and stream.frames > 0:
        return int(stream.frames), "metadata"
    duration = stream_seconds(stream) or container_seconds(container)
    if duration and fps_source in ("metadata", "guessed"):
        return int(round(duration * fps)), "duration"
    return 0, "unknown"


# ---------------------------------------------------------------------------------------------- converting
def frame_to_rgb(frame: av.VideoFrame, autorotate: bool = True) -> np.ndarray:
    """uint8 ``[H, W, 3]`` RGB of a decoded frame, turned upright by its display matrix when ``autorotate``."""
    rgb = frame.to_ndarray(format="rgb24")
    if autorotate:
        quarter_turns = _quarter_turns(frame)
        if quarter_turns:
            rgb = np.ascontiguousarray(np.rot90(rgb, quarter_turns))
    return rgb


def _quarter_turns(frame: av.VideoFrame) -> int:
    try:
        degrees = frame.rotation
    except (AttributeError, ValueError):
        return 0
    return int(round((degrees or 0) / 90)) % 4


# ---------------------------------------------------------------------------------------------- decoding
class _Decoder:
    """Packets from the container's current position in, decoded frames out (one at a time)."""

    def __init__(self, container: Any, stream: Any, problems: Problems, stats: ReadStats, deadline: Deadline):
        self.container, self.stream = container, stream
        self.codec = stream.codec_context
        self.problems, self.stats, self.deadline = problems, stats, deadline
        self.wanted_pts: set[int] = set()  # packets to decode fully; others may skip non-reference frames
        self.skip_nonref = False
        # After sending the packet with this pts, drain the decoder instead of feeding more packets: the frame
        # comes out at once (no reorder / frame-thread delay), and nothing after it is decoded in vain.
        # Only set when the next step is a seek anyway (a drained decoder needs a seek to go on).
        self.drain_after_pts: int | None = None
        self._packets = container.demux(stream)
        self._pending: deque[av.VideoFrame] = deque()
        self.eof = False
        self.drained = False

    def restart(self) -> None:
        """Call after a seek (which flushed the decoder): read packets from the new position."""
        self._packets = self.container.demux(self.stream)
        self._pending.clear()
        self.eof = self.drained = False

    def next_frame(self) -> av.VideoFrame | None:
        """The next decoded frame; None at the end of the stream or once a drain has been emptied."""
        while not self._pending:
            if self.eof or self.drained:
                return None
            self._feed_one()
        return self._pending.popleft()

    def peek(self) -> av.VideoFrame | None:
        frame = self.next_frame()
        if frame is not None:
            self._pending.appendleft(frame)
        return frame

    def _feed_one(self) -> None:
        try:
            packet = next(self._packets)
        except StopIteration:
            packet = None
        except av.error.FFmpegError as exc:
            self.problems.add(f"demuxing stopped early ({_ffmpeg_reason(exc)})")
            packet = None
        if packet is None:
            self._pending.extend(self._decode(None))
            self.eof = True
            return
        if packet.size == 0:
            return
        self.stats.packets_read += 1
        if self.stats.packets_read % _CHECK_EVERY_PACKETS == 0:
            self.deadline.check()
        if self.skip_nonref:
            self.codec.skip_frame = "DEFAULT" if packet.pts in self.wanted_pts else "NONREF"
        self._pending.extend(self._decode(packet))
        if self.drain_after_pts is not None and packet.pts == self.drain_after_pts:
            self._pending.extend(self._decode(None))
            self.drained = True

    def _decode(self, packet: av.Packet | None) -> list[av.VideoFrame]:
        try:
            frames = self.codec.decode(packet)
        except av.error.EOFError:
            return []
        except av.error.FFmpegError as exc:
            self.problems.skipped_packets += 1
            where = f"packet at pts {packet.pts}" if packet is not None else "end of stream"
            self.problems.add(f"skipped corrupt {where} ({_ffmpeg_reason(exc)})")
            return []
        self.stats.frames_decoded += len(frames)
        for frame in frames:
            if frame.is_corrupt:
                self.problems.add(f"frame at pts {frame.pts} decoded with errors")
        return frames


class _IndexMismatch(Exception):
    """Decoded timestamps do not match the packet index: fall back to counting frames."""


class PyAVReader:
    """Reads chosen frames of one video with PyAV. ``info`` is known after construction; ``read`` streams frames."""

    def __init__(
        self,
        source: Source,
        *,
        threads: int = 0,
        deadline: Deadline | None = None,
        autorotate: bool = True,
        allow_seek: bool = True,
        skip_nonref: bool = True,
    ) -> None:
        self.source = source
        self.name = source.name
        self.threads = threads
        self.deadline = deadline or Deadline(source.name, None)
        self.autorotate = autorotate
        self.skip_nonref = skip_nonref
        self.problems = Problems()
        self.stats = ReadStats()
        self._container: Any = None
        self._wanted_pts: set[int] = set()
        self._skip_active = False
        self._seek_key = -1
        try:
            self._open_and_index(allow_seek)
        except BaseException:
            self.close()
            raise

    # -------------------------------------------------------------------------------- setup
    def _open_and_index(self, allow_seek: bool) -> None:
        container = open_container(self.source)
        try:
            stream = video_stream(container, self.name)
            if self.source.is_url and not container_seconds(container):
                raise VideoDecodeError(self.name, "live streams (no duration) are not supported")
            self.index = build_frame_index(container, stream, self.deadline)
            meta = _StreamMeta.read(container, stream)
        finally:
            container.close()
        if self.index.demux_error:
            self.problems.add(self.index.demux_error)
        if self.index.num_frames == 0:
            raise VideoDecodeError(self.name, "the video stream holds no frames")
        self.stats.index_packets = self.index.num_packets
        self.stats.mode = (
            "seek" if (self.index.exact and allow_seek) else ("sequential" if self.index.exact else "count")
        )
        self._start()
        first = self._decoder.peek()
        if first is None:
            raise VideoDecodeError(self.name, f"no frame could be decoded ({self._first_problem()})")
        self.info = self._make_info(meta, first)

    def _start(self) -> None:
        """(Re)open the container at the start of the stream with a fresh decoder."""
        if self._container is not None:
            self._container.close()
        self._container = open_container(self.source)
        self._stream = video_stream(self._container, self.name)
        configure_threads(self._stream, self.threads)
        self._decoder = _Decoder(self._container, self._stream, self.problems, self.stats, self.deadline)
        self._decoder.wanted_pts = self._wanted_pts
        self._decoder.skip_nonref = self._skip_active
        self._pos = -1  # frame number of the last frame taken from the decoder
        self._ordinal = -1

    def _make_info(self, meta: _StreamMeta, first: av.VideoFrame) -> VideoInfo:
        count = self.index.num_frames
        av_reader = (self.source.path or "").lower().endswith(".avi")
        fps, fps_source = frame_rate(meta.stream, meta.container, count, self.index, av_reader=av_reader)
        warnings = []
        if meta.frames and meta.frames != count:
            warnings.append(f"header says {meta.frames} frames, the file holds {count}; using {count}")
        if fps_source not in ("metadata", "duration") or (fps_source == "duration" and not av_reader):
            warnings.append(
                f"frame rate missing or implausible in the header; using {fps:.3f} fps ({fps_source})"
            )
        for w in warnings:
            self.problems.add(w)
        return VideoInfo(
            num_frames=count,
            fps=fps,
            duration=count / fps,
            width=first.width,
            height=first.height,
            codec=meta.codec,
            rotation=_quarter_turns(first) * 90,
            kind="video",
            source=self.name,
            pix_fmt=first.format.name if first.format is not None else meta.pix_fmt,
            container_duration=meta.container_duration,
            num_frames_source="counted",
            fps_source=fps_source,
            keyframes=len(self.index.key_positions) if self.index.exact else None,
            has_audio=meta.has_audio,
            warnings=tuple(warnings),
        )

    def _first_problem(self) -> str:
        return self.problems.messages[0] if self.problems.messages else "decoder returned nothing"

    # -------------------------------------------------------------------------------- reading
    def read(self, wanted: Sequence[int]) -> Iterator[DecodedFrame]:
        """Yield a ``DecodedFrame`` for each of the sorted unique frame numbers ``wanted``, in order.

        A wanted frame that cannot be decoded is replaced by the next decodable one (or the last one at the end
        of the stream) and reported in ``problems``.
        """
        wanted = list(wanted)
        if any(b <= a for a, b in zip(wanted, wanted[1:], strict=False)):
            raise ValueError("wanted frame numbers must be sorted and unique")
        if self.stats.mode != "count":
            try:
                yield from self._read_indexed(wanted)
                return
            except _IndexMismatch:
                self.problems.add("decoded timestamps do not match the packet index; counting frames instead")
                self.stats.mode = "count"
                self._start()
        yield from self._read_counting(wanted)

    def _read_indexed(self, wanted: list[int]) -> Iterator[DecodedFrame]:
        index = self.index
        if wanted and self._pos >= wanted[0] and self.stats.mode != "seek":
            self._start()  # a second read that goes back: start over
        self._wanted_pts = {int(index.pts[t]) for t in wanted}
        self._skip_active = self.skip_nonref
        self._decoder.wanted_pts, self._decoder.skip_nonref = self._wanted_pts, self._skip_active
        unmatched = matched = imprecise = 0
        done = 0
        seeking_for: int | None = None  # wanted frame of the last seek, until its first frame arrives
        retries = 0
        pursued, redo = -1, False  # the target being decoded towards; re-seeking for it after a drain
        last: tuple[av.VideoFrame, int] | None = None
        while done < len(wanted):
            target = wanted[done]
            if target != pursued:
                pursued, redo = target, False
                self._decoder.drain_after_pts = self._drain_point(wanted, done)
            if seeking_for is None and self.stats.mode == "seek":
                key = self._seek_choice(target)
                if key is not None:
                    self._seek_to_key(key)
                    seeking_for, retries = target, 0
            frame = self._decoder.next_frame()
            if frame is None:
                if not self._decoder.drained or redo:
                    break
                # drained, but the target did not come out (or decoding went past it): go back once, no drain
                redo = True
                self._decoder.drain_after_pts = None
                self._seek_to_key(index.keyframe_before(target))
                seeking_for, retries = target, 0
                continue
            position = self._position(frame)
            if position is None:
                unmatched += 1
                if unmatched > MAX_UNMATCHED_FRAMES and matched == 0:
                    raise _IndexMismatch
                continue
            matched += 1
            if seeking_for is not None:
                key = self._seek_key
                if position > seeking_for and key >= 0 and retries < MAX_SEEK_RETRIES:
                    retries += 1  # landed after the wanted frame: go one keyframe further back
                    self._seek_to_key(key - 1)
                    continue
                if key >= 0 and position < index.key_positions[key] - SEEK_COST_FRAMES:
                    imprecise += 1  # landed far before the keyframe
                    if imprecise >= MAX_IMPRECISE_SEEKS:
                        self.stats.mode = "sequential"
                        self.problems.add("seeking is imprecise in this file; decoding sequentially")
                seeking_for = None
            self._pos = position
            last = (frame, position)
            if position < target:
                continue
            yield from self._emit(wanted, done, position, frame)
            while done < len(wanted) and wanted[done] <= position:
                done += 1
        yield from self._emit_tail(wanted[done:], last)

    def _emit(
        self, wanted: list[int], done: int, position: int, frame: av.VideoFrame
    ) -> Iterator[DecodedFrame]:
        rgb = self._convert(frame)
        seconds = self._frame_seconds(frame, position)
        while done < len(wanted) and wanted[done] <= position:
            if wanted[done] < position:
                self.problems.add(f"frame {wanted[done]} could not be decoded; using frame {position}")
            yield DecodedFrame(wanted[done], position, rgb, seconds)
            done += 1

    def _emit_tail(
        self, missing: list[int], last: tuple[av.VideoFrame, int] | None
    ) -> Iterator[DecodedFrame]:
        if not missing:
            return
        if last is None:
            raise VideoDecodeError(self.name, f"no frame could be decoded ({self._first_problem()})")
        frame, position = last
        self.problems.add(
            f"stream ended before frame {missing[0]} ({len(missing)} wanted frames); using last frame {position}"
        )
        rgb = self._convert(frame)
        seconds = self._frame_seconds(frame, position)
        for target in missing:
            yield DecodedFrame(target, position, rgb, seconds)

    def _read_counting(self, wanted: list[int]) -> Iterator[DecodedFrame]:
        """No trustworthy timestamps: decode from the start and number frames by arrival."""
        if wanted and self._ordinal >= wanted[0]:
            self._start()
        self._skip_active = self._decoder.skip_nonref = False
        self._decoder.codec.skip_frame = "DEFAULT"
        done = 0
        last: tuple[av.VideoFrame, int] | None = None
        while done < len(wanted):
            frame = self._decoder.next_frame()
            if frame is None:
                break
            self._ordinal += 1
            position = self._ordinal
            last = (frame, position)
            if position < wanted[done]:
                continue
            yield from self._emit(wanted, done, position, frame)
            while done < len(wanted) and wanted[done] <= position:
                done += 1
        yield from self._emit_tail(wanted[done:], last)

    def _drain_point(self, wanted: list[int], done: int) -> int | None:
        """Timestamp after which to drain while decoding towards ``wanted[done]``: only when what follows is a
        seek (or nothing), so that draining loses nothing."""
        target = wanted[done]
        if done + 1 < len(wanted):
            if self.stats.mode != "seek":
                return None
            following = wanted[done + 1]
            key = self.index.keyframe_before(following)
            key_position = self.index.key_positions[key] if key >= 0 else 0
            if key_position - target - 1 <= SEEK_COST_FRAMES:
                return None
        return int(self.index.pts[target])

    def _seek_choice(self, target: int) -> int | None:
        """Keyframe (index into key_positions) to seek to for ``target``, or None to decode on from here."""
        index = self.index
        key = index.keyframe_before(target)
        key_position = index.key_positions[key] if key >= 0 else 0
        if self._pos >= target:
            return key
        if key_position <= self._pos:
            return None  # the keyframe is behind us: decoding on is never worse
        if key_position - self._pos - 1 > SEEK_COST_FRAMES:
            return key
        return None

    def _seek_to_key(self, key: int) -> None:
        """Seek to keyframe number ``key`` (below 0: reopen at the start of the stream)."""
        self.stats.seeks += 1
        self._seek_key = key
        if key < 0:
            self._start()
            return
        try:
            self._container.seek(int(self.index.key_seek_ts[key]), stream=self._stream, backward=True)
        except av.error.FFmpegError as exc:
            self.problems.add(f"seek failed ({_ffmpeg_reason(exc)}); decoding sequentially")
            self.stats.mode = "sequential"
            self._seek_key = -1
            self._start()
            return
        self._decoder.restart()
        self._pos = -1

    def _position(self, frame: av.VideoFrame) -> int | None:
        timestamp = frame.pts if frame.pts is not None else frame.dts
        return None if timestamp is None else self.index.position_of(int(timestamp))

    def _frame_seconds(self, frame: av.VideoFrame, position: int) -> float:
        if self.stats.mode != "count" and position < len(self.index.pts):
            return self.index.seconds(position)
        return position / self.info.fps

    def _convert(self, frame: av.VideoFrame) -> np.ndarray:
        self.stats.frames_converted += 1
        try:
            return frame_to_rgb(frame, self.autorotate)
        except (av.error.FFmpegError, ValueError) as exc:
            raise VideoDecodeError(self.name, f"cannot convert frame to RGB ({one_line(exc, 160)})") from None

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> PyAVReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _StreamMeta:
    """Header facts captured before the indexing container is closed."""

    stream: Any
    container: Any
    frames: int
    codec: str
    pix_fmt: str | None
    container_duration: float | None
    has_audio: bool

    @classmethod
    def read(cls, container: Any, stream: Any) -> _StreamMeta:
        return cls(
            stream=_RateView.of(stream),
            container=_RateView.of_container(container),
            frames=int(stream.frames or 0),
            codec=stream.codec_context.name,
            pix_fmt=stream.codec_context.pix_fmt,
            container_duration=container_seconds(container),
            has_audio=bool(container.streams.audio),
        )


@dataclass
class _RateView:
    """The timing fields of a stream / container, copied so they outlive the closed container."""

    average_rate: Any = None
    guessed_rate: Any = None
    base_rate: Any = None
    duration: Any = None
    time_base: Any = None
    frames: int = 0

    @classmethod
    def of(cls, stream: Any) -> _RateView:
        return cls(
            average_rate=stream.average_rate,
            guessed_rate=stream.guessed_rate,
            base_rate=stream.base_rate,
            duration=stream.duration,
            time_base=stream.time_base,
            frames=int(stream.frames or 0),
        )

    @classmethod
    def of_container(cls, container: Any) -> _RateView:
        return cls(duration=container.duration)


# ------------------------------------------------------------------------------------------------- probing
def probe(source: Source, *, count_frames: bool = False, deadline: Deadline | None = None) -> VideoInfo:
    """Header facts of a video. Frame count from the header, else duration × rate, else counted packets.

    ``count_frames=True`` always counts (one demux pass): the numbers ``load_video`` will use.
    """
    deadline = deadline or Deadline(source.name, None)
    if count_frames:
        with PyAVReader(source, deadline=deadline) as reader:
            return reader.info
    container = open_container(source)
    try:
        stream = video_stream(container, source.name)
        fps, fps_source = frame_rate(stream, container, int(stream.frames or 0), None)
        count, count_source = metadata_frame_count(stream, container, fps, fps_source)
        index = None
        if not count or fps_source == "assumed":
            index = build_frame_index(container, stream, deadline)
            count, count_source = index.num_frames, "counted"
            fps, fps_source = frame_rate(stream, container, count, index)
        if count <= 0:
            raise VideoDecodeError(source.name, "the video stream holds no frames")
        rotation, width, height = _first_frame_facts(container, stream, index is not None)
        return VideoInfo(
            num_frames=count,
            fps=fps,
            duration=count / fps,
            width=width or stream.width,
            height=height or stream.height,
            codec=stream.codec_context.name,
            rotation=rotation,
            kind="video",
            source=source.name,
            pix_fmt=stream.codec_context.pix_fmt,
            container_duration=container_seconds(container),
            num_frames_source=count_source,
            fps_source=fps_source,
            keyframes=len(index.key_positions) if index is not None and index.exact else None,
            has_audio=bool(container.streams.audio),
        )
    finally:
        container.close()


def _first_frame_facts(container: Any, stream: Any, rewind: bool) -> tuple[int, int, int]:
    """(rotation, width, height) of the first decodable frame; zeros when none decodes within a few packets."""
    try:
        if rewind:
            container.seek(0)
        for n, packet in enumerate(container.demux(stream)):
            for frame in packet.decode():
                return _quarter_turns(frame) * 90, frame.width, frame.height
            if n > 64:
                break
    except av.error.FFmpegError:
        pass
    return 0, 0, 0
