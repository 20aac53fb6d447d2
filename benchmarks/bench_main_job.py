"""Benchmark: the main job — questions about one long video, and memory while encoding many frames.

1. First vs second question about the same 10-minute video through `inference.session.chat` with an on-disk
   `TokenCache`: the first question samples, decodes and encodes the video; the second is a cache hit and
   only prefills + decodes. Run for the tiny test model and for a randomly initialised model with the 2B
   shapes (UMT-L + Qwen2.5-1.5B dims, 224 px, float32). A 64-frame question through the 2B-shaped model takes
   many minutes on a small CPU, so its questions use a short window of the video (``--window-2b`` seconds, via
   ``media={"start", "end"}``), which the table says.
2. Peak RSS of `encode_video` for 64, 512 and 4096 frames of a 70-minute video (tiny model widths, real
   224-px frame size), each in a fresh subprocess. Streaming keeps it flat apart from the token tensor,
   whose size is shown next to it (as is what holding every frame at once would have cost).

    python benchmarks/bench_main_job.py                         # ~4-5 min on 2 CPU cores
    python benchmarks/bench_main_job.py --skip-2b --rss-frames 64,512,4096,8192 --long-minutes 140

Videos are generated once with PyAV (libx264) into ``--workdir`` (default: a temp folder). Not a test:
never run in CI.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    append_readme,
    command_line,
    current_rss_bytes,
    machine_line,
    markdown_table,
    peak_rss_bytes,
    random_model,
    real_config_dict,
    reset_peak_rss,
)

STAGES = ("hash", "decode_video", "encode", "prefill", "generate")
QUESTIONS = ("Describe the video in detail.", "What happens at the end of the video?")


# ------------------------------------------------------------------------------------------------ videos
def generate_video(path: Path, *, seconds: int, fps: int, size: int) -> float:
    """A moving random-block pattern plus a frame counter (every frame differs); returns seconds taken."""
    import av

    rng = np.random.default_rng(0)
    field = rng.integers(0, 256, (size, size * 8, 3), dtype=np.uint8)
    started = time.perf_counter()
    with av.open(str(path), "w") as container:
        gop = 2 * fps
        options = {"preset": "ultrafast", "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0"}
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for i in range(seconds * fps):
            offset = i % (field.shape[1] - size)
            rgb = np.ascontiguousarray(field[:, offset : offset + size])
            for bit in range(min(16, size // 4)):
                rgb[:4, bit * 4 : bit * 4 + 4] = 255 if (i >> bit) & 1 else 0
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return time.perf_counter() - started


def ensure_video(workdir: Path, *, seconds: int, fps: int, size: int) -> Path:
    path = workdir / f"bench_{seconds}s_{size}px_{fps}fps.mp4"
    if not path.exists():
        tmp = path.with_suffix(".tmp.mp4")
        took = generate_video(tmp, seconds=seconds, fps=fps, size=size)
        tmp.rename(path)
        print(f"generated {path.name} ({seconds} s, {size}x{size}, {fps} fps) in {took:.0f} s", flush=True)
    return path


# ------------------------------------------------------------------------------------------------ models
def tiny_checkpoint(workdir: Path, image_size: int) -> Path:
    from videochat_flash.model.factory import build_tiny_checkpoint

    path = workdir / f"tiny_{image_size}px"
    if not (path / "config.json").exists():
        build_tiny_checkpoint(path, image_size=image_size)
    return path


def load_tiny(path: Path):
    from videochat_flash.model.videochat import VideoChatFlash

    return VideoChatFlash.from_pretrained(path, device="cpu", dtype="float32")


def build_2b(image_size: int):
    from videochat_flash.model.factory import train_tokenizer

    return random_model(real_config_dict("2b", image_size), torch.float32, tokenizer=train_tokenizer())


# ------------------------------------------------------------------------------------------------ questions
def ask_twice(
    model, video: Path, cache_dir: Path, *, max_frames: int, media: dict | None, new_tokens: int
) -> dict:
    """Ask two questions about ``video`` with a fresh cache; wall time and stage timings of each."""
    from videochat_flash.inference.cache import TokenCache
    from videochat_flash.inference.session import Timings, chat, encode_video

    cache = TokenCache(cache_dir)
    cache.clear()
    generation = {"max_new_tokens": new_tokens, "do_sample": False}
    out = {}
    for i, question in enumerate(QUESTIONS):
        timings = Timings()
        hits_before = cache.hits
        start = time.perf_counter()
        chat(
            model,
            str(video),
            question,
            max_num_frames=max_frames,
            media=media,
            generation=generation,
            cache=cache,
            timings=timings,
        )
        wall = time.perf_counter() - start
        out[f"q{i + 1}"] = {
            "wall": wall,
            "hit": cache.hits > hits_before,
            **{s: timings.get(s, 0.0) for s in STAGES},
        }
    out["hits"], out["misses"] = cache.hits, cache.misses
    tokens = encode_video(model, str(video), max_num_frames=max_frames, media=media, cache=cache)  # a hit
    out["frames"] = tokens.num_frames
    out["visual_tokens"] = tokens.num_tokens
    return out


def ask_twice_best(model, video: Path, cache_dir: Path, repeats: int, **kwargs) -> dict:
    """`ask_twice` ``repeats`` times (fresh cache each); each question's fastest run counts (shared machine)."""
    runs = [ask_twice(model, video, cache_dir, **kwargs) for _ in range(max(1, repeats))]
    out = dict(runs[-1])
    for q in ("q1", "q2"):
        out[q] = min((r[q] for r in runs), key=lambda t: t["wall"])
    out["repeats"] = len(runs)
    return out


