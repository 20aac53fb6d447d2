"""Benchmark: the CUDA path. Two parts, one run:

1. Parity: the bundled demo model answers questions about its example video on the CPU (float32) and on the GPU
   (float32 and bfloat16); prints the answers, whether they match the CPU's, the largest difference of the
   visual tokens, and the seconds per answer.
2. Speed and memory: the released 2B shape (UMT-L + Qwen2.5-1.5B dims, random weights, bfloat16, whole depth)
   on the GPU: vision tower (UMT + ToMe + MLP), LLM prefill without and with video-level compression (the
   published uniform0_attention setting) and decode, for several frame counts. Each stage gets its achieved
   TFLOP/s from the analytical FLOPs of `videochat_flash.eval.flops`, and the measured peak GPU memory is set
   beside that module's estimate, which the FLOPs/memory table in this folder's README relies on.

    python benchmarks/bench_gpu.py                        # needs a CUDA GPU; ~3 min on one H100/H200
    python benchmarks/bench_gpu.py --frames-224 64,1024 --frames-448 64 --skip-parity

Timings use ``torch.cuda.synchronize`` around each stage (the first repetition is a warm-up and not counted).
Not a test: never run in CI.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import command_line, markdown_table, random_model, real_config_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "videochat-flash-demo"
QUESTIONS = (
    "Describe the video.",
    "What colour is the shape?\n(A) red (B) green (C) blue (D) yellow (E) white\n"
    "Answer with the option's letter from the given choices directly.",
    "How many shapes does the video show?",
)
TEXT_TOKENS = 64  # prompt tokens around the visual block (system, roles, question), as flops.estimate assumes
NEW_TOKENS = 16


def gpu_line() -> str:
    p = torch.cuda.get_device_properties(0)
    return (
        f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs; torch {torch.__version__}, "
        f"CUDA {torch.version.cuda}"
    )


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seconds(fn) -> tuple[float, object]:
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_bytes() -> float:
    """Peak GPU memory since `reset_peak` (NaN off the GPU: the --device cpu smoke run)."""
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else float("nan")


def free_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------ parity
def parity(device: str, emit) -> None:
    from videochat_flash.inference.session import encode_video
    from videochat_flash.model.videochat import VideoChatFlash

    video = DEMO / "example.mp4"
    runs = {}
    tokens = {}
    for label, where, dtype in (
        ("cpu float32", "cpu", "float32"),
        (f"{device} float32", device, "float32"),
        (f"{device} bfloat16", device, "bfloat16"),
    ):
        model = VideoChatFlash.from_pretrained(DEMO, device=where, dtype=dtype)
        tokens[label] = encode_video(model, str(video)).tokens.float().cpu()
        model.chat(str(video), QUESTIONS[0], generation={"max_new_tokens": 4})  # warm-up (kernels, caches)
        answers, took = [], []
        for q in QUESTIONS:
            start = time.perf_counter()
            answer, _ = model.chat(str(video), q, generation={"max_new_tokens": 48})
            took.append(time.perf_counter() - start)
            answers.append(answer)
        runs[label] = (answers, took)
        del model
        free_cache()
    base_answers = runs["cpu float32"][0]
    rows = []
    for label, (answers, took) in runs.items():
        diff = (tokens[label] - tokens["cpu float32"]).abs().max().item()
        same = sum(a == b for a, b in zip(answers, base_answers, strict=True))
        rows.append([label, f"{same}/{len(answers)}", f"{diff:.2e}", f"{sum(took) / len(took):.3f}"])
    emit(f"Demo model on its example video ({len(QUESTIONS)} questions, greedy, up to 48 new tokens):")
    emit()
    emit(
        markdown_table(
            ["device / dtype", "answers equal to CPU fp32", "max |visual token - CPU fp32|", "s per answer"],
            rows,
        )
    )
    emit()
    for label, (answers, _) in runs.items():
        emit(f"- {label}: " + " | ".join(repr(a) for a in answers))
    emit()


# ------------------------------------------------------------------------------------------------ speed
def prompt_ids() -> list[int]:
    from videochat_flash.inference.prompt import IMAGE_TOKEN_INDEX

    half = TEXT_TOKENS // 2
    return [7] * half + [IMAGE_TOKEN_INDEX] + [11] * (TEXT_TOKENS - half)


def speed(size: int, frame_counts: list[int], device: str, emit) -> None:
    from videochat_flash.config import CompressionConfig, VideoChatFlashConfig
    from videochat_flash.eval import flops
    from videochat_flash.inference.generate import GenerationConfig, generate
    from videochat_flash.model.videochat import default_clip_batch_size

    config_dict = real_config_dict("2b", size)
    model = random_model(config_dict, torch.bfloat16).to(device)
    model.clip_batch_size = default_clip_batch_size(model)
    cfg = VideoChatFlashConfig.from_dict(config_dict)
    published = CompressionConfig.published()
    settings = GenerationConfig(max_new_tokens=NEW_TOKENS)
    rows = []
    for frames in frame_counts:
        est = flops.estimate(
            cfg, frames, text_tokens=TEXT_TOKENS, new_tokens=NEW_TOKENS, clip_batch=model.clip_batch_size
        )
        pixels = torch.randn(frames, 3, size, size, device=device, dtype=torch.bfloat16)
        with torch.inference_mode():
            model.encode_pixels(pixels[: 4 * model.clip_batch_size])  # warm-up
            reset_peak()
            t_vision, visual = seconds(partial(model.encode_pixels, pixels))
            vision_peak = peak_bytes()
            del pixels
            embeds, span = model.embed_with_visual(prompt_ids(), visual)
            results = {}
            for name, compression in (("plain", None), ("compressed", published)):
                warm_up = GenerationConfig(max_new_tokens=2)
                generate(model.llm, embeds[None], warm_up, visual=span, compression=compression)
                reset_peak()
                res = generate(model.llm, embeds[None], settings, visual=span, compression=compression)
                results[name] = (res, peak_bytes())
        f = est["flops"]
        plain, squeezed = results["plain"], results["compressed"]
        decode_tps = (NEW_TOKENS - 1) / plain[0].decode_seconds
        decode_tps_c = (NEW_TOKENS - 1) / squeezed[0].decode_seconds
        rows.append(
            [
                frames,
                est["tokens"]["prompt"],
                f"{t_vision:.2f} ({f['vision_total'] / t_vision / 1e12:.0f})",
                f"{plain[0].prefill_seconds:.2f} ({f['prefill']['total'] / plain[0].prefill_seconds / 1e12:.0f})",
                f"{squeezed[0].prefill_seconds:.2f} "
                f"({f['prefill_compressed']['total'] / squeezed[0].prefill_seconds / 1e12:.0f})",
                f"{decode_tps:.0f} / {decode_tps_c:.0f}",
                f"{max(vision_peak, plain[1]) / 2**30:.1f} / {est['memory']['peak'] / 2**30:.1f}",
                f"{max(vision_peak, squeezed[1]) / 2**30:.1f} / {est['memory']['peak_compressed'] / 2**30:.1f}",
            ]
        )
        print(f"  {frames} frames done", file=sys.stderr, flush=True)
        del visual, embeds, results
        free_cache()
    emit(
        f"2B shape at {size} px, random weights, bfloat16, whole depth; clip batch {model.clip_batch_size}; "
        f"{TEXT_TOKENS} text tokens, {NEW_TOKENS} new tokens. Seconds (achieved TFLOP/s, analytical FLOPs); "
        "peak GPU memory measured / estimated by `videochat_flash.eval.flops` (GiB):"
    )
    emit()
    emit(
        markdown_table(
            [
                "frames",
                "prompt tokens",
                "vision s (TFLOP/s)",
                "prefill s (TFLOP/s)",
                "prefill compressed s (TFLOP/s)",
                "decode tok/s plain / compressed",
                "peak GiB plain meas / est",
                "peak GiB compressed meas / est",
            ],
            rows,
        )
    )
    emit()
    del model
    free_cache()


def backends(device: str, emit) -> None:
    """PyTorch's default SDPA dispatch (cuDNN first on Hopper) against `model.attention.DECODE_BACKENDS`.

    Each setting gets prompt lengths it has not seen yet (cuDNN builds a plan per new shape, and it caches them),
    so the first answer and the decode of each row pay what a fresh process pays.
    """
    from videochat_flash.inference.generate import GenerationConfig, generate
    from videochat_flash.model import attention
    from videochat_flash.model.videochat import VideoChatFlash

    ours = attention.DECODE_BACKENDS
    demo_bf16 = VideoChatFlash.from_pretrained(DEMO, device=device, dtype="bfloat16")
    big = random_model(real_config_dict("2b", 224), torch.bfloat16).to(device)
    video = str(DEMO / "example.mp4")
    rows = []
    for offset, (label, setting) in enumerate((("default dispatch", None), ("cuDNN only for prefill (ours)", ours))):
        attention.DECODE_BACKENDS = setting
        question = "Describe the video" + "." * (offset + 1)  # a prompt length the other row did not use
        t_chat, _ = seconds(partial(demo_bf16.chat, video, question))
        t_chat2, _ = seconds(partial(demo_bf16.chat, video, question))
        speeds = []
        for rep in range(3):
            length = 1100 + 100 * offset + rep  # unseen by either setting
            embeds = torch.randn(1, length, big.config.llm.hidden_size, device=device, dtype=torch.bfloat16)
            res = generate(big.llm, embeds, GenerationConfig(max_new_tokens=32))
            speeds.append(31 / res.decode_seconds)
        rows.append([label, f"{t_chat:.3f}", f"{t_chat2:.3f}", " / ".join(f"{x:.0f}" for x in speeds)])
    attention.DECODE_BACKENDS = ours
    emit(
        "SDPA backends (bfloat16): demo-model answer, first and second time; 2B-shape decode, 3 fresh prompts:"
    )
    emit()
    emit(
        markdown_table(
            ["SDPA", "demo answer 1st s", "demo answer 2nd s", "2B decode tok/s (3 prompts)"], rows
        )
    )
    emit()
    del demo_bf16, big
    free_cache()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames-224", default="64,512,2048,8192", help="frame counts at 224 px")
    parser.add_argument("--frames-448", default="64,512,2048", help="frame counts at 448 px ('' to skip)")
    parser.add_argument("--skip-parity", action="store_true", help="skip the demo-model CPU/GPU comparison")
    parser.add_argument("--out", type=Path, default=None, help="also write the output to this file")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only smoke-tests the script")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    lines: list[str] = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    emit(f"$ {command_line()}")
    emit(gpu_line() if args.device.startswith("cuda") else "smoke run on the CPU (no GPU numbers)")
    emit()
    if not args.skip_parity:
        parity(args.device, emit)
    if args.device.startswith("cuda"):
        backends(args.device, emit)
    for size, counts in ((224, args.frames_224), (448, args.frames_448)):
        frames = [int(x) for x in counts.split(",") if x.strip()]
        if frames:
            speed(size, frames, args.device, emit)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
