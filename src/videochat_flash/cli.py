"""The `videochat-flash` command: ask / chat / info about videos, and the train / data / eval tools.

Errors a user can cause print one line (``error: ...``) and exit with status 2; ``--debug`` shows the
traceback instead. Progress bars go to stderr, answers to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import VideoChatFlashError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "videochat-flash-demo"
EXIT_USER_ERROR = 2


def default_model() -> str:
    """``$VIDEOCHAT_FLASH_MODEL``, else the bundled demo model of a source checkout."""
    return os.environ.get("VIDEOCHAT_FLASH_MODEL") or str(DEFAULT_MODEL_DIR)


# ---------------------------------------------------------------------- shared options
def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", default=None, help="checkpoint directory or hub id (default: the bundled demo model)"
    )
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    g.add_argument(
        "--dtype",
        default="auto",
        help="auto (bfloat16 on CUDA and on CPUs with bf16 matrix units, else float32), float32, bfloat16, float16",
    )
    g.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch")
    g.add_argument(
        "--compress",
        action="store_true",
        help="video-level compression inside the LLM (published setting: uniform0_attention, layers 4,18, ratios 1,0.75,0.25)",
    )
    g.add_argument(
        "--compress-type",
        default=None,
        help="override: attention, uniform, uniform0_attention, uniform1_attention",
    )
    g.add_argument("--compress-layers", type=_ints, default=None, help="override, e.g. 4,18")
    g.add_argument("--compress-ratios", type=_floats, default=None, help="override, e.g. 1,0.75,0.25")


def add_video_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("video")
    g.add_argument(
        "--max-frames", type=int, default=512, help="upper bound of sampled frames (multiple of 8)"
    )
    g.add_argument("--start", type=float, default=None, help="clip window start (seconds)")
    g.add_argument("--end", type=float, default=None, help="clip window end (seconds)")
    g.add_argument("--allow-url", action="store_true", help="let FFmpeg open URLs (http, rtsp, ...)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the visual-token cache")
    g.add_argument(
        "--cache-dir", default=None, help="visual-token cache folder (default ~/.cache/videochat-flash)"
    )


def add_generation_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation (defaults: the checkpoint's generation_config.json, greedy)")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument(
        "--sample", dest="do_sample", action="store_true", default=None, help="sample instead of greedy"
    )
    g.add_argument("--greedy", dest="do_sample", action="store_false", help="greedy decoding")
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--repetition-penalty", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)


def compression_from_args(args, num_layers: int = 28):
    """The --compress* options as a CompressionConfig (None when off); the published layers scale to the depth."""
    from .config import CompressionConfig

    if not (args.compress or args.compress_type or args.compress_layers or args.compress_ratios):
        return None
    base = CompressionConfig.published(num_layers)
    return CompressionConfig(
        enabled=True,
        type=args.compress_type or base.type,
        layers=args.compress_layers or base.layers,
        ratios=args.compress_ratios or base.ratios,
    )


def generation_from_args(args) -> dict:
    keys = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty", "seed")
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if out.get("do_sample") is None:
        out["do_sample"] = False
    return out


def media_from_args(args) -> dict | None:
    if args.start is None and args.end is None:
        return None
    return {
        "start": args.start if args.start is not None else 0.0,
        "end": args.end if args.end is not None else 1e12,
    }


def check_video_arg(video: str, allow_url: bool) -> None:
    if "://" in video:
        if not allow_url:
            raise VideoChatFlashError(f"{video} is a URL; pass --allow-url to let FFmpeg open it")
        return
    if not Path(video).exists():
        raise VideoChatFlashError(f"video not found: {video}")


def load_model(args):
    import torch

    from .model.videochat import VideoChatFlash

    if args.threads:
        torch.set_num_threads(args.threads)
    return VideoChatFlash.from_pretrained(args.model or default_model(), device=args.device, dtype=args.dtype)


def make_cache(args):
    from .inference.cache import TokenCache

    return None if args.no_cache else TokenCache(args.cache_dir)


# ---------------------------------------------------------------------- commands
def cmd_ask(args) -> int:
    from .inference.session import Timings, chat, encode_video

    check_video_arg(args.video, args.allow_url)
    timings = Timings()
    with timings.measure("load_model"):
        model = load_model(args)
    cache = make_cache(args)
    progress = not args.quiet and not args.json
    tokens = encode_video(
        model,
        args.video,
        max_num_frames=args.max_frames,
        media=media_from_args(args),
        cache=cache,
        progress=progress,
        timings=timings,
        allow_url=args.allow_url,
    )
    on_token = None
    if args.stream and not args.json:
        on_token = _streamer(model)
    answer, _ = chat(
        model,
        tokens,
        args.question,
        max_num_frames=args.max_frames,
        generation=generation_from_args(args),
        compression=compression_from_args(args, model.config.llm.num_hidden_layers),
        timings=timings,
        on_token=on_token,
    )
    if args.json:
        out = {
            "answer": answer,
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "cache_hit": bool(cache is not None and cache.hits),
            "frames": tokens.num_frames,
            "visual_tokens": tokens.num_tokens,
            "duration": round(tokens.duration, 3),
            "model": model.name_or_path,
            "notes": tokens.notes,
        }
        print(json.dumps(out))
    elif on_token is None:
        print(answer)
    else:
        print()
    return 0


def _streamer(model):
    """Print tokens as they come (decoding the whole answer so far keeps multi-byte characters intact)."""
    state = {"ids": [], "shown": 0}

    def on_token(token_id: int) -> None:
        state["ids"].append(token_id)
        text = model.tokenizer.decode(state["ids"])
        if not text.endswith("\ufffd"):
            sys.stdout.write(text[state["shown"] :])
            sys.stdout.flush()
            state["shown"] = len(text)

    return on_token


def cmd_chat(args) -> int:
    from .inference.session import chat, encode_video

    check_video_arg(args.video, args.allow_url)
    model = load_model(args)
    tokens = encode_video(
        model,
        args.video,
        max_num_frames=args.max_frames,
        media=media_from_args(args),
        cache=make_cache(args),
        progress=not args.quiet,
        allow_url=args.allow_url,
    )
    interactive = sys.stdin.isatty()
    if interactive:
        print(
            f"{tokens.num_frames} frames encoded ({tokens.duration:.1f} s). Ask away; empty line or Ctrl-D ends."
        )
    history: list[dict] = []
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or not line.strip():
            return 0
        answer, history = chat(
            model,
            tokens,
            line.strip(),
            history=history,
            generation=generation_from_args(args),
            compression=compression_from_args(args, model.config.llm.num_hidden_layers),
        )
        print(answer, flush=True)


def cmd_info(args) -> int:
    from . import video as vid
    from .config import CompressionConfig, VideoChatFlashConfig
    from .model.loading import CONFIG_FILE, resolve_checkpoint

    check_video_arg(args.video, args.allow_url)
    config = VideoChatFlashConfig.from_json_file(
        resolve_checkpoint(args.model or default_model()) / CONFIG_FILE
    )
    media = media_from_args(args) or {}
    plan = vid.plan_sampling(
        args.video,
        args.max_frames,
        min_frames=64,
        local_num_frames=8,
        start=media.get("start"),
        end=media.get("end"),
        allow_url=args.allow_url,
    )
    info = plan.info  # the header facts come with the plan: the file is opened once
    frames = len(plan.indices)
    patches = frames * config.vision.tokens_per_frame
    merged = frames * config.projector.tokens_per_frame
    layers = config.llm.num_hidden_layers
    compression = compression_from_args(args, layers) or CompressionConfig.published(layers)
    stages = [int(merged * r) for r in compression.ratios]
    out = {
        "video": args.video,
        "duration": round(float(info.duration), 3),
        "fps": round(float(info.fps), 3),
        "num_frames": int(info.num_frames),
        "width": info.width,
        "height": info.height,
        "sampled_frames": frames,
        "sampled_seconds": [round(float(t), 2) for t in plan.timestamps],
        "time_message": plan.time_message,
        "image_size": config.image_size,
        "encoder_tokens": patches,
        "visual_tokens": merged,
        "visual_tokens_per_llm_stage": {
            "layers": [1, *compression.layers],
            "tokens": stages,
            "setting": f"{compression.type} layers={list(compression.layers)} ratios={list(compression.ratios)}",
        },
    }
    if args.json:
        print(json.dumps(out))
        return 0
    for key, value in out.items():
        if key == "sampled_seconds":
            shown = ", ".join(f"{t:g}" for t in value[:8]) + (" ..." if len(value) > 8 else "")
            print(f"{key:>28}: {shown}")
        else:
            print(f"{key:>28}: {value if not isinstance(value, str) else value.strip()}")
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videochat-flash", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ask", help="answer one question about a video")
    p.add_argument("video")
    p.add_argument("question")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object (answer, timings, cache_hit, ...)"
    )
    p.add_argument("--stream", action="store_true", help="print the answer token by token")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_options(p)
    add_video_options(p)
    add_generation_options(p)
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("chat", help="multi-turn chat about a video (questions on stdin, one per line)")
    p.add_argument("video")
    p.add_argument("--quiet", action="store_true")
    add_model_options(p)
    add_video_options(p)
    add_generation_options(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("info", help="what would be sampled from a video and how many tokens it makes")
    p.add_argument("video")
    p.add_argument("--json", action="store_true")
    add_model_options(p)
    add_video_options(p)
    p.set_defaults(func=cmd_info)

    _mount_tools(sub)
    return parser


def _mount_tools(sub) -> None:
    """Sub-commands that live in their own packages: train, demo, data synth, eval *, flops."""
    from .data import synth
    from .eval import cli as eval_cli
    from .train import cli as train_cli
    from .train import demo

    for name, module, help_text in (
        ("train", train_cli, "train a model from a recipe YAML"),
        ("demo", demo, "build the bundled demo model: synthetic data, tokenizer, 5 stages, evaluation"),
    ):
        p = sub.add_parser(name, help=help_text)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="generate synthetic videos + annotations")
    synth.add_arguments(p)
    p.set_defaults(func=synth.run)
    eval_cli.add_commands(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user, the traceback only with --debug
        if args.debug:
            raise
        print(f"error: {_describe(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR


def _describe(exc: BaseException) -> str:
    import torch

    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return "out of memory; try fewer frames (--max-frames 128), --dtype bfloat16, --compress, or a smaller model"
    if isinstance(exc, VideoChatFlashError | ValueError | FileNotFoundError | PermissionError):
        text = str(exc).strip().splitlines()
        return text[0] if text else type(exc).__name__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''} (run with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