def question_rows(name: str, r: dict) -> list[list[str]]:
    rows = []
    for q in ("q1", "q2"):
        t = r[q]
        other = t["wall"] - sum(t[s] for s in STAGES)
        stages = [f"{t[s]:.2f}" for s in STAGES]
        rows.append(
            [
                name,
                r["frames"],
                q[1],
                "hit" if t["hit"] else "miss",
                f"{t['wall']:.2f}",
                *stages,
                f"{other:.2f}",
            ]
        )
    return rows


# ------------------------------------------------------------------------------------------------ RSS child
def rss_child(checkpoint: Path, video: Path, frames: int) -> dict:
    """In a fresh process: load the tiny model, encode up to ``frames`` frames, report memory."""
    from videochat_flash.inference.session import Timings, encode_video

    model = load_tiny(checkpoint)
    gc.collect()
    peak_before = peak_rss_bytes()
    reset = reset_peak_rss()  # so the peak below is the encoding's own, not the model load's
    before = current_rss_bytes()
    timings = Timings()
    start = time.perf_counter()
    tokens = encode_video(model, str(video), max_num_frames=frames, timings=timings)
    wall = time.perf_counter() - start
    size = model.config.image_size
    return {
        "max_frames": frames,
        "frames": tokens.num_frames,
        "token_bytes": tokens.tokens.numel() * tokens.tokens.element_size(),
        "rss_before": before,
        "peak_before": peak_before,
        "peak": peak_rss_bytes(),
        "peak_reset": reset,
        "wall": wall,
        "decode_video": timings.get("decode_video", 0.0),
        "encode": timings.get("encode", 0.0),
        "all_frames_uint8": tokens.num_frames * size * size * 3,
        "all_pixels_fp32": tokens.num_frames * 3 * size * size * 4,
    }


