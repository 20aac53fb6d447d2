"""Evaluation commands, mounted by `videochat_flash.cli` through `add_commands(subparsers)`:

    videochat-flash eval bench NAME --annotations DIR --videos DIR [--model M] [--limit N] [--output run.jsonl]
    videochat-flash eval synth --model DIR --seed S --num-samples N [--json]
    videochat-flash eval niah --haystack VIDEO --needles FILE.json --images DIR [--frames ...] [--pixel] ...
    videochat-flash eval niah-build --captions FILE.json --images DIR --out DIR [--single-hop]
    videochat-flash flops --model 7b-448 --frames 1024 [--compress]

Benchmarks run with the original evaluation settings (REFERENCE §11, §12): 512 frames (LVBench 640), greedy
decoding, each benchmark's max_new_tokens, the chat prompt ``"<image>\\n" + time message + " " + prompt``,
video-level compression off unless ``--compress``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(float(x)) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _compression(args, num_layers: int = 28):
    """``--compress*`` options, else compression explicitly off (as the original harness forces, §8), so a
    checkpoint whose config enables ``mm_llm_compress`` is still evaluated without it."""
    from ..cli import compression_from_args
    from ..config import CompressionConfig

    return compression_from_args(args, num_layers) or CompressionConfig(enabled=False)


class _LastVideo:
    """Encode each video once while consecutive questions share it (benchmarks list a video's questions together)."""

    def __init__(self, model, max_frames: int, cache=None):
        self.model, self.max_frames, self.cache = model, max_frames, cache
        self.key, self.tokens = None, None

    def __call__(self, video, media: dict | None = None):
        from ..inference.session import encode_video

        key = (str(video), json.dumps(media or {}, sort_keys=True))
        if key != self.key:
            self.key, self.tokens = None, None
            self.tokens = encode_video(
                self.model, video, max_num_frames=self.max_frames, media=media, cache=self.cache
            )
            self.key = key
        return self.tokens


# ---------------------------------------------------------------------- eval bench
def cmd_bench(args) -> int:
    from ..cli import load_model
    from ..inference.cache import TokenCache
    from ..inference.session import chat
    from . import BenchmarkError, format_table, load_benchmark, run_benchmark

    bench = load_benchmark(args.name, args.annotations, args.videos, args.subtitles)
    output = Path(args.output or f"{bench.name}.jsonl")
    model = load_model(args)
    compression = _compression(args, model.config.llm.num_hidden_layers)
    max_frames = args.max_frames or bench.max_frames
    videos = _LastVideo(model, max_frames, TokenCache(args.cache_dir) if args.cache_dir else None)

    def answer(item) -> str:
        if item.video is None:
            raise BenchmarkError(f"{item.id} has no video path")
        text, _ = chat(
            model,
            videos(item.video, item.media),
            item.prompt,
            max_num_frames=max_frames,
            generation={"max_new_tokens": item.max_new_tokens, "do_sample": False},
            compression=compression,
        )
        return text

    metrics = run_benchmark(bench, answer, output, limit=args.limit, progress=not args.quiet)
    print(format_table(metrics))
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    print(f"predictions: {output}; metrics: {output.with_name(stem + '.metrics.json')}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------- eval synth
def cmd_synth(args) -> int:
    from ..cli import load_model
    from ..data import synth
    from ..inference.session import chat

    model = load_model(args)
    compression = _compression(args, model.config.llm.num_hidden_layers)
    videos = _LastVideo(model, args.max_frames)
    progress = not args.quiet and not args.json

    def answer(record: dict, video: str) -> str:
        text, _ = chat(
            model,
            videos(video),
            record["prompt"],
            max_num_frames=args.max_frames,
            generation={"max_new_tokens": args.max_new_tokens, "do_sample": False},
            compression=compression,
        )
        return text

    extra = {}
    if args.niah_lengths:
        extra["niah_lengths"] = args.niah_lengths
    if args.niah_depths:
        extra["niah_depths"] = args.niah_depths
    with tempfile.TemporaryDirectory(prefix="vcf-eval-") as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        synth.make_eval_set(
            root,
            args.seed,
            args.num_samples,
            size=args.size,
            fps=args.fps,
            short_seconds=args.short_seconds,
            long_seconds=args.long_seconds,
            needle_seconds=args.needle_seconds,
            num_single=args.num_single,
            workers=args.workers,
            progress=progress,
            **extra,
        )
        result = synth.evaluate(root, answer, progress=progress, predictions_path=args.predictions)
    out = {"seed": args.seed, "num_samples": args.num_samples, "model": model.name_or_path, **result}
    if args.json:
        print(json.dumps(out))
        return 0
    print(format_synth(out))
    return 0


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def format_synth(result: dict) -> str:
    lines = [f"synthetic held-out set: seed {result['seed']}, {result['num_records']} questions", ""]
    lines += ["| task | accuracy (%) | n |", "|---|---|---|"]
    for task, acc in result["per_task"].items():
        label = "grounding (R@0.5)" if task == "grounding" else task
        lines.append(f"| {label} | {_pct(acc)} | {result['counts'].get(task, 0)} |")
    lines += ["", f"mc_accuracy: {_pct(result['mc_accuracy'])}"]
    lines.append(
        f"grounding R@0.5: {_pct(result['grounding_r@0.5'])}  (mIoU {_pct(result['grounding_miou'])})"
    )
    lines.append(f"niah accuracy: {_pct(result['niah_accuracy'])}")
    grid = result.get("niah") or {}
    if grid:
        depths = sorted({d for row in grid.values() for d in row}, key=float)
        lines += ["", "| haystack (s) | " + " | ".join(f"depth {d}" for d in depths) + " |"]
        lines.append("|---" * (len(depths) + 1) + "|")
        for h, row in grid.items():
            lines.append(f"| {h} | " + " | ".join(_pct(row.get(d)) for d in depths) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- eval niah
def cmd_niah(args) -> int:
    from ..cli import compression_from_args, load_model, make_cache
    from . import niah

    kind = niah.needle_kind(args.needles)
    if args.multi_hop and kind != "multi-hop":
        raise niah.NiahError(f"--multi-hop given but {args.needles} holds single-hop records")
    needles = niah.load_needles(args.needles, args.images)
    if args.limit:
        needles = needles[: args.limit]
    if not Path(args.haystack).exists():
        raise niah.NiahError(f"haystack video not found: {args.haystack}")
    model = load_model(args)
    name = model.name_or_path
    if args.yarn_factor:
        niah.apply_yarn(model, args.yarn_factor, args.yarn_original_max)
    result = niah.run_niah(
        model,
        args.haystack,
        needles,
        frames=args.frames,
        depths=args.depths or niah.DEFAULT_DEPTHS,
        pixel=args.pixel,
        output_dir=args.output,
        cache=make_cache(args),
        haystack_frames=args.haystack_frames,
        chunk_tokens=args.chunk_tokens,
        # embedding level: None is off; the pixel level goes through chat, where None means "the checkpoint's"
        compression=(_compression if args.pixel else compression_from_args)(
            args, model.config.llm.num_hidden_layers
        ),
        progress=not args.quiet and not args.json,
        model_name=name,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(niah.format_result(result))
        print(
            f"results: {Path(args.output) / 'niah.json'}, heatmap: {Path(args.output) / 'niah_heatmap.png'}"
        )
    return 0


def cmd_niah_build(args) -> int:
    from . import niah

    if args.single_hop:
        name = args.file_name or "niah-singlehop.json"
        path = niah.build_single_hop(args.captions, Path(args.out) / name, images=args.images)
        images = args.images or "."
    else:
        path = niah.build_multi_hop(
            args.captions,
            args.out,
            images=args.images,
            num_samples=args.num_samples,
            hops=args.hops,
            distractors=args.distractors,
            num_options=args.options,
            seed=args.seed,
            file_name=args.file_name or "niah-multihop.json",
        )
        images = args.out
    print(f"wrote {path}; evaluate with: videochat-flash eval niah --needles {path} --images {images} ...")
    return 0


# ---------------------------------------------------------------------- flops
def cmd_flops(args) -> int:
    from ..cli import compression_from_args, default_model
    from . import flops

    name, config = flops.model_config(args.model or default_model())
    dtype = "bfloat16" if args.dtype == "auto" else args.dtype
    estimates = [
        flops.estimate(
            config,
            n,
            compression=compression_from_args(args, config.llm.num_hidden_layers),
            text_tokens=args.text_tokens,
            new_tokens=args.new_tokens,
            dtype=dtype,
            name=name,
        )
        for n in args.frames
    ]
    if args.json:
        print(json.dumps(estimates[0] if len(estimates) == 1 else estimates))
    else:
        print("\n\n".join(flops.format_estimate(e) for e in estimates))
    return 0


# ---------------------------------------------------------------------- parser
def add_commands(sub) -> None:
    """Add ``eval {bench,synth,niah,niah-build}`` and ``flops`` to the top-level sub-parsers."""
    from ..cli import add_model_options
    from ..data import synth
    from .bench import BENCHMARKS

    ev = sub.add_parser("eval", help="benchmarks, synthetic evaluation, needle-in-a-haystack")
    evsub = ev.add_subparsers(dest="eval_command", required=True)

    p = evsub.add_parser(
        "bench",
        help="run a standard video benchmark with the original settings (resumable)",
        description="Answers every question with greedy decoding and the benchmark's max_new_tokens; predictions "
        "go to a JSONL (a rerun resumes), metrics to <stem>.metrics.json/.md, the table to stdout.",
    )
    p.add_argument("name", help=f"benchmark: {', '.join(BENCHMARKS)}")
    p.add_argument("--annotations", required=True, help="official eval_annotations folder")
    p.add_argument("--videos", required=True, help="root folder of the benchmark's videos")
    p.add_argument("--subtitles", default=None, help="subtitle folder (videomme_w_subtitle, longvideobench)")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--max-frames", type=int, default=None, help="frames per video (default 512; LVBench 640)")
    p.add_argument("--output", default=None, help="predictions JSONL (default: ./<benchmark>.jsonl)")
    p.add_argument("--cache-dir", default=None, help="also keep encoded videos in this token cache")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_options(p)
    p.set_defaults(func=cmd_bench)

    p = evsub.add_parser(
        "synth", help="accuracy on a fresh held-out synthetic set (MC tasks, NIAH, grounding)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out set (default 0)")
    p.add_argument("--num-samples", type=int, default=20, help="videos asked MC + grounding questions")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", default=None, help="keep the generated set here (default: a temporary folder)")
    p.add_argument("--predictions", default=None, help="write every scored record to this JSONL")
    p.add_argument("--max-frames", type=int, default=512)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument(
        "--num-single",
        type=int,
        default=0,
        help="also one-big-shape videos (the training curriculum's first pool), scored as single_* tasks",
    )
    synth.add_video_options(p)
    p.add_argument(
        "--niah-lengths", type=_floats, default=None, help="haystack seconds (default 1,2,4,8 x longest)"
    )
    p.add_argument("--niah-depths", type=_floats, default=None, help="needle depths (default 0,.25,.5,.75,1)")
    p.add_argument("--workers", type=int, default=1, help="processes generating videos")
    p.add_argument("--quiet", action="store_true")
    add_model_options(p)
    p.set_defaults(func=cmd_synth)

    p = evsub.add_parser(
        "niah",
        help="needle-in-a-video-haystack, single or multi hop (embedding level, or --pixel end to end)",
        description="Accuracy per (frames, depth) -> OUTPUT/niah.json, per-question lines -> OUTPUT/niah.jsonl "
        "(a rerun resumes), figure -> OUTPUT/niah_heatmap.png. A haystack shorter than the frame count is repeated.",
    )
    p.add_argument("--haystack", required=True, help="haystack video")
    p.add_argument(
        "--needles", required=True, help="needle file in the official format (single or multi hop)"
    )
    p.add_argument("--images", default=None, help="folder the needle image paths are relative to")
    p.add_argument(
        "--frames", type=_ints, default=(1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000)
    )
    p.add_argument("--depths", type=_floats, default=None, help="needle depths (default 0,0.2,...,1.0)")
    p.add_argument("--multi-hop", action="store_true", help="require a multi-hop file (detected anyway)")
    p.add_argument(
        "--pixel", action="store_true", help="insert needle frames into the video, run the chat path"
    )
    p.add_argument("--yarn-factor", type=float, default=None, help="YaRN rope scaling factor (paper: 4)")
    p.add_argument(
        "--yarn-original-max",
        type=int,
        default=None,
        help="original_max_position_embeddings for YaRN (default: the config's max_position_embeddings)",
    )
    p.add_argument("--output", default="niah_results", help="output folder (default ./niah_results)")
    p.add_argument("--haystack-frames", type=int, default=None, help="frames taken from the haystack at most")
    p.add_argument(
        "--chunk-tokens", type=int, default=None, help="prefill in chunks of N tokens (less memory)"
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N needles")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the visual-token cache")
    p.add_argument(
        "--cache-dir", default=None, help="visual-token cache folder (default ~/.cache/videochat-flash)"
    )
    p.add_argument("--quiet", action="store_true")
    add_model_options(p)
    p.set_defaults(func=cmd_niah)

    p = evsub.add_parser(
        "niah-build",
        help="build a needle set from your captioned images (multi hop: renders instruction images)",
        description="Input: a JSON list of {image, caption[, question, options, answer]} (image paths relative "
        "to --images). Multi hop writes OUT/<file> in the official format and OUT/multi/*.jpg.",
    )
    p.add_argument("--captions", required=True, help="JSON list of {image, caption, ...}")
    p.add_argument("--images", default=None, help="folder the image paths are relative to")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--single-hop", action="store_true", help="single-hop records (needs question/options/answer)"
    )
    p.add_argument("--num-samples", type=int, default=100)
    p.add_argument("--hops", type=int, default=3, help="instruction images in the true chain (default 3)")
    p.add_argument(
        "--distractors", type=int, default=3, help="instruction images in a dead-end chain (default 3)"
    )
    p.add_argument("--options", type=int, default=4, help="options of the caption question (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--file-name", default=None, help="name of the JSON file written into --out")
    p.set_defaults(func=cmd_niah_build)

    p = sub.add_parser(
        "flops",
        help="analytical FLOPs and memory per stage (built-in shapes 2b-448, 7b-224, 7b-448, or a checkpoint)",
        description="--model takes a built-in shape name or a checkpoint directory (only config.json is read). "
        "The LLM prefill is shown without and with video-level compression (--compress* choose the "
        "setting; default the published uniform0_attention [4,18] [1,0.75,0.25]).",
    )
    p.add_argument("--frames", type=_ints, required=True, help="frame count(s), e.g. 1024 or 1000,5000,10000")
    p.add_argument("--text-tokens", type=int, default=64, help="prompt tokens besides the video (default 64)")
    p.add_argument("--new-tokens", type=int, default=256, help="answer tokens decoded (default 256)")
    p.add_argument("--json", action="store_true")
    add_model_options(p)
    p.set_defaults(func=cmd_flops)
