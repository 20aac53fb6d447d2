"""Plain data records of the video layer: what a source is (`VideoInfo`), what will be read (`SamplingPlan`),
and what was read (`LoadedVideo`, one `Clip` at a time when streaming).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np


class DecodedFrame(NamedTuple):
    """One frame delivered by a reader for a wanted frame number."""

    index: int  # the wanted (planned) frame number
    source_index: int  # the frame actually delivered: differs only when ``index`` could not be decoded
    rgb: np.ndarray  # uint8 [H, W, 3]
    seconds: float  # presentation time of the delivered frame, seconds from the first frame


@dataclass(frozen=True)
class VideoInfo:
    """Metadata of a source, with the fallbacks applied (see ``probe_video``).

    ``num_frames`` / ``fps`` / ``duration`` follow the original decord reader: frame count, average frame rate,
    and ``num_frames / fps``. ``width`` / ``height`` are the stored (coded) size; ``rotation`` is the display
    rotation in degrees counter-clockwise (0, 90, 180 or 270) that ``load_video`` applies by default.
    """

    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    codec: str
    rotation: int = 0
    kind: str = "video"  # "video" | "image_dir" | "gif" | "image" | "frames"
    source: str = ""
    pix_fmt: str | None = None
    container_duration: float | None = None  # seconds, from the header (None when absent)
    num_frames_source: str = "metadata"  # "metadata" | "counted" | "duration" | "files" | "given"
    fps_source: str = "metadata"  # "metadata" | "timestamps" | "duration" | "guessed" | "assumed" | "fixed"
    keyframes: int | None = None  # number of keyframes, when the packets were indexed
    has_audio: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) of frames after the display rotation."""
        return (self.height, self.width) if self.rotation % 180 else (self.width, self.height)


@dataclass(frozen=True)
class SamplingPlan:
    """Which frames will be read, known before any decoding (for a progress bar or a cache key)."""

    indices: tuple[int, ...]  # source frame numbers, padding included (len = number of frames the model sees)
    timestamps: tuple[float, ...]  # index / fps, seconds (the original's notion of time)
    duration: float  # seconds covered: the clip's duration when a window was given
    fps: float
    time_message: str
    sampling: dict[str, Any]  # the settings that produced `indices` (part of a cache key)
    info: VideoInfo

    @property
    def num_frames(self) -> int:
        return len(self.indices)


@dataclass
class Clip:
    """``clip_len`` consecutive sampled frames, yielded by ``iter_clips`` while decoding continues."""

    frames: np.ndarray  # uint8 [clip_len, H, W, 3]
    indices: list[int]  # source frame numbers
    timestamps: list[float]  # index / fps, seconds
    frame_times: list[float]  # presentation times of the decoded frames, seconds from the first frame
    position: int  # 0-based clip number
    padded: int = 0  # trailing frames that repeat the last sampled frame
    source_indices: list[int] = field(default_factory=list)  # frames actually delivered (see LoadedVideo)


@dataclass
class LoadedVideo:
    """Frames sampled from a source, plus everything needed to describe them to the model."""

    frames: np.ndarray  # uint8 [T, H, W, 3], RGB
    indices: list[int]  # source frame numbers (padding included)
    timestamps: list[float]  # index / fps, seconds
    duration: float  # seconds (the clip's duration when a window was given)
    fps: float
    time_message: str  # REFERENCE §4.3 (style "short") or §4.4 (style "timestamps")
    sampling: dict[str, Any]
    info: VideoInfo
    frame_times: list[float] = field(default_factory=list)  # presentation times of the decoded frames
    # frame numbers actually delivered: equal to `indices` except where a frame could not be decoded and a
    # neighbour stands in for it (then listed in `warnings`)
    source_indices: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # decode problems that were worked around
    skipped_packets: int = 0  # packets the decoder rejected (corrupt data), skipped
    stats: dict[str, Any] = field(default_factory=dict)  # seeks, decoded frames, packets read, mode

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])
