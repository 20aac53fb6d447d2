"""Bad and unusual files: each gives correct frames or a one-line VideoDecodeError naming the file and the reason,
quickly. Frames are checked against a plain sequential decode or the frame numbers drawn into them."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from tests.test_video_synth import full_decode, number_frame, numbered_video, read_number, write_video, x264
from videochat_flash.video import VideoDecodeError, iter_clips, load_video, probe_video
from videochat_flash.video.decode import frame_rate


def _load_error(path: Path, **kwargs) -> str:
    started = time.monotonic()
    with pytest.raises(VideoDecodeError) as caught:
        load_video(path, **kwargs)
    assert time.monotonic() - started < 5.0
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


def _noisy_numbers(count: int, size: int = 64) -> list[np.ndarray]:
    """Numbered frames with noise, so that packets are large (a truncation then cuts through frames)."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(count):
        frame = number_frame(i, size, size).astype(np.int16) + rng.integers(-30, 30, (size, size, 3))
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


# ---------------------------------------------------------------------------------------------- not videos
def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in _load_error(tmp_path / "nope.mp4")


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "empty file" in _load_error(tmp_path / "empty.mp4")
    with pytest.raises(VideoDecodeError, match="empty input"):
        load_video(b"")


def test_text_file_named_mp4(tmp_path: Path) -> None:
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 50)
    assert "cannot open as a video" in _load_error(tmp_path / "notes.mp4")


def test_audio_only_file(tmp_path: Path) -> None:
    path = tmp_path / "speech.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert "no video stream (audio-only)" in _load_error(path)
    with pytest.raises(VideoDecodeError, match="no video stream"):
        probe_video(path)


def test_truncated_file_without_index(tmp_path: Path) -> None:
    path = write_video(tmp_path / "full.mp4", _noisy_numbers(40), fps=5, options=x264(10))
    data = path.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # the moov index sits at the end: lost
    assert "cannot open as a video" in _load_error(tmp_path / "cut.mp4")


def test_truncated_file_keeps_the_frames_that_are_there(tmp_path: Path) -> None:
    frames = _noisy_numbers(40)
    path = tmp_path / "fast.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:  # index first
        stream = container.add_stream("libx264", rate=5, options=x264(10, preset="ultrafast"))
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.6)])
    loaded = load_video(tmp_path / "cut.mp4", min_frames=1, sample="middle", num_frames=64)
    available = loaded.info.num_frames
    assert 5 < available < 40
    assert any("header says 40 frames" in w for w in loaded.warnings)
    assert [read_number(f) for f in loaded.frames[: available - 1]] == list(range(available - 1))


# ------------------------------------------------------------------------------------------ damaged inside
def _corrupt_packets(path: Path, out: Path, which: range) -> Path:
    data = bytearray(path.read_bytes())
    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    rng = np.random.default_rng(1)
    for pos, size in (packets[i] for i in which):
        data[pos + 4 : pos + size] = rng.integers(0, 255, size - 4, dtype=np.uint8).tobytes()
    out.write_bytes(bytes(data))
    return out


def test_corrupt_packets_in_the_middle_are_skipped_counted_reported(tmp_path: Path) -> None:
    frames = (number_frame(i, 32, 32) for i in range(60))
    path = write_video(tmp_path / "intra.mkv", frames, fps=5, codec="mjpeg", pix_fmt="yuvj420p")
    bad = _corrupt_packets(path, tmp_path / "bad.mkv", range(25, 28))
    loaded = load_video(bad, min_frames=1, sample="middle", num_frames=60)
    assert loaded.skipped_packets == 3
    assert sum("skipped corrupt packet" in w for w in loaded.warnings) == 3
    assert any("frame 25 could not be decoded; using frame 28" in w for w in loaded.warnings)
    numbers = [read_number(f) for f in loaded.frames]
    assert numbers == list(range(25)) + [28, 28, 28] + list(range(28, 60))
    assert loaded.source_indices == numbers and loaded.indices == list(range(60))


