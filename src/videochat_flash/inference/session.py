"""The main job: encode a video once, then answer questions about it (REFERENCE §8 `chat`, done better).

`encode_video` streams 4-frame clips from the decoder into the encoder in batches, so only one batch of
frames is in memory at a time; the result (`VideoTokens`) is cached on disk and reused for every later
question and chat turn. `chat` keeps the original's prompt and history format.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .. import video as vid
from .cache import TokenCache, hash_bytes, hash_file, make_key
from .prompt import build_chat_prompt, extend_history
from .tokens import VideoTokens

INFERENCE_MIN_FRAMES = 64  # REFERENCE §4.3: the HF loader's bounds
INFERENCE_LOCAL_FRAMES = 8


class Timings(defaultdict):
    """Seconds per stage (``decode_video``, ``encode``, ``prefill``, ``generate``), accumulated."""

    def __init__(self):
        super().__init__(float)

    @contextmanager
    def measure(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self[stage] += time.perf_counter() - start


def _is_frames(video) -> bool:
    if isinstance(video, np.ndarray | torch.Tensor):
        return video.ndim == 4
    return isinstance(video, list | tuple) and len(video) > 0 and getattr(video[0], "ndim", 0) == 3


def sampling_settings(model, max_num_frames: int, media: dict | None) -> dict:
    """Everything that decides which frames are sampled and how they are encoded (part of the cache key)."""
    media = media or {}
    return {
        "sample": "dynamic_fps1",
        "max_frames": int(max_num_frames),
        "min_frames": INFERENCE_MIN_FRAMES,
        "local_num_frames": INFERENCE_LOCAL_FRAMES,
        "start": media.get("start"),
        "end": media.get("end"),
        "video_read_type": media.get("video_read_type"),
        "image_size": model.config.image_size,
        "frames_per_clip": model.config.frames_per_clip,
    }


def model_identity(model) -> str:
    """A fingerprint of the weights + config, so cache entries of another model never match."""
    cached = getattr(model, "_identity", None)
    if cached:
        return cached
    h = __import__("hashlib").blake2b(digest_size=20)
    h.update(repr(sorted(model.config.to_dict().items())).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().float().flatten()
        # A strided sample of every tensor: cheap for 7B models, still changes whenever training does.
        step = max(1, t.numel() // 4096)
        h.update(name.encode())
        h.update(t[::step].cpu().numpy().tobytes())
    model._identity = h.hexdigest()
    return model._identity


def content_hash(video) -> str | None:
    """Hash of the video's bytes for cache keys, or None when the source cannot be hashed (streams, URLs)."""
    if isinstance(video, bytes | bytearray | memoryview):
        return hash_bytes(bytes(video))
    if isinstance(video, str | os.PathLike) and Path(video).is_file():
        return hash_file(video)
    if isinstance(video, str | os.PathLike) and Path(video).is_dir():
        files = sorted(p for p in Path(video).iterdir() if p.is_file())
        return hash_bytes("".join(f"{p.name}:{hash_file(p)}" for p in files).encode())
    if _is_frames(video):
        return hash_bytes(np.ascontiguousarray(np.asarray(video)).tobytes())
    return None


def encode_video(
    model,
    video,
    *,
    max_num_frames: int = 512,
    media: dict | None = None,
    cache: TokenCache | None = None,
    progress: bool = False,
    timings: Timings | None = None,
    allow_url: bool = False,
) -> VideoTokens:
    """Sample, decode and encode a video into `VideoTokens` (from the cache when possible)."""
    if isinstance(video, VideoTokens):
        return video
    timings = timings if timings is not None else Timings()
    settings = sampling_settings(model, max_num_frames, media)
    key = None
    if cache is not None:
        with timings.measure("hash"):
            digest = content_hash(video)
        if digest is not None:
            key = make_key(digest, model_identity(model), settings)
            hit = cache.get(key)
            if hit is not None:
                return hit
    if _is_frames(video):
        tokens = _encode_given_frames(model, video, timings)
    else:
        tokens = _encode_sampled(model, video, settings, timings, progress, allow_url)
    tokens.model_id = model_identity(model)
    if key is not None:
        cache.put(key, tokens)
    return tokens


