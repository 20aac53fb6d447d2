"""Readers for sources that are not video files: a folder of frame images, a GIF, one image, image files or
frames given in memory. They share the PyAV reader's interface: ``info``, ``read(wanted)``, ``problems``,
``stats``, ``close()``; only the wanted images are decoded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from .deadline import Deadline
from .decode import Problems, ReadStats
from .errors import VideoDecodeError, one_line
from .sampling import image_dir_fps
from .sources import IMAGE_SUFFIXES, Source
from .types import DecodedFrame, VideoInfo

_TRAILING_NUMBER = re.compile(r"(\d+)\.[A-Za-z0-9]+$")


def sorted_frame_files(directory: str) -> list[str]:
    """Image files of a frame folder in frame order: by the number before the extension (``frame_12.jpg``)."""
    names = [n for n in os.listdir(directory) if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES]

    def key(name: str) -> tuple[int, int, str]:
        match = _TRAILING_NUMBER.search(name)
        return (0, int(match.group(1)), name) if match else (1, 0, name)

    return [os.path.join(directory, n) for n in sorted(names, key=key)]


def open_rgb(target: Any, name: str, *, autorotate: bool = True) -> np.ndarray:
    """One image file (path or file object) as uint8 RGB ``[H,W,3]``; EXIF orientation applied if ``autorotate``."""
    try:
        with Image.open(target) as image:
            if autorotate:
                image = ImageOps.exif_transpose(image)
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise VideoDecodeError(name, f"cannot read image ({one_line(exc, 160)})") from None


def as_rgb_frames(frames: Any, name: str) -> list[np.ndarray] | np.ndarray:
    """Frames given in memory as uint8 RGB: an array ``[T,H,W,3|4]`` / ``[H,W,3|4]`` or a list of arrays / images."""
    if isinstance(frames, Image.Image):
        return [np.asarray(frames.convert("RGB"))]
    if isinstance(frames, (list, tuple)):
        return [
            _rgb_array(np.asarray(f.convert("RGB") if isinstance(f, Image.Image) else f), name)
            for f in frames
        ]
    array = np.asarray(frames)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise VideoDecodeError(name, f"frames must be uint8 RGB [T, H, W, 3], got shape {tuple(array.shape)}")
    return _rgb_array(array, name)


def _rgb_array(array: np.ndarray, name: str) -> np.ndarray:
    if array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim not in (3, 4) or array.shape[-1] != 3 or 0 in array.shape:
        raise VideoDecodeError(name, f"frames must be uint8 RGB [T, H, W, 3], got shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 255:
            raise VideoDecodeError(name, f"frames must be uint8 RGB, got dtype {array.dtype}")
        array = array.astype(np.uint8)
    return array


class _ListReader:
    """Shared part of the readers: a fixed list of frames, read one at a time by a subclass hook."""

    kind = "frames"

    def __init__(self, name: str, count: int, fps: float, deadline: Deadline | None) -> None:
        self.name = name
        self.problems = Problems()
        self.stats = ReadStats(mode="files")
        self.deadline = deadline or Deadline(name, None)
        self.count = count
        self.fps = fps

    def _frame(self, position: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _make_info(self, first: np.ndarray, codec: str, count_source: str, fps_source: str) -> VideoInfo:
        return VideoInfo(
            num_frames=self.count,
            fps=self.fps,
            duration=self.count / self.fps,
            width=int(first.shape[1]),
            height=int(first.shape[0]),
            codec=codec,
            kind=self.kind,
            source=self.name,
            pix_fmt="rgb24",
            num_frames_source=count_source,
            fps_source=fps_source,
        )

    def read(self, wanted: Sequence[int]) -> Iterator[DecodedFrame]:
        for position in wanted:
            self.deadline.check()
            rgb = self._frame(int(position))
            self.stats.frames_decoded += 1
            self.stats.frames_converted += 1
            yield DecodedFrame(int(position), int(position), rgb, position / self.fps)

    def close(self) -> None:
        pass

    def __enter__(self) -> _ListReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageDirReader(_ListReader):
    """A folder of frame images (the original ``img`` reader): 1 fps, or 3 fps when the path mentions TVQA."""

    kind = "image_dir"

    def __init__(self, source: Source, *, autorotate: bool = True, deadline: Deadline | None = None) -> None:
        assert source.path is not None
        self.files = sorted_frame_files(source.path)
        if not self.files:
            raise VideoDecodeError(source.name, "folder holds no frame images (.jpg/.jpeg/.png/...)")
        super().__init__(source.name, len(self.files), image_dir_fps(source.path), deadline)
        self.autorotate = autorotate
        self.info = self._make_info(self._frame(0), "images", "files", "fixed")

    def _frame(self, position: int) -> np.ndarray:
        return open_rgb(self.files[position], self.files[position], autorotate=self.autorotate)


class ImageListReader(_ListReader):
    """Image files given as a list: used as given, one frame each, at ``fps`` (default 1)."""

    kind = "frames"

    def __init__(
        self, source: Source, *, fps: float = 1.0, autorotate: bool = True, deadline: Deadline | None = None
    ):
        assert source.image_paths is not None
        self.files = source.image_paths
        super().__init__(source.name, len(self.files), fps, deadline)
        self.autorotate = autorotate
        self.info = self._make_info(self._frame(0), "images", "given", "given")

    def _frame(self, position: int) -> np.ndarray:
        return open_rgb(self.files[position], self.files[position], autorotate=self.autorotate)


class ImageReader(_ListReader):
    """A single image: one frame (T = 1) at 1 fps."""

    kind = "image"

    def __init__(self, source: Source, *, autorotate: bool = True, deadline: Deadline | None = None) -> None:
        super().__init__(source.name, 1, 1.0, deadline)
        if source.frames is not None:
            self._rgb = as_rgb_frames(source.frames, source.name)[0]
        else:
            source.rewind()
            target = source.fileobj if source.fileobj is not None else source.path
            self._rgb = open_rgb(target, source.name, autorotate=autorotate)
        self.info = self._make_info(self._rgb, "image", "given", "fixed")

    def _frame(self, position: int) -> np.ndarray:
        return self._rgb


class FramesReader(_ListReader):
    """Frames given in memory: used as given (no sampling), at ``fps`` (default 1)."""

    kind = "frames"

    def __init__(self, source: Source, *, fps: float = 1.0, deadline: Deadline | None = None) -> None:
        self._frames = as_rgb_frames(source.frames, source.name)
        if len(self._frames) == 0:
            raise VideoDecodeError(source.name, "no frames given")
        super().__init__(source.name, len(self._frames), fps, deadline)
        self.info = self._make_info(self._frames[0], "frames", "given", "given")

    def _frame(self, position: int) -> np.ndarray:
        return np.asarray(self._frames[position])


class GifReader(_ListReader):
    """An animated GIF (the original ``gif`` reader): fixed 1 fps, frames composited by Pillow, RGBA → RGB.

    Pillow returns every frame at the full canvas size, so the original's crop-to-smallest-frame never applies.
    """

    kind = "gif"

    def __init__(self, source: Source, *, deadline: Deadline | None = None) -> None:
        self._source = source
        self._image = self._open()
        count = int(getattr(self._image, "n_frames", 1))
        super().__init__(source.name, count, 1.0, deadline)
        self.info = self._make_info(self._rgb_of(self._image), "gif", "counted", "fixed")

    def _open(self) -> Image.Image:
        self._source.rewind()
        target = self._source.fileobj if self._source.fileobj is not None else self._source.path
        try:
            return Image.open(target)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise VideoDecodeError(self._source.name, f"cannot read GIF ({one_line(exc, 160)})") from None

    @staticmethod
    def _rgb_of(frame: Image.Image) -> np.ndarray:
        return np.asarray(frame.convert("RGBA"))[..., :3].copy()

    def read(self, wanted: Sequence[int]) -> Iterator[DecodedFrame]:
        targets = list(wanted)
        done = 0
        try:
            for position, frame in enumerate(ImageSequence.Iterator(self._image)):
                if done >= len(targets):
                    break
                self.deadline.check()
                self.stats.frames_decoded += 1
                if position < targets[done]:
                    continue
                rgb = self._rgb_of(frame)
                self.stats.frames_converted += 1
                while done < len(targets) and targets[done] == position:
                    yield DecodedFrame(position, position, rgb, position / self.fps)
                    done += 1
        except (OSError, ValueError, EOFError) as exc:
            raise VideoDecodeError(
                self.name, f"GIF frame {position} is damaged ({one_line(exc, 160)})"
            ) from None
        if done < len(targets):
            raise VideoDecodeError(self.name, f"GIF ended before frame {targets[done]}")

    def close(self) -> None:
        self._image.close()
