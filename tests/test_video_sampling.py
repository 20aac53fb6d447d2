"""Frame sampling against the original: every entry of the golden file, plus the rules of REFERENCE §4."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import REFERENCE, require_fixtures
from videochat_flash.video import (
    VideoInfo,
    clip_window,
    image_dir_indices,
    plan_sampling,
    sample_frame_indices,
    time_message,
)

GOLDEN = REFERENCE / "frame_sampling_get_frame_indices.json"


def _golden_cases() -> list[dict]:
    if not GOLDEN.exists():
        return []
    return json.loads(GOLDEN.read_text())["cases"]


def _case_id(case: dict) -> str:
    a = case["args"]
    return f"{a['sample']}-vlen{a['vlen']}-fps{a['input_fps']}-n{a['num_frames']}-min{a['min_num_frames']}-max{a['max_num_frames']}-L{a['local_num_frames']}-fs{a['fix_start']}"


def test_golden_file_is_present() -> None:
    require_fixtures(GOLDEN)
    assert len(_golden_cases()) > 0


@pytest.mark.parametrize("case", _golden_cases(), ids=_case_id)
def test_reproduces_original_sampler(case: dict) -> None:
    a = case["args"]
    got = sample_frame_indices(
        a["vlen"],
        a["input_fps"],
        sample=a["sample"],
        num_frames=a["num_frames"],
        min_frames=a["min_num_frames"],
        max_frames=a["max_num_frames"],
        local_num_frames=a["local_num_frames"],
        fix_start=a["fix_start"],
    )
    assert got == case["indices"]


def test_defaults_are_the_inference_defaults() -> None:
    # min 64, max 512, multiples of 8, dynamic_fps1 (§4.3)
    assert sample_frame_indices(300, 30.0) == sample_frame_indices(
        300, 30.0, sample="dynamic_fps1", min_frames=64, max_frames=512, local_num_frames=8
    )
    for vlen, fps in [(90000, 30.0), (18000, 25.0), (7, 1.0), (100, 24.0), (61, 1.0), (12345, 29.97)]:
        n = len(sample_frame_indices(vlen, fps))
        assert n % 8 == 0 and n <= 512
        assert n >= min(64, (vlen // 8) * 8)


def test_max_below_min_still_gives_min() -> None:
    assert len(sample_frame_indices(5400, 30.0, max_frames=32)) == 64


def test_padding_repeats_last_index() -> None:
    assert sample_frame_indices(3, 30.0, sample="middle", num_frames=8, min_frames=1) == [
        0,
        1,
        2,
        2,
        2,
        2,
        2,
        2,
    ]
    # shorter than one clip under dynamic_fps1: 8 entries, padded
    assert sample_frame_indices(2, 30.0) == [0, 1, 1, 1, 1, 1, 1, 1]


def test_rand_is_seedable_and_stays_in_segments() -> None:
    a = sample_frame_indices(1000, 30.0, sample="rand", num_frames=16, min_frames=1, seed=7)
    b = sample_frame_indices(1000, 30.0, sample="rand", num_frames=16, min_frames=1, seed=7)
    assert a == b and len(a) == 16
    edges = np.linspace(0, 1000, 17).astype(int)
    for i, index in enumerate(a):
        assert edges[i] <= index < edges[i + 1] - 1  # [lo, hi) with hi = next edge - 1
    draws = {
        tuple(sample_frame_indices(1000, 30.0, sample="rand", num_frames=16, min_frames=1, seed=s))
        for s in range(5)
    }
    assert len(draws) > 1


def test_rand_falls_back_to_sorted_permutation_when_a_segment_is_empty() -> None:
    # 10 frames in 10 segments: every segment [i, i] has an empty [lo, hi) range
    assert sample_frame_indices(10, 1.0, sample="rand", num_frames=10, min_frames=1, seed=0) == list(
        range(10)
    )


def test_fps_mode_centres_and_cap() -> None:
    assert sample_frame_indices(300, 30.0, sample="fps1", min_frames=1, max_frames=-1) == list(
        range(15, 300, 30)
    )
    assert len(sample_frame_indices(300, 30.0, sample="fps1", min_frames=1, max_frames=4)) == 4
    assert sample_frame_indices(1, 30.0, sample="fps0.5", min_frames=1) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_video_frames=0, fps=30.0),
        dict(num_video_frames=100, fps=0.0),
        dict(num_video_frames=100, fps=30.0, sample="uniform"),
        dict(num_video_frames=100, fps=30.0, sample="fpsX"),
        dict(num_video_frames=100, fps=30.0, local_num_frames=0),
    ],
)
def test_impossible_arguments_raise_value_error(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        sample_frame_indices(**kwargs)


def test_clip_window_follows_decord_reader() -> None:
    window = clip_window(duration=100.0, fps=30.0, start=-5.0, end=200.0)
    assert (window.start, window.end) == (0.0, pytest.approx(99.9))
    assert window.num_frames == int(99.9 * 30.0) and window.start_index == 0
    window = clip_window(duration=100.0, fps=25.0, start=10.5, end=20.0)
    assert window.start_index == int(10.5 * 25.0) and window.num_frames == int(9.5 * 25.0)
    assert window.duration == pytest.approx(9.5)
    with pytest.raises(ValueError):
        clip_window(duration=10.0, fps=30.0, start=20.0, end=30.0)


def test_plan_with_clip_shifts_indices() -> None:
    info = VideoInfo(num_frames=3000, fps=30.0, duration=100.0, width=8, height=8, codec="h264")
    plan = plan_sampling(info, start=10.0, end=20.0)
    inner = sample_frame_indices(300, 30.0)
    assert list(plan.indices) == [i + 300 for i in inner]
    assert plan.duration == pytest.approx(10.0)
    assert plan.time_message == time_message(10.0, 64)
    assert plan.sampling["clip"] == [10.0, 20.0] and plan.sampling["num_video_frames"] == 300


def test_image_dir_count_and_inner_rate_quirk() -> None:
    # 1 fps folders: identical to the sampler at 1 fps
    indices, duration = image_dir_indices(100, 1.0)
    assert indices == sample_frame_indices(100, 1.0) and duration == 100.0
    # TVQA (3 fps): the duration is files/3 but the indices come from a call at input_fps = 1
    indices, duration = image_dir_indices(300, 3.0)
    assert duration == 100.0
    assert indices == sample_frame_indices(300, 1.0)
    assert len(indices) == 296


def test_image_dir_clip_spreads_over_file_positions() -> None:
    indices, duration = image_dir_indices(100, 1.0, start=10.0, end=50.0)
    assert duration == 40.0 and len(indices) == 40
    step = (50 - 10) / 39
    assert indices == [10 + int(round(step * i)) for i in range(40)]
    # the first position is never below 1
    assert image_dir_indices(100, 1.0, start=0.0, end=20.0)[0][0] == 1


def test_time_messages_exact() -> None:
    assert (
        time_message(10.0, 64)
        == "\nThe video lasts for 10.00 seconds, and 64 frames are uniformly sampled from it. "
    )
    assert (
        time_message(3.456, 3, style="timestamps", timestamps=[0.0, 1.25, 2.96])
        == "\nThe video lasts for 3.46 seconds, and 3 frames are uniformly sampled at 0.0, 1.2, 3.0 seconds. "
    )
    assert time_message(3.0, 3, style=None) == ""
    with pytest.raises(ValueError):
        time_message(3.0, 3, style="timestamps")


def test_training_clip_rule_matches_hand_computation():
    """REFERENCE §4.4: 8 s clip at 4 fps, dynamic_fps1, 1..8 frames, clips of 4.

    n_src = 32, seg = 31/8 = 3.875, offsets = 1 + round(3.875·i) = 1, 5, 9, 13, 17, 20, 24, 28 (Python rounds
    15.5 to 16); first frame at or after start (2 s = frame 8) + offset.
    """
    from videochat_flash.video.sampling import training_clip_indices

    indices, duration = training_clip_indices(
        200, 4.0, 2.0, 10.0, min_frames=1, max_frames=8, local_num_frames=4
    )
    assert duration == 8.0
    assert indices == [9, 13, 17, 21, 25, 28, 32, 36]
    # The min bound drops to whole clips when it exceeds the clip's seconds: 6 s clip, min 64 -> 4 frames.
    indices, _ = training_clip_indices(200, 4.0, 0.0, 6.0, min_frames=64, max_frames=512, local_num_frames=4)
    assert len(indices) == 4
    # Non-dynamic types take max_frames.
    indices, _ = training_clip_indices(200, 4.0, 0.0, 6.0, sample="middle", min_frames=1, max_frames=6)
    assert len(indices) == 6


def test_load_video_training_clip_rule(tmp_path):
    from videochat_flash.video import load_video

    from .conftest import write_test_video

    path = write_test_video(tmp_path / "v.mp4", seconds=12, fps=4)
    train = load_video(
        str(path), 8, min_frames=1, local_num_frames=4, start=2.0, end=10.0, clip_rule="training"
    )
    assert train.indices == [9, 13, 17, 21, 25, 28, 32, 36]
    assert train.duration == 8.0
    infer = load_video(str(path), 8, min_frames=1, local_num_frames=4, start=2.0, end=10.0)
    assert infer.indices != train.indices  # the inference rule samples segment middles instead