def _encode_given_frames(model, frames, timings: Timings, fps: float = 1.0) -> VideoTokens:
    """Frames passed as an array are used as given; the last one is repeated up to a whole clip."""
    frames = np.asarray(frames.numpy() if isinstance(frames, torch.Tensor) else frames, dtype=np.uint8)
    per_clip = model.config.frames_per_clip
    pad = (-len(frames)) % per_clip
    if pad:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)])
    indices = list(range(len(frames) - pad)) + [len(frames) - pad - 1] * pad
    with timings.measure("encode"):
        tokens = model.encode_frames(frames)
    duration = (len(frames) - pad) / fps
    return VideoTokens(
        tokens=tokens.cpu(),
        timestamps=[i / fps for i in indices],
        indices=indices,
        duration=duration,
        fps=fps,
        time_message=vid.time_message(duration, len(indices)),
        frames_per_clip=per_clip,
        sampling={"sample": "given"},
    )


def _encode_sampled(
    model, source, settings: dict, timings: Timings, progress: bool, allow_url: bool
) -> VideoTokens:
    kwargs = dict(
        min_frames=settings["min_frames"],
        local_num_frames=settings["local_num_frames"],
        sample=settings["sample"],
        start=settings["start"],
        end=settings["end"],
        allow_url=allow_url,
    )
    with timings.measure("decode_video"):
        # Opening indexes the file once; the plan (frame count, duration) comes with the clip stream.
        clips = vid.iter_clips(
            source,
            settings["max_frames"],
            clip_len=model.config.frames_per_clip,
            size=model.config.image_size,
            **kwargs,
        )
        plan = clips.plan
    chunks, timestamps, indices = [], [], []
    bar = _progress(progress, total=len(plan.indices), desc="encode video", unit="frame")
    iterator = iter(clips)
    while True:
        with timings.measure("decode_video"):
            batch = list(itertools.islice(iterator, model.clip_batch_size))
        if not batch:
            break
        with timings.measure("encode"):
            frames = np.concatenate([c.frames for c in batch])
            with torch.inference_mode():
                chunks.append(model.encode_pixels(model.preprocess_video(frames)).cpu())
        for clip in batch:
            timestamps.extend(float(t) for t in clip.timestamps)
            indices.extend(int(i) for i in clip.indices)
        bar.update(len(frames))
    bar.close()
    if not chunks:
        raise vid.VideoDecodeError(str(source), "no frames could be decoded")
    return VideoTokens(
        tokens=torch.cat(chunks),
        timestamps=timestamps,
        indices=indices,
        duration=float(plan.duration),
        fps=float(plan.fps),
        time_message=vid.time_message(plan.duration, len(indices)),
        frames_per_clip=model.config.frames_per_clip,
        sampling=dict(settings),
    )


def _progress(enabled: bool, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(disable=not enabled, leave=False, dynamic_ncols=True, **kwargs)


def chat(
    model,
    video,
    question: str,
    history: Sequence[dict] | None = None,
    max_num_frames: int = 512,
    generation: dict | None = None,
    media: dict | None = None,
    *,
    compression=None,
    cache: TokenCache | None = None,
    timings: Timings | None = None,
    progress: bool = False,
    on_token=None,
) -> tuple[str, list[dict]]:
    """Answer ``question`` about ``video`` (any video-layer input or `VideoTokens`), original `chat` semantics."""
    timings = timings if timings is not None else Timings()
    tokens = encode_video(
        model,
        video,
        max_num_frames=max_num_frames,
        media=media,
        cache=cache,
        progress=progress,
        timings=timings,
    )
    prompt, user_text = build_chat_prompt(question, tokens.time_message, history)
    result = model.generate(
        prompt, tokens.tokens, generation=generation, compression=compression, on_token=on_token
    )
    timings["prefill"] += getattr(result, "prefill_seconds", 0.0)
    timings["generate"] += getattr(result, "decode_seconds", 0.0)
    return result.text, extend_history(history, user_text, result.text)
