"""Turn whatever the caller passed (path, URL, bytes, file object, frame folder, image, GIF, frames) into a
`Source`: what kind of reader it needs and how to name it in error messages.

Only cheap checks happen here (existence, size, a few magic bytes); nothing is decoded. A non-seekable file
object is copied to a temporary file in chunks, so that it can be indexed and seeked without holding it in memory.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .errors import VideoDecodeError

URL_PREFIXES = (
    "http://",
    "https://",
    "rtsp://",
    "rtsps://",
    "rtmp://",
    "rtmps://",
    "ftp://",
    "srt://",
    "udp://",
    "tcp://",
)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
GIF_SUFFIX = ".gif"
_MAGIC_SNIFF_BYTES = 16
_SPOOL_CHUNK = 1 << 20


@dataclass
class Source:
    """A classified input. Exactly one of ``path`` / ``fileobj`` / ``frames`` / ``image_paths`` is set."""

    kind: str  # "video" | "image_dir" | "gif" | "image" | "frames" | "image_list"
    name: str  # how error messages name it
    path: str | None = None
    fileobj: BinaryIO | None = None
    frames: Any = None  # array-like [T,H,W,3] / [H,W,3], a list of frames, or a PIL image
    image_paths: list[str] | None = None
    is_url: bool = False
    temp_path: str | None = None  # a spooled copy we own and delete on close

    def rewind(self) -> None:
        """Put a file object back at its start, so it can be opened again."""
        if self.fileobj is not None:
            self.fileobj.seek(0)

    def close(self) -> None:
        if self.temp_path is not None:
            try:
                os.unlink(self.temp_path)
            except OSError:
                pass
            self.temp_path = None


def is_url(value: str) -> bool:
    return value.lower().startswith(URL_PREFIXES)


def resolve_source(source: Any, *, allow_url: bool = False) -> Source:
    """Classify ``source``; raises VideoDecodeError for a missing/empty file or a URL that was not allowed."""
    if isinstance(source, Source):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _from_bytes(bytes(source))
    if isinstance(source, (str, os.PathLike)):
        return _from_path(os.fspath(source), allow_url=allow_url)
    if hasattr(source, "read"):
        return _from_fileobj(source)
    if _is_pil_image(source):
        return Source(kind="image", name="<PIL image>", frames=source)
    if isinstance(source, Sequence) and not isinstance(source, np.ndarray):
        return _from_sequence(source, allow_url=allow_url)
    if hasattr(source, "__array__") or isinstance(source, np.ndarray):
        return Source(kind="frames", name="<frames>", frames=source)
    raise VideoDecodeError(repr(type(source).__name__), "unsupported video source type")


def _from_path(path: str, *, allow_url: bool) -> Source:
    if is_url(path):
        if not allow_url:
            raise VideoDecodeError(path, "URLs are only opened with allow_url=True")
        return Source(kind="video", name=path, path=path, is_url=True)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise VideoDecodeError(path, "no such file or directory") from None
    except OSError as exc:
        raise VideoDecodeError(path, f"cannot access ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        return Source(kind="image_dir", name=path, path=path)
    if not stat.S_ISREG(info.st_mode):
        raise VideoDecodeError(path, "not a regular file (pipe or device)")
    if info.st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    suffix = Path(path).suffix.lower()
    if suffix == GIF_SUFFIX:
        return Source(kind="gif", name=path, path=path)
    if suffix in IMAGE_SUFFIXES:
        return Source(kind="image", name=path, path=path)
    return Source(kind="video", name=path, path=path)


def _from_bytes(data: bytes) -> Source:
    name = f"<{len(data)} bytes>"
    if not data:
        raise VideoDecodeError(name, "empty input (0 bytes)")
    return Source(kind=_sniff_kind(data[:_MAGIC_SNIFF_BYTES]), name=name, fileobj=io.BytesIO(data))


def _from_fileobj(fileobj: BinaryIO) -> Source:
    name = f"<{getattr(fileobj, 'name', None) or type(fileobj).__name__}>"
    if not _seekable(fileobj):
        return _spool(fileobj, name)
    start = fileobj.tell()
    head = fileobj.read(_MAGIC_SNIFF_BYTES)
    fileobj.seek(start)
    if not head:
        raise VideoDecodeError(name, "empty input (0 bytes)")
    if start:
        return _spool(fileobj, name)  # readers rewind to 0; keep the caller's offset semantics via a copy
    return Source(kind=_sniff_kind(head), name=name, fileobj=fileobj)


def _spool(fileobj: BinaryIO, name: str) -> Source:
    """Copy a stream to a temporary file chunk by chunk (bounded memory), and read that instead."""
    handle, temp_path = tempfile.mkstemp(prefix="videochat_flash_", suffix=".bin")
    with os.fdopen(handle, "wb") as out:
        shutil.copyfileobj(fileobj, out, _SPOOL_CHUNK)
        size = out.tell()
    if size == 0:
        os.unlink(temp_path)
        raise VideoDecodeError(name, "empty input (0 bytes)")
    with open(temp_path, "rb") as f:
        kind = _sniff_kind(f.read(_MAGIC_SNIFF_BYTES))
    return Source(kind=kind, name=name, path=temp_path, temp_path=temp_path)


def _from_sequence(items: Sequence[Any], *, allow_url: bool) -> Source:
    if len(items) == 0:
        raise VideoDecodeError("<frames>", "empty list of frames")
    if all(isinstance(item, (str, os.PathLike)) for item in items):
        if len(items) == 1:  # the HF chat API accepts a one-element list holding the path
            return _from_path(os.fspath(items[0]), allow_url=allow_url)
        return Source(
            kind="image_list", name=f"<{len(items)} image files>", image_paths=[os.fspath(i) for i in items]
        )
    return Source(kind="frames", name="<frames>", frames=items)


def _sniff_kind(head: bytes) -> str:
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"BM")) or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    ):
        return "image"
    return "video"


def _seekable(fileobj: BinaryIO) -> bool:
    try:
        return bool(fileobj.seekable()) if hasattr(fileobj, "seekable") else False
    except (OSError, ValueError):
        return False


def _is_pil_image(value: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(value, Image.Image)