def run_rss_child(checkpoint: Path, video: Path, frames: int) -> dict:
    command = [sys.executable, __file__, "--_rss-child", str(frames)]
    command += ["--_checkpoint", str(checkpoint), "--_video", str(video)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video-minutes", type=int, default=10, help="question video length (default 10)")
    parser.add_argument("--video-size", type=int, default=64, help="question video width/height (default 64)")
    parser.add_argument("--video-fps", type=int, default=2, help="question video frame rate (default 2)")
    parser.add_argument("--long-minutes", type=int, default=70, help="RSS video length (default 70 = 4200 s)")
    parser.add_argument(
        "--tiny-image-size", type=int, default=224, help="tiny model frame size (default 224)"
    )
    parser.add_argument("--max-frames", type=int, default=512, help="max_num_frames of tiny questions")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per answer (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="tiny question pairs run (fastest counts)")
    parser.add_argument("--skip-2b", action="store_true", help="only the tiny model")
    parser.add_argument("--size-2b", type=int, default=224, choices=(224, 448), help="2B frame size")
    parser.add_argument("--window-2b", type=float, default=4.0, help="seconds of video the 2B questions see")
    parser.add_argument("--rss-frames", default="64,512,4096", help="frame counts for the RSS runs")
    parser.add_argument("--workdir", type=Path, default=None, help="videos/checkpoints/cache (default: temp)")
    parser.add_argument("--readme", action="store_true", help="append the output to benchmarks/README.md")
    parser.add_argument("--_rss-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_checkpoint", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_video", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._rss_child is not None:
        print(json.dumps(rss_child(args._checkpoint, args._video, args._rss_child)))
        return ""

    workdir = args.workdir or Path(tempfile.gettempdir()) / "videochat_flash_bench_main_job"
    workdir.mkdir(parents=True, exist_ok=True)
    out: list[str] = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    emit(f"$ {command_line()}")
    emit(machine_line())
    rss_frames = [int(x) for x in args.rss_frames.split(",") if x.strip()]
    video = ensure_video(workdir, seconds=args.video_minutes * 60, fps=args.video_fps, size=args.video_size)
    long_video = ensure_video(workdir, seconds=args.long_minutes * 60, fps=1, size=32)
    checkpoint = tiny_checkpoint(workdir, args.tiny_image_size)
    emit(
        f"question video: {args.video_minutes} min, {args.video_size}x{args.video_size}, {args.video_fps} fps; "
        f"RSS video: {args.long_minutes} min, 32x32, 1 fps"
    )
    emit()

    # ---------------------------------------------------------------- first vs second question
    q_rows, ratio_rows = [], []
    opts = dict(max_frames=args.max_frames, new_tokens=args.new_tokens)

    def record(name: str, setting: str, r: dict) -> None:
        q_rows.extend(question_rows(name, r))
        ratio = r["q1"]["wall"] / r["q2"]["wall"]
        ratio_rows.append(
            [name, setting, r["visual_tokens"], f"{ratio:.1f}×", f"{r['hits']} / {r['misses']}"]
        )
        emit(f"{name}: first {r['q1']['wall']:.2f} s, second {r['q2']['wall']:.2f} s")

    tiny = load_tiny(checkpoint)
    r = ask_twice_best(tiny, video, workdir / "cache_tiny", args.repeats, media=None, **opts)
    setting = (
        f"{r['frames']} frames @ {args.tiny_image_size} px (max_num_frames={args.max_frames}), whole video; "
        f"fastest of {r['repeats']} fresh-cache pairs"
    )
    record("tiny", setting, r)
    del tiny
    gc.collect()
    if not args.skip_2b:
        start = time.perf_counter()
        model = build_2b(args.size_2b)
        took = time.perf_counter() - start
        emit(f"built the 2B-shaped random model (float32, {args.size_2b} px) in {took:.0f} s")
        media = {"start": 0.0, "end": args.window_2b}
        r = ask_twice(model, video, workdir / "cache_2b", media=media, **opts)
        setting = (
            f"{r['frames']} frames @ {args.size_2b} px: only seconds 0-{args.window_2b:g} of the video "
            "(media start/end), since 64 frames take many minutes on this CPU; one pair"
        )
        record("2B-shaped fp32", setting, r)
        del model
        gc.collect()
    emit()
    emit(
        f"First vs second question on the same video: chat() with a TokenCache, {args.new_tokens} new tokens, "
        "greedy; seconds; 'other' = wall minus the named stages (model fingerprint, tokenisation, ...):"
    )
    emit()
    headers = ["model", "frames", "question", "cache", "wall s", *STAGES, "other"]
    emit(markdown_table(headers, q_rows, "lrll" + "r" * (len(headers) - 4)))
    emit()
    headers = ["model", "setting", "visual tokens", "first / second", "cache hits / misses"]
    emit(markdown_table(headers, ratio_rows, "llrrr"))

    # ---------------------------------------------------------------- peak RSS
    emit()
    rss_rows, rss_results = [], []
    for frames in rss_frames:
        r = run_rss_child(checkpoint, long_video, frames)
        rss_results.append(r)
        emit(f"RSS run {frames}: peak {mib(r['peak'])} MiB in {r['wall']:.1f} s")
        sizes = [r["peak_before"], r["rss_before"], r["peak"], r["peak"] - r["rss_before"], r["token_bytes"]]
        sizes += [r["all_frames_uint8"], r["all_pixels_fp32"]]
        seconds = f"{r['wall']:.1f} ({r['decode_video']:.1f} / {r['encode']:.1f})"
        rss_rows.append([frames, r["frames"], *map(mib, sizes), seconds])
    emit()
    emit(
        f"Peak RSS of encode_video (tiny model, {args.tiny_image_size} px frames, no cache, a fresh process each; "
        "MiB; peak = VmHWM; 'load peak' = peak while loading the model, after which the peak is reset "
        "(/proc/self/clear_refs) so 'peak RSS' is the encoding's own; 'before' = RSS when encoding starts; "
        "'all frames' / 'all pixels' = what holding every sampled frame at once would need, for comparison; "
        "s = wall (decode / encode)):"
    )
    emit()
    headers = ["max frames", "frames", "load peak", "RSS before", "peak RSS", "peak - before", "token tensor"]
    emit(markdown_table([*headers, "all frames uint8", "all pixels fp32", "s"], rss_rows))
    if not all(r["peak_reset"] for r in rss_results):
        emit("(the peak could not be reset here, so 'peak RSS' may be the model load's peak)")
    emit()
    emit(machine_line().replace("machine:", "at the end:"))
    text = "\n".join(out)
    if args.readme:
        body = "```\n" + out[0] + "\n```\n\n" + "\n".join(out[1:])
        append_readme("bench_main_job.py — first vs second question, peak RSS of long encodes (CPU)", body)
    return text


if __name__ == "__main__":
    main()
