"""Benchmark: sample 512 frames at 448x448 from a long 720p H.264 video — our seek-based reader vs decoding every
frame sequentially. Prints the command, then a table (wall time, peak RSS, frames decoded, speed-up).

    python benchmarks/bench_video_decode.py                       # 1 h, 1280x720, 2 fps, GOP 2 s
    python benchmarks/bench_video_decode.py --duration 600 --fps 5   # smaller / quicker

The video is generated once with PyAV (libx264, fast preset) and cached (``--video`` to choose the path).
Each method runs in its own subprocess so that its peak RSS is its own. Both methods must return identical
frames (checked by hash). Not a test: never run in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

METHODS = {
    "seek": "ours: load_video (index, seek to keyframes, skip unneeded frames)",
    "stream": "ours: iter_clips (same reads, 4-frame clips, nothing kept)",
    "sequential": "baseline: decode every frame in order, convert only sampled",
}


# ------------------------------------------------------------------------------------------------ video
def generate(
    path: Path, *, duration: int, fps: int, width: int, height: int, gop_s: float, preset: str
) -> float:
    """Write a synthetic video: a scrolling field of coloured 16x16 blocks (motion everywhere) with the frame
    number drawn in the top row. With the veryfast preset (CABAC, deblocking, B-frames) a 720p frame takes a few
    ms to decode, like ordinary footage."""
    import av

    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (height // 16 + 2, (width + 4 * 3600) // 16 + 2, 3), dtype=np.uint8)
    field = np.repeat(np.repeat(coarse, 16, axis=0), 16, axis=1)[:height]
    started = time.perf_counter()
    with av.open(str(path), "w") as container:
        gop = max(1, round(gop_s * fps))
        options = {"preset": preset, "crf": "23", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.thread_count = 0
        for i in range(duration * fps):
            offset = (i * 4) % (field.shape[1] - width)
            rgb = np.ascontiguousarray(field[:, offset : offset + width])
            _draw_number(rgb, i)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return time.perf_counter() - started


def _draw_number(rgb: np.ndarray, number: int) -> None:
    for bit in range(20):
        value = 255 if (number >> bit) & 1 else 0
        rgb[0:32, bit * 32 : (bit + 1) * 32] = value


# ------------------------------------------------------------------------------------------------ methods
def run_method(method: str, path: str, frames: int, size: int) -> dict:
    """Run one method in this process; returns timings, counts and a hash of the frames."""
    from videochat_flash.video import iter_clips, load_video, plan_sampling, probe_video, resize_frame

    before = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = before.ru_utime + before.ru_stime
    started = time.perf_counter()
    digest = hashlib.sha1()
    stats: dict = {}
    if method == "seek":
        loaded = load_video(path, max_frames=frames, size=size)
        digest.update(memoryview(loaded.frames))  # no copy
        stats = loaded.stats
        count = loaded.num_frames
    elif method == "stream":
        clips = iter_clips(path, max_frames=frames, size=size)
        count = 0
        for clip in clips:
            digest.update(memoryview(clip.frames))
            count += len(clip.frames)
        stats = clips.stats
    else:
        import av

        plan = plan_sampling(probe_video(path), max_frames=frames)  # header only: no index pass
        wanted = list(plan.indices)
        decoded = 0
        count = 0
        kept = np.empty((len(wanted), size, size, 3), np.uint8)  # held like load_video holds its frames
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_type = "AUTO"
            for position, frame in enumerate(container.decode(stream)):
                decoded += 1
                if count < len(wanted) and position == wanted[count]:
                    rgb = resize_frame(frame.to_ndarray(format="rgb24"), size)
                    while count < len(wanted) and wanted[count] == position:
                        kept[count] = rgb
                        count += 1
                if count == len(wanted):
                    break
        digest.update(memoryview(kept))
        stats = {"frames_decoded": decoded, "seeks": 0}
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_kb = usage.ru_maxrss
    return {
        "method": method,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime - cpu_before,
        "peak_rss_mb": peak_kb / 1024,
        "frames": count,
        "frames_decoded": stats.get("frames_decoded"),
        "seeks": stats.get("seeks"),
        "sha1": digest.hexdigest(),
    }


def run_in_subprocess(method: str, path: Path, frames: int, size: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--_child",
        method,
        "--video",
        str(path),
        "--frames",
        str(frames),
        "--size",
        str(size),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration", type=int, default=3600, help="seconds of video to generate (default 3600)"
    )
    parser.add_argument("--fps", type=int, default=2, help="frame rate of the generated video (default 2)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--gop-seconds", type=float, default=2.0, help="keyframe interval (default 2 s)")
    parser.add_argument("--preset", default="veryfast", help="x264 preset for generation (default veryfast)")
    parser.add_argument("--frames", type=int, default=512, help="max_frames to sample (default 512)")
    parser.add_argument("--size", type=int, default=448, help="frame size after resize (default 448)")
    parser.add_argument("--video", type=Path, default=None, help="video path (generated if missing)")
    parser.add_argument("--methods", default="seek,stream,sequential")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._child:
        print(json.dumps(run_method(args._child, str(args.video), args.frames, args.size)))
        return

    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    name = f"bench_{args.duration}s_{args.width}x{args.height}_{args.fps}fps_gop{args.gop_seconds:g}s_{args.preset}.mp4"
    path = args.video or Path(tempfile.gettempdir()) / name
    if not path.exists():
        seconds = generate(
            path,
            duration=args.duration,
            fps=args.fps,
            width=args.width,
            height=args.height,
            gop_s=args.gop_seconds,
            preset=args.preset,
        )
        print(f"generated {path} in {seconds:.0f} s")
    size_mb = path.stat().st_size / 1e6
    print(
        f"video: {args.duration} s, {args.width}x{args.height}, {args.fps} fps ({args.duration * args.fps} frames), "
        f"GOP {args.gop_seconds:g} s, {size_mb:.0f} MB; sampling max_frames={args.frames} at {args.size}x{args.size}"
    )
    results = [run_in_subprocess(m, path, args.frames, args.size) for m in args.methods.split(",")]
    baseline = next((r for r in results if r["method"] == "sequential"), results[-1])
    print()
    print(
        "| method | wall s | CPU s | peak RSS MB | frames out | frames decoded | seeks | speed-up (wall / CPU) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {METHODS[r['method']]} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_mb']:.0f} | {r['frames']} | "
            f"{r['frames_decoded']} | {r['seeks']} | "
            f"{baseline['wall_s'] / r['wall_s']:.2f}x / {baseline['cpu_s'] / r['cpu_s']:.2f}x |"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nCPUs: {os.cpu_count()}, 1-min load average at the end: {load:.1f}")
    identical = len({r["sha1"] for r in results}) == 1
    print(f"all methods returned identical frames: {'yes' if identical else 'NO'}")


if __name__ == "__main__":
    main()
