"""Video input: duration-adaptive frame sampling identical to the original, and PyAV decoding that seeks for
sparse picks, streams 4-frame clips in bounded memory and survives bad files.

Main entry points::

    video = load_video("talk.mp4", size=448)           # LoadedVideo: frames [T,448,448,3], time_message, ...
    for clip in iter_clips("talk.mp4", size=448): ...   # Clip: frames [4,448,448,3] while decoding continues
    plan = plan_sampling("talk.mp4")                    # indices / timestamps / message before decoding
    info = probe_video("talk.mp4")                      # VideoInfo from the header (with fallbacks)
    sample_frame_indices(num_video_frames, fps)         # the original sampler (REFERENCE §4.1)

No torch here; numpy, Pillow and PyAV only.
"""

from .errors import VideoDecodeError
from .loader import ClipStream, iter_clips, load_video, plan, plan_sampling, probe_video, resize_frame
from .sampling import clip_window, image_dir_indices, sample_frame_indices, time_message
from .types import Clip, DecodedFrame, LoadedVideo, SamplingPlan, VideoInfo

__all__ = [
    "Clip",
    "ClipStream",
    "DecodedFrame",
    "LoadedVideo",
    "SamplingPlan",
    "VideoDecodeError",
    "VideoInfo",
    "clip_window",
    "image_dir_indices",
    "iter_clips",
    "load_video",
    "plan",
    "plan_sampling",
    "probe_video",
    "resize_frame",
    "sample_frame_indices",
    "time_message",
]