def test_corrupt_h264_still_decodes_to_the_end(tmp_path: Path) -> None:
    path = write_video(tmp_path / "inter.mp4", _noisy_numbers(60, 32), fps=5, options=x264(10))
    bad = _corrupt_packets(path, tmp_path / "bad.mp4", range(25, 28))
    loaded = load_video(bad, min_frames=1)
    assert loaded.frames.shape[0] == len(loaded.indices) and loaded.skipped_packets >= 1
    assert read_number(loaded.frames[-1]) == loaded.indices[-1]  # the next GOP is intact


# ------------------------------------------------------------------------------------------ unusual shapes
def test_one_by_one_pixel_video(tmp_path: Path) -> None:
    frames = [np.full((1, 1, 3), 10 * i, np.uint8) for i in range(10)]
    path = write_video(tmp_path / "dot.mkv", frames, fps=5, codec="ffv1", pix_fmt="yuv444p")
    loaded = load_video(path, min_frames=1)
    reference = full_decode(path)
    assert loaded.frames.shape == (8, 1, 1, 3)
    assert all(np.array_equal(f, reference[i]) for f, i in zip(loaded.frames, loaded.indices, strict=True))
    assert load_video(path, min_frames=1, size=4).frames.shape == (8, 4, 4, 3)


def test_very_large_frames_are_resized_on_the_way(tmp_path: Path) -> None:
    big = np.zeros((2160, 3840, 3), np.uint8)
    big[:, :1920] = 200
    path = write_video(tmp_path / "uhd.mkv", [big, big], fps=1, codec="mjpeg", pix_fmt="yuvj420p")
    loaded = load_video(path, size=64)
    assert loaded.frames.shape == (8, 64, 64, 3)  # 2 frames, padded to one 8-frame group
    assert loaded.frames[0, 32, :8].min() > 150 and loaded.frames[0, 32, -8:].max() < 50
    assert (loaded.info.width, loaded.info.height) == (3840, 2160)


