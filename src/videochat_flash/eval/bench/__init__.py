"""Standard video benchmarks of the original `lmms-eval_videochat` harness (REFERENCE §11).

`load_benchmark(name, annotations, videos=None, subtitles=None)` reads the official annotation files (folder
layout of the official `eval_annotations`, e.g. `MVBench/json/<task>.json`) and returns a `Benchmark`: an
ordered collection of `BenchmarkItem` with the exact prompts, plus `score` and `aggregate` reproducing the
original scoring. Videos and subtitles are the user's; `.video` is None when `videos` is None.
"""

from __future__ import annotations

from pathlib import Path

from .base import Benchmark, BenchmarkError, BenchmarkItem
from .charades import Charades, load_charades
from .longvideobench import LongVideoBench, load_longvideobench
from .mcq import (
    LVBENCH_TYPES,
    MLVU,
    MLVU_VIDEO_DIRS,
    MVBENCH_TASKS,
    MVBENCH_VIDEO_DIRS,
    LVBench,
    MVBench,
    check_task_keys,
    load_lvbench,
    load_mlvu,
    load_mvbench,
)
from .perceptiontest import PerceptionTest, load_perceptiontest
from .videomme import VideoMME, VideoMMESubtitles, load_videomme

BENCHMARKS = [
    "mvbench",
    "videomme",
    "videomme_w_subtitle",
    "longvideobench",
    "mlvu",
    "lvbench",
    "perceptiontest",
    "charades",
]

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "BenchmarkError",
    "BenchmarkItem",
    "Charades",
    "LVBench",
    "LongVideoBench",
    "MLVU",
    "MLVU_VIDEO_DIRS",
    "MVBENCH_VIDEO_DIRS",
    "MVBench",
    "PerceptionTest",
    "VideoMME",
    "VideoMMESubtitles",
    "load_benchmark",
]


def _optional_dir(path: str | Path | None) -> Path | None:
    return None if path is None else Path(path).expanduser()


def load_benchmark(
    name: str,
    annotations: str | Path,
    videos: str | Path | None = None,
    subtitles: str | Path | None = None,
    *,
    video_dirs: dict[str, str] | None = None,
) -> Benchmark:
    """Load benchmark `name` (one of `BENCHMARKS`) from the official annotation folder `annotations`.

    `videos`: root of the benchmark's videos (resolution rules per benchmark are in each module; a path that
    does not exist is still returned so the reader reports it). `subtitles`: folder with `<videoID>.srt`
    (Video-MME) or the `subtitle_path` JSON files (LongVideoBench). `video_dirs`: per-task video sub-folders
    overriding `MVBENCH_VIDEO_DIRS` / `MLVU_VIDEO_DIRS` (keys are task names; for LVBench the video types).
    """
    key = name.strip().lower().replace("-", "_")
    if key not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}")
    root = Path(annotations).expanduser()
    if not root.is_dir():
        raise BenchmarkError(f"annotation folder not found: {root}")
    vids = _optional_dir(videos)
    subs = _optional_dir(subtitles)
    if key == "mvbench":
        check_task_keys(video_dirs, set(MVBENCH_TASKS), key)
        return load_mvbench(root, vids, video_dirs)
    if key == "mlvu":
        check_task_keys(video_dirs, set(MLVU_VIDEO_DIRS), key)
        return load_mlvu(root, vids, video_dirs)
    if key == "lvbench":
        check_task_keys(video_dirs, set(LVBENCH_TYPES), key)
        return load_lvbench(root, vids, video_dirs)
    if video_dirs:
        raise BenchmarkError(f"video_dirs is not used by {key}")
    if key in ("videomme", "videomme_w_subtitle"):
        return load_videomme(root, vids, subs, with_subtitles=key == "videomme_w_subtitle")
    if key == "longvideobench":
        return load_longvideobench(root, vids, subs)
    if key == "perceptiontest":
        return load_perceptiontest(root, vids)
    return load_charades(root, vids)
