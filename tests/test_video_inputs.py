"""Every kind of input: paths, bytes, file objects (seekable or not), frame folders (numeric order, the `img`
reader's 1 / 3 fps), frames in memory (used as given), single images, GIFs, and URLs (only when allowed)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_video_synth import number_frame, numbered_video, read_number
from videochat_flash.errors import VideoChatFlashError
from videochat_flash.video import (
    LoadedVideo,
    VideoDecodeError,
    image_dir_indices,
    iter_clips,
    load_video,
    probe_video,
    resize_frame,
    sample_frame_indices,
    time_message,
)


class _Pipe(io.RawIOBase):
    """A non-seekable stream (like stdin or a socket)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


@pytest.fixture(scope="module")
def small_video(tmp_path_factory) -> Path:
    return numbered_video(tmp_path_factory.mktemp("inputs") / "small.mp4", 50, fps=5, gop=10)


def _numbers(loaded: LoadedVideo) -> list[int]:
    return [read_number(f) for f in loaded.frames]


def test_error_type_contract() -> None:
    assert issubclass(VideoDecodeError, VideoChatFlashError) and issubclass(VideoDecodeError, ValueError)


@pytest.mark.parametrize("kind", ["str", "path", "list1", "bytes", "bytearray", "bytesio", "file", "pipe"])
def test_video_sources_give_identical_frames(small_video: Path, kind: str) -> None:
    data = small_video.read_bytes()
    make = {
        "str": lambda: str(small_video),
        "path": lambda: small_video,
        "list1": lambda: [str(small_video)],
        "bytes": lambda: data,
        "bytearray": lambda: bytearray(data),
        "bytesio": lambda: io.BytesIO(data),
        "file": lambda: small_video.open("rb"),
        "pipe": lambda: _Pipe(data),
    }
    source = make[kind]()
    loaded = load_video(source, min_frames=1)
    if hasattr(source, "close"):
        source.close()
    assert loaded.indices == sample_frame_indices(50, 5.0, min_frames=1)
    assert _numbers(loaded) == loaded.indices


def test_urls_need_explicit_permission() -> None:
    for call in (load_video, probe_video, iter_clips):
        with pytest.raises(VideoDecodeError, match="allow_url=True"):
            call("https://example.com/video.mp4")


def _frame_dir(root: Path, name: str, count: int) -> Path:
    folder = root / name
    folder.mkdir()
    for i in range(count):  # 1-based, unpadded numbers: lexicographic order would be wrong
        Image.fromarray(number_frame(i, 32, 32)).save(folder / f"frame_{i + 1}.png")
    (folder / "notes.txt").write_text("not a frame")
    return folder


def test_frame_folder_numeric_order_and_1fps(tmp_path: Path) -> None:
    folder = _frame_dir(tmp_path, "clip", 20)
    loaded = load_video(folder)
    assert loaded.fps == 1.0 and loaded.duration == 20.0 and loaded.info.kind == "image_dir"
    assert loaded.indices == image_dir_indices(20, 1.0)[0]
    assert _numbers(loaded) == loaded.indices  # file k (numeric order) holds number k
    assert loaded.time_message == time_message(20.0, len(loaded.indices))


def test_tvqa_frame_folder_is_3fps(tmp_path: Path) -> None:
    folder = _frame_dir(tmp_path, "TVQA_frames", 30)
    loaded = load_video(folder)
    assert loaded.fps == 3.0 and loaded.duration == pytest.approx(10.0)
    assert loaded.indices == sample_frame_indices(30, 1.0)  # the inner call runs at input_fps = 1
    assert _numbers(loaded) == loaded.indices


def test_frame_folder_with_clip(tmp_path: Path) -> None:
    folder = _frame_dir(tmp_path, "clip", 40)
    loaded = load_video(folder, start=5.0, end=25.0)
    assert loaded.indices == image_dir_indices(40, 1.0, start=5.0, end=25.0)[0]
    assert _numbers(loaded) == loaded.indices and loaded.duration == 20.0


def test_empty_frame_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoDecodeError, match="no frame images"):
        load_video(tmp_path / "empty")


def test_frames_in_memory_are_used_as_given() -> None:
    frames = np.stack([number_frame(i, 32, 32) for i in range(10)])
    loaded = load_video(frames)
    assert np.array_equal(loaded.frames, frames)
    assert loaded.indices == list(range(10)) and loaded.fps == 1.0 and loaded.duration == 10.0
    assert loaded.time_message == time_message(10.0, 10) and loaded.sampling["sample"] == "given"
    at_2fps = load_video(list(frames), fps=2.0, size=16)
    assert at_2fps.duration == 5.0 and at_2fps.timestamps == [i / 2 for i in range(10)]
    assert np.array_equal(at_2fps.frames[3], resize_frame(frames[3], 16))
    rgba = np.concatenate([frames, np.full((10, 32, 32, 1), 255, np.uint8)], axis=-1)
    assert np.array_equal(load_video(rgba).frames, frames)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 8, 8, 3), np.float32) + 0.5,
        np.zeros((4, 8, 8), np.uint8),
        np.zeros((0, 8, 8, 3), np.uint8),
        [],
    ],
    ids=["float", "gray", "empty-array", "empty-list"],
)
def test_bad_frames_are_rejected(bad) -> None:
    with pytest.raises(VideoDecodeError):
        load_video(bad)


def test_single_image_file_and_object(tmp_path: Path) -> None:
    image = Image.fromarray(number_frame(77, 40, 48))
    image.save(tmp_path / "still.png")
    for source in (tmp_path / "still.png", (tmp_path / "still.png").read_bytes(), image):
        loaded = load_video(source)
        assert loaded.frames.shape == (1, 40, 48, 3) and loaded.indices == [0]
        assert read_number(loaded.frames[0]) == 77


def test_image_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    Image.fromarray(pixels).save(tmp_path / "phone.png", exif=exif)
    loaded = load_video(tmp_path / "phone.png")
    assert loaded.frames.shape == (1, 40, 20, 3)
    assert load_video(tmp_path / "phone.png", autorotate=False).frames.shape == (1, 20, 40, 3)


def _gif(path: Path, count: int) -> Path:
    frames = [Image.fromarray(number_frame(i, 32, 32)) for i in range(count)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return path


def test_gif_is_read_at_1fps(tmp_path: Path) -> None:
    path = _gif(tmp_path / "anim.gif", 12)
    loaded = load_video(path)
    assert loaded.fps == 1.0 and loaded.info.kind == "gif" and loaded.info.num_frames == 12
    assert loaded.indices == sample_frame_indices(12, 1.0)
    assert _numbers(loaded) == loaded.indices
    from_bytes = load_video(path.read_bytes())
    assert np.array_equal(from_bytes.frames, loaded.frames)


def test_given_frames_stream_in_padded_clips() -> None:
    frames = np.stack([number_frame(i, 32, 32) for i in range(10)])
    clips = list(iter_clips(frames, clip_len=4))
    assert [c.padded for c in clips] == [0, 0, 2]
    assert clips[-1].indices == [8, 9, 9, 9]
    assert np.array_equal(clips[-1].frames[3], frames[9])


def test_size_must_be_positive(small_video: Path) -> None:
    with pytest.raises(ValueError):
        load_video(small_video, size=0)