def test_ten_bit_video(tmp_path: Path) -> None:
    path = numbered_video(tmp_path / "hdr.mkv", 12, size=(64, 64), pix_fmt="yuv420p10le")
    loaded = load_video(path, min_frames=1)
    assert loaded.info.pix_fmt == "yuv420p10le" and loaded.frames.dtype == np.uint8
    assert [read_number(f) for f in loaded.frames] == loaded.indices


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation_metadata_is_applied(tmp_path: Path, degrees: int) -> None:
    pattern = np.zeros((32, 64, 3), np.uint8)
    pattern[:16, :16] = 255  # one bright corner
    path = write_video(tmp_path / "phone.mp4", [pattern] * 10, fps=5, options=x264(5), rotation=degrees)
    stored = full_decode(path)
    loaded = load_video(path, min_frames=1)
    assert loaded.info.rotation == degrees % 360
    assert loaded.frames[0].shape == np.rot90(stored[0], degrees // 90).shape
    assert np.array_equal(loaded.frames[0], np.rot90(stored[0], degrees // 90))
    assert np.array_equal(load_video(path, min_frames=1, autorotate=False).frames[0], stored[0])
    assert probe_video(path).rotation == degrees % 360


@pytest.mark.parametrize("count", [1, 2, 3])
def test_videos_shorter_than_one_clip(tmp_path: Path, count: int) -> None:
    path = numbered_video(tmp_path / "short.mp4", count)
    loaded = load_video(path)
    assert loaded.indices == list(range(count)) + [count - 1] * (8 - count)
    assert [read_number(f) for f in loaded.frames] == loaded.indices
    clips = list(iter_clips(path))
    assert len(clips) == 2 and all(c.frames.shape == (4, 32, 32, 3) for c in clips)


# ------------------------------------------------------------------------------------------ timing headers
def test_variable_frame_rate(tmp_path: Path) -> None:
    steps = np.random.default_rng(0).choice([40, 80, 200, 500], 59)
    pts = [0] + np.cumsum(steps).tolist()
    path = numbered_video(tmp_path / "vfr.mp4", 60, pts=pts, time_base=(1, 1000))
    loaded = load_video(path, min_frames=1, sample="middle", num_frames=60)
    assert loaded.info.num_frames == 60
    assert [read_number(f) for f in loaded.frames] == list(range(60))
    assert loaded.frame_times == pytest.approx([p / 1000 for p in pts])
    with av.open(str(path)) as container:
        assert loaded.fps == pytest.approx(float(container.streams.video[0].average_rate))
    assert loaded.timestamps == pytest.approx([i / loaded.fps for i in range(60)])


def _patch_mp4(source: Path, out: Path, *, durations: bool = False, frame_deltas: bool = False) -> Path:
    """Zero the duration fields of mvhd/tkhd/mdhd, and/or every stts sample delta (→ all timestamps equal)."""
    data = bytearray(source.read_bytes())
    if durations:
        for box, offset in ((b"mvhd", 20), (b"tkhd", 24), (b"mdhd", 20)):
            at = data.rfind(box)  # the index (moov) sits at the end
            assert at > 0 and data[at + 4] == 0  # version 0 boxes
            data[at + offset : at + offset + 4] = bytes(4)
    if frame_deltas:
        at = data.rfind(b"stts")
        (entries,) = struct.unpack(">I", data[at + 8 : at + 12])
        for k in range(entries):
            data[at + 16 + 8 * k : at + 20 + 8 * k] = bytes(4)
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("patch", ["durations", "frame_deltas"])
def test_missing_duration_or_zero_fps_header(tmp_path: Path, patch: str) -> None:
    base = numbered_video(tmp_path / "base.mp4", 40, options=x264(10, preset="ultrafast"))
    path = _patch_mp4(base, tmp_path / f"{patch}.mp4", **{patch: True})
    reference = [read_number(f) for f in full_decode(path)]
    loaded = load_video(path, min_frames=1)
    assert loaded.info.num_frames == len(reference) == 40 and loaded.fps > 0
    assert [read_number(f) for f in loaded.frames] == [reference[i] for i in loaded.indices]
    if patch == "frame_deltas":  # every timestamp equal: frames are numbered by counting
        assert loaded.stats["mode"] == "count"


def test_raw_stream_without_timestamps(tmp_path: Path) -> None:
    path = numbered_video(tmp_path / "raw.h264", 40, container_format="h264")
    loaded = load_video(path, min_frames=1)
    assert loaded.info.num_frames == 40 and loaded.stats["mode"] == "count"
    assert [read_number(f) for f in loaded.frames] == loaded.indices


def _stub_stream(**fields) -> SimpleNamespace:
    base = dict(average_rate=None, guessed_rate=None, base_rate=None, duration=None, time_base=None, frames=0)
    return SimpleNamespace(**{**base, **fields})


@pytest.mark.parametrize(
    "stream, container, expected",
    [
        (_stub_stream(average_rate=25), SimpleNamespace(duration=None), (25.0, "metadata")),
        (
            _stub_stream(average_rate=0, duration=1000, time_base=0.01),
            SimpleNamespace(duration=None),
            (10.0, "duration"),
        ),
        (_stub_stream(average_rate=90000), SimpleNamespace(duration=20_000_000), (5.0, "duration")),
        (_stub_stream(guessed_rate=30), SimpleNamespace(duration=None), (30.0, "guessed")),
        (_stub_stream(), SimpleNamespace(duration=None), (1.0, "assumed")),
    ],
    ids=["header", "zero-rate", "absurd-rate", "guessed", "nothing"],
)
def test_frame_rate_fallbacks(stream, container, expected) -> None:
    fps, source = frame_rate(stream, container, 100, None)
    assert (fps, source) == (pytest.approx(expected[0]), expected[1])
