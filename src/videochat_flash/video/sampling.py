"""Which frame numbers to read: the original sampler and its reader-specific wrappers (REFERENCE §4.1–§4.4).

Pure functions of counts and rates: nothing here opens a file. ``sample_frame_indices`` is the original
``get_frame_indices`` (``dynamic_fps1`` / ``middle`` / ``rand`` / ``fpsX``, min/max bounds, ``local_num_frames``
multiples, padding by repeating the last index). ``clip_window`` applies a ``[start, end]`` window the way the
decord reader does, ``image_dir_indices`` reproduces the quirks of the frame-folder (``img``) reader, and
``time_message`` builds the exact strings the model was trained with.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SAMPLE_MODES = ("dynamic_fps1", "middle", "rand")  # plus "fpsX" (e.g. "fps0.5")

# Inference defaults of REFERENCE §4.3 (HF `load_video`).
DEFAULT_MIN_FRAMES = 64
DEFAULT_MAX_FRAMES = 512
DEFAULT_LOCAL_NUM_FRAMES = 8

# The decord reader clamps a clip's end to 0.1 s before the end of the video (§4.2).
CLIP_END_MARGIN_S = 0.1


def sample_frame_indices(
    num_video_frames: int,
    fps: float,
    *,
    sample: str = "dynamic_fps1",
    num_frames: int | None = None,
    min_frames: int = DEFAULT_MIN_FRAMES,
    max_frames: int = DEFAULT_MAX_FRAMES,
    local_num_frames: int = DEFAULT_LOCAL_NUM_FRAMES,
    fix_start: int | None = None,
    seed: int | None = None,
) -> list[int]:
    """Frame numbers (0-based, sorted, padding included) the original sampler picks from a video.

    ``num_video_frames`` is the original's ``vlen``, ``fps`` its ``input_fps`` (average frame rate),
    ``num_frames`` the requested count for ``middle`` / ``rand`` (defaults to ``max_frames``; ignored by
    ``dynamic_fps1`` and ``fpsX``). ``max_frames <= 0`` means "no cap". ``seed`` makes ``rand`` reproducible.
    Raises ValueError for impossible arguments (no frames, unknown mode, non-positive fps where it is used).
    """
    vlen = int(num_video_frames)
    if vlen <= 0:
        raise ValueError(f"cannot sample from a video with {num_video_frames} frames")
    if local_num_frames <= 0:
        raise ValueError(f"local_num_frames must be positive, got {local_num_frames}")
    if num_frames is None:
        num_frames = max_frames
    if min_frames > vlen:
        min_frames = (vlen // local_num_frames) * local_num_frames if sample == "dynamic_fps1" else vlen
    if sample == "dynamic_fps1":
        num_frames = dynamic_frame_count(vlen, fps, local_num_frames, max_frames)
        sample = "middle"
    if sample in ("middle", "rand"):
        count = max(min_frames, num_frames)
        if count <= 0:
            raise ValueError(f"num_frames must be positive for sample={sample!r}, got {num_frames}")
        return segment_indices(vlen, count, sample=sample, fix_start=fix_start, seed=seed)
    if sample.startswith("fps"):
        return fps_indices(vlen, fps, _output_fps(sample), max_frames)
    raise ValueError(f"unknown sample mode {sample!r}; use dynamic_fps1, middle, rand or fpsX (e.g. fps0.5)")


def dynamic_frame_count(num_video_frames: float, fps: float, local_num_frames: int, max_frames: int) -> int:
    """``dynamic_fps1`` frame count: about one per second, a multiple of ``local_num_frames``, capped (§4.1 step 2)."""
    _require_positive_fps(fps)
    duration = num_video_frames / fps
    k = int(duration // local_num_frames)
    count = local_num_frames if k == 0 else local_num_frames * k
    if max_frames > 0:
        count = min(count, max_frames)
    return count


def segment_indices(
    num_video_frames: int,
    num_frames: int,
    *,
    sample: str = "middle",
    fix_start: int | None = None,
    seed: int | None = None,
) -> list[int]:
    """One index per uniform segment (``middle``, ``fix_start`` offset or ``rand``), padded to ``num_frames``."""
    vlen = num_video_frames
    count = min(num_frames, vlen)
    edges = np.linspace(start=0, stop=vlen, num=count + 1).astype(int)
    segments = [(int(edges[i]), int(edges[i + 1]) - 1) for i in range(count)]
    if sample == "rand":
        indices = _random_indices(segments, vlen, count, seed)
    elif fix_start is not None:
        indices = [lo + fix_start for lo, _ in segments]
    elif sample == "middle":
        indices = [(lo + hi) // 2 for lo, hi in segments]
    else:
        raise ValueError(f"unknown segment sample mode {sample!r}")
    return pad_indices(indices, num_frames)


def _random_indices(segments: list[tuple[int, int]], vlen: int, count: int, seed: int | None) -> list[int]:
    """A random frame in ``[lo, hi)`` per segment; if any segment is empty, a sorted random subset instead."""
    rng = random.Random(seed)
    if all(hi > lo for lo, hi in segments):
        return [rng.randrange(lo, hi) for lo, hi in segments]
    permutation = np.random.default_rng(seed).permutation(vlen)[:count]
    return sorted(int(i) for i in permutation)


def pad_indices(indices: list[int], num_frames: int) -> list[int]:
    """Pad at the end by repeating the last index until there are ``num_frames`` (never truncates)."""
    if indices and len(indices) < num_frames:
        indices = indices + [indices[-1]] * (num_frames - len(indices))
    return indices


def fps_indices(num_video_frames: int, fps: float, output_fps: float, max_frames: int) -> list[int]:
    """``fpsX``: frames at the centres of ``1/X``-second steps, rounded to the nearest frame (§4.1 step 5)."""
    _require_positive_fps(fps)
    if output_fps <= 0:
        raise ValueError(f"output fps must be positive, got {output_fps}")
    duration = float(num_video_frames) / fps
    delta = 1 / output_fps
    seconds = np.arange(0 + delta / 2, duration + delta / 2, delta)
    indices = [int(i) for i in np.around(seconds * fps).astype(int) if i < num_video_frames]
    if max_frames > 0 and len(indices) > max_frames:
        indices = indices[:max_frames]
    return indices


def _output_fps(sample: str) -> float:
    try:
        return float(sample[3:])
    except ValueError:
        raise ValueError(f"unknown sample mode {sample!r}; fpsX needs a number, e.g. fps0.5") from None


def _require_positive_fps(fps: float) -> None:
    if not fps or fps <= 0 or not np.isfinite(fps):
        raise ValueError(f"frame rate must be a positive number, got {fps}")


# --------------------------------------------------------------------------------------------- clip windows
@dataclass(frozen=True)
class ClipWindow:
    """A ``[start, end]`` window as the decord reader resolves it (§4.2): frames ``start_index + [0, num_frames)``."""

    start: float
    end: float
    num_frames: int  # the clip's vlen = int((end - start) * fps)
    start_index: int  # int(start * fps): added to the indices sampled inside the clip

    @property
    def duration(self) -> float:
        return self.end - self.start


def clip_window(duration: float, fps: float, start: float | None, end: float | None) -> ClipWindow:
    """Resolve a clip the decord way: start ≥ 0, end ≤ duration − 0.1, vlen = int(span·fps), offset int(start·fps).

    A missing ``start`` means 0 and a missing ``end`` means the end of the video. Raises ValueError when the
    window holds no frame.
    """
    _require_positive_fps(fps)
    start_s = max(0.0, float(start) if start is not None else 0.0)
    end_s = min(duration - CLIP_END_MARGIN_S, float(end) if end is not None else duration)
    num_frames = int((end_s - start_s) * fps)
    if num_frames <= 0:
        raise ValueError(
            f"clip [{start}, {end}] s holds no frame of a {duration:.2f} s video (resolved to [{start_s}, {end_s:.2f}])"
        )
    return ClipWindow(start=start_s, end=end_s, num_frames=num_frames, start_index=int(start_s * fps))


def training_clip_indices(
    num_video_frames: int,
    fps: float,
    start: float,
    end: float,
    *,
    sample: str = "dynamic_fps1",
    min_frames: int = 1,
    max_frames: int = 8,
    local_num_frames: int = 4,
) -> tuple[list[int], float]:
    """Frames of an annotated clip as the original *training* loader picks them (REFERENCE §4.4 ``lazy``).

    Count: the min bound drops to whole clips when it exceeds the clip's seconds; ``dynamic_fps1`` takes
    ``L·int(dur // L)`` (or L), capped by max then raised to min; other types take ``max_frames``. Frames: over
    ``n_src = int(end − start)·fps`` source frames, offsets ``⌊seg/2⌋ + round(seg·i)`` with
    ``seg = (n_src − 1) / n``; each offset becomes a time after ``start`` and the first frame at or after that
    time is taken. Returns (source frame indices, clip duration).
    """
    _require_positive_fps(fps)
    duration = float(end) - float(start)
    if duration <= 0:
        raise ValueError(f"clip [{start}, {end}] s is empty")
    lower = min_frames
    if lower > duration:
        lower = int(duration // local_num_frames) * local_num_frames
    if sample == "dynamic_fps1":
        k = int(duration // local_num_frames)
        count = max(min(local_num_frames * k if k else local_num_frames, max_frames), lower)
        if count % local_num_frames:
            raise ValueError(f"dynamic_fps1 frame count {count} is not a multiple of {local_num_frames}")
    else:
        count = max_frames
    n_src = int(duration) * fps
    seg = (n_src - 1) / count
    offsets = [int(seg // 2) + int(round(seg * i)) for i in range(count)]
    first = float(start) * fps
    last = max(num_video_frames - 1, 0)
    indices = [min(last, max(0, math.ceil(first + off - 1e-6))) for off in offsets]
    return indices, duration


# --------------------------------------------------------------------------------------- frame folders (img)
def image_dir_fps(path: str) -> float:
    """The ``img`` reader's assumed frame rate: 3 fps for TVQA frame folders, else 1 fps (§4.2)."""
    return 3.0 if "tvqa" in path.lower() else 1.0


def image_dir_indices(
    num_files: int,
    fps: float,
    *,
    sample: str = "dynamic_fps1",
    num_frames: int | None = None,
    min_frames: int = DEFAULT_MIN_FRAMES,
    max_frames: int = DEFAULT_MAX_FRAMES,
    local_num_frames: int = DEFAULT_LOCAL_NUM_FRAMES,
    fix_start: int | None = None,
    seed: int | None = None,
    start: float | None = None,
    end: float | None = None,
) -> tuple[list[int], float]:
    """File positions the ``img`` reader picks from a folder of ``num_files`` frames, and its duration (§4.2).

    Without a clip the count is computed at ``fps`` but the indices come from the sampler called again with its
    default rate of 1 (one frame per image). With ``start``/``end`` (seconds) it spreads the count evenly over
    file positions ``[max(1, round(start·fps)), min(round(end·fps), num_files − 1)]``.
    """
    if num_files <= 0:
        raise ValueError("the frame folder holds no images")
    requested = max_frames if num_frames is None else num_frames
    if start is None and end is None:
        indices = sample_frame_indices(
            num_files,
            1.0,
            sample=sample,
            num_frames=_image_dir_count(
                num_files, fps, sample, requested, min_frames, max_frames, local_num_frames
            ),
            min_frames=min_frames,
            max_frames=max_frames,
            local_num_frames=local_num_frames,
            fix_start=fix_start,
            seed=seed,
        )
        return indices, num_files / fps
    start_s = float(start or 0.0)
    end_s = float(end) if end is not None else num_files / fps
    vlen = (end_s - start_s) * fps
    if vlen <= 0:
        raise ValueError(f"clip [{start}, {end}] s is empty")
    count = _image_dir_count(vlen, fps, sample, requested, min_frames, max_frames, local_num_frames)
    first = max(1, round(start_s * fps))
    last = min(round(end_s * fps), num_files - 1)
    if count <= 1:
        return [first], vlen / fps
    step = (last - first) / (count - 1)
    return [first + int(round(step * i)) for i in range(count)], vlen / fps


def _image_dir_count(
    vlen: float, fps: float, sample: str, num_frames: int, min_frames: int, max_frames: int, local: int
) -> int:
    """Frame count of the ``img`` reader: min bound adjusted, then the dynamic rule at ``fps`` (§4.2)."""
    if min_frames > vlen:
        min_frames = int(vlen // local) * local if sample == "dynamic_fps1" else int(vlen)
    if sample == "dynamic_fps1":
        num_frames = dynamic_frame_count(vlen, fps, local, max_frames)
    return max(min_frames, num_frames)


# ------------------------------------------------------------------------------------------- time message
def time_message(
    duration: float,
    num_frames: int,
    *,
    style: str | None = "short",
    timestamps: Sequence[float] | None = None,
) -> str:
    """The sentence that tells the model how long the video is (exact strings of §4.3 / §4.4).

    ``style="short"``: ``"\\nThe video lasts for {duration:.2f} seconds, and {T} frames are uniformly sampled
    from it. "``. Any other non-empty style lists ``timestamps`` (seconds, one decimal). ``None``/``""`` → ``""``.
    """
    if not style:
        return ""
    head = f"\nThe video lasts for {duration:.2f} seconds, and {num_frames} frames are uniformly sampled"
    if style == "short":
        return f"{head} from it. "
    if timestamps is None:
        raise ValueError(f"time_message style {style!r} needs the frame timestamps")
    listed = ", ".join(_one_decimal(t) for t in timestamps)
    return f"{head} at {listed} seconds. "


def _one_decimal(seconds: float) -> str:
    """``str(round(idx / fps, 1))`` as the original computes it (numpy rounding of a float64)."""
    return str(float(np.round(np.float64(seconds), 1)))
