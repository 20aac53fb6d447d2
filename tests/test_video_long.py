"""A 3-hour video (1 fps, 32x32, GOP 250, frame numbers drawn into the pixels): the seek path returns exactly
the planned frames, decodes far fewer frames than the video has, and streaming keeps memory flat."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from tests.test_video_synth import LONG_FPS, LONG_GOP, LONG_SECONDS, long_video, numbered_video, read_number
from videochat_flash.video import (
    VideoDecodeError,
    iter_clips,
    load_video,
    plan_sampling,
    probe_video,
    sample_frame_indices,
    time_message,
)
from videochat_flash.video.decode import PyAVReader
from videochat_flash.video.sources import resolve_source

NUM_FRAMES = LONG_FPS * LONG_SECONDS


@pytest.fixture(scope="module")
def long_path():
    return long_video()


def test_probe_long_video(long_path) -> None:
    for count_frames in (False, True):
        info = probe_video(long_path, count_frames=count_frames)
        assert info.num_frames == NUM_FRAMES and info.fps == LONG_FPS
        assert info.duration == LONG_SECONDS and (info.width, info.height) == (32, 32)
    assert probe_video(long_path, count_frames=True).keyframes == -(-NUM_FRAMES // LONG_GOP)


def test_default_sampling_of_3_hours_is_exact(long_path) -> None:
    loaded = load_video(long_path)
    assert loaded.indices == sample_frame_indices(NUM_FRAMES, float(LONG_FPS)) and len(loaded.indices) == 512
    assert [read_number(f) for f in loaded.frames] == loaded.indices
    assert loaded.time_message == time_message(float(LONG_SECONDS), 512)
    assert loaded.stats["mode"] == "seek" and loaded.stats["seeks"] > 0
    assert loaded.stats["frames_decoded"] < NUM_FRAMES
    assert loaded.warnings == []


def test_sparse_picks_seek_instead_of_decoding_everything(long_path) -> None:
    loaded = load_video(long_path, sample="middle", num_frames=16, min_frames=1)
    assert [read_number(f) for f in loaded.frames] == loaded.indices
    assert loaded.stats["seeks"] >= 15
    # each pick costs at most one GOP of decoding
    assert loaded.stats["frames_decoded"] <= 16 * LONG_GOP
    assert loaded.stats["frames_converted"] == 16


def test_sparse_seeks_with_b_frames(tmp_path) -> None:
    """B-frames (reordering) + seeking + draining after each wanted frame: still exact, and cheap."""
    path = numbered_video(tmp_path / "b.mp4", 600, gop=12)  # veryfast: B-frames
    loaded = load_video(path, sample="middle", num_frames=20, min_frames=1)
    assert [read_number(f) for f in loaded.frames] == loaded.indices
    assert loaded.stats["seeks"] >= 19 and loaded.stats["packets_read"] <= 20 * 12
    dense = load_video(path, sample="middle", num_frames=300, min_frames=1)
    assert [read_number(f) for f in dense.frames] == dense.indices


def test_seek_and_sequential_paths_agree(long_path) -> None:
    wanted = [0, 1, 249, 250, 251, 5000, 7777, 10799]
    results = []
    for allow_seek in (True, False):
        with PyAVReader(resolve_source(long_path), allow_seek=allow_seek) as reader:
            results.append([(f.index, read_number(f.rgb), f.seconds) for f in reader.read(wanted)])
    assert results[0] == results[1]
    assert [n for _, n, _ in results[0]] == wanted
    assert [t for _, _, t in results[0]] == [float(i) for i in wanted]


def test_clip_window_on_long_video(long_path) -> None:
    loaded = load_video(long_path, start=3600.0, end=3700.0)
    assert loaded.indices == [3600 + i for i in sample_frame_indices(100, 1.0)]
    assert [read_number(f) for f in loaded.frames] == loaded.indices
    assert loaded.stats["frames_decoded"] < 2 * LONG_GOP


def test_plan_before_decoding_matches_load(long_path) -> None:
    plan = plan_sampling(long_path, max_frames=128)
    again = plan_sampling(plan.info, max_frames=128)
    assert plan.indices == again.indices and plan.time_message == again.time_message
    assert plan.num_frames == 128 and plan.sampling["num_video_frames"] == NUM_FRAMES


def _rss_bytes() -> int:
    """Current resident set size (Linux); 0 elsewhere, which turns the RSS check into a no-op."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except OSError:
        return 0


def test_streaming_memory_stays_flat(long_path) -> None:
    """Streaming 512 frames at 224x224 (77 MB if held) allocates at most a few clips at a time."""
    held = 512 * 224 * 224 * 3
    rss_before, rss_peak = _rss_bytes(), 0
    tracemalloc.start()
    try:
        clips = iter_clips(long_path, size=224)
        numbers = []
        for clip in clips:
            assert clip.frames.shape == (4, 224, 224, 3)
            numbers.extend(read_number(f) for f in clip.frames)
            rss_peak = max(rss_peak, _rss_bytes())
            del clip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert numbers == list(clips.plan.indices)
    assert peak < held / 10, f"python/numpy peak {peak / 1e6:.1f} MB while streaming"
    assert rss_peak - rss_before < held / 2, f"RSS grew by {(rss_peak - rss_before) / 1e6:.1f} MB"


def test_time_limit_is_enforced(long_path) -> None:
    with pytest.raises(VideoDecodeError, match="gave up after"):
        load_video(long_path, timeout_s=1e-4)


def test_threads_setting_does_not_change_frames(long_path) -> None:
    a = load_video(long_path, max_frames=64, threads=1)
    b = load_video(long_path, max_frames=64, threads=2)
    assert a.indices == b.indices and np.array_equal(a.frames, b.frames)
