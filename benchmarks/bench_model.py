"""Benchmark: per-stage speed of randomly initialised models with the released shapes, on this machine's CPU.

Stages of a 64-frame question: UMT-L encoder per 4-frame clip, ToMe + MLP per clip, Qwen2 prefill of the
64-frame prompt (1024 visual + 40 text tokens), decode tokens/s. Models: 2B (UMT-L 23 blocks + Qwen2.5-1.5B
dims) and 7B (UMT-L + Qwen2-7B dims; only where its weights fit in the available memory, i.e. bf16 on a
24 GB machine); float32 and bfloat16; 224 and 448 px. Each stage gets analytic FLOPs, achieved GFLOP/s and the
ratio to a plain ``x @ w.T`` matmul of the same dtype timed right before and after it (the machine is shared,
so the reference is taken under the same load; the faster of the two counts); decode, which is bandwidth-bound,
also gets GB/s against a plain streaming read timed the same way.

    python benchmarks/bench_model.py                      # default: ~7 min on 2 CPU cores
    python benchmarks/bench_model.py --full --models 2b --dtypes float32 --sizes 224   # whole depth

Running the whole depth is far too slow on a small CPU, so by default the encoder runs ``--vit-blocks`` of its
23 identical blocks and the prefill ``--llm-layers`` of its 28 identical layers, on the full-size input; the
last column scales them linearly in depth (and ×16 clips for 64 frames), and says so. Decode always runs the
whole model, against a KV cache holding the 64-frame prompt (random keys/values). The encoder is the same
UMT-L tower in both models, so it is measured once per dtype and size. Not a test: never run in CI.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from videochat_flash.eval import flops

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    RELEASED,
    append_readme,
    available_memory_bytes,
    best,
    command_line,
    machine_line,
    markdown_table,
    param_bytes,
    random_model,
    real_config_dict,
    timed,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16"}
VIT_BLOCKS = 23  # UMT-L built with mm_vision_select_layer = -2
VIT_WIDTH = 1024
PATCH = 16
FRAMES_PER_CLIP = 4
TOKENS_PER_FRAME = 16
MEMORY_MARGIN = 2 * 2**30  # activations, KV cache, allocator slack, the rest of the process


# ------------------------------------------------------------------------------------------------ FLOPs
# Counted with `videochat_flash.eval.flops` (2 × MACs of the matrix products; attention counted dense, so a
# causal prefill kernel doing about half of the attention work looks slightly faster than it is).
def encoder_flops(model, image_size: int, blocks: int) -> float:
    """One 4-frame clip through the patch embedding and ``blocks`` of the encoder's blocks."""
    from dataclasses import replace

    vision = replace(model.config.vision, image_size=image_size)
    cost = flops.encoder_clip_flops(vision)
    return cost["patch_embed"] + (cost["linear"] + cost["attention"]) * blocks / vision.num_blocks


def tome_mlp_flops(model, image_size: int) -> float:
    """ToMe similarity matrices of one clip + the 2-layer MLP on its 64 merged tokens."""
    p = model.config.projector
    tokens = FRAMES_PER_CLIP * (image_size // PATCH) ** 2
    target = FRAMES_PER_CLIP * p.tokens_per_frame
    return flops.tome_flops(tokens, target, p.in_dim, p.merge_heads) + flops.projector_flops(
        p.in_dim, p.out_dim, target
    )


def prefill_flops(model, length: int, layers: int) -> float:
    """``layers`` decoder layers over ``length`` tokens + the lm_head on the last position."""
    c = model.config.llm
    per_layer = flops.llm_linear_flops(c, length) + flops.llm_attention_flops(c, length, length)
    return layers * per_layer + 2 * c.hidden_size * c.vocab_size


def decode_flops(model, context: int) -> float:
    """One step with ``context`` tokens cached in every layer."""
    c = model.config.llm
    return flops.decode_flops(c, [context] * c.num_hidden_layers)


def decode_bytes(model, context: int) -> float:
    """Bytes one decode step must read: every LLM weight but the embedding table (one row), plus the KV cache."""
    llm = model.llm
    embed = llm.model.embed_tokens.weight
    weights = (
        sum(p.numel() * p.element_size() for p in llm.parameters()) - embed.numel() * embed.element_size()
    )
    cfg = llm.cfg
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * context * model.dtype.itemsize
    return weights + kv


# ------------------------------------------------------------------------------------------------ references
@dataclass
class References:
    """Plain-kernel references, re-timed around every stage so both see the same machine load."""

    matmul_size: int
    read_mib: int = 256
    matmul_log: dict = field(default_factory=dict)  # dtype -> [GFLOP/s, ...]
    read_log: list = field(default_factory=list)  # [GB/s, ...]
    _operands: dict = field(default_factory=dict)
    _read: torch.Tensor | None = None

    def matmul(self, dtype: torch.dtype, reps: int = 1) -> float:
        """GFLOP/s of ``x @ w.T`` (n×n by n×n, the layout F.linear uses)."""
        n = self.matmul_size
        if dtype not in self._operands:
            g = torch.Generator().manual_seed(0)
            self._operands[dtype] = (
                torch.randn(n, n, generator=g).to(dtype),
                torch.randn(n, n, generator=g).to(dtype),
            )
            reps += 1  # the first call of a dtype also warms up
        x, w = self._operands[dtype]
        rate = 2 * n**3 / best(timed(lambda: x @ w.T, reps)) / 1e9
        self.matmul_log.setdefault(dtype, []).append(rate)
        return rate

    def bracket(self, dtype: torch.dtype, measure, *args):
        """``measure(*args)`` between two same-dtype matmul timings; returns (result, the faster of the two)."""
        before = self.matmul(dtype)
        result = measure(*args)
        return result, max(before, self.matmul(dtype))

    def read(self, reps: int = 3) -> float:
        """GB/s of summing a float32 tensor far larger than the caches (a plain streaming read)."""
        if self._read is None:
            self._read = torch.ones(self.read_mib * 2**20 // 4)
            reps += 1
        t = self._read
        rate = t.numel() * 4 / best(timed(lambda: t.sum(), reps)) / 1e9
        self.read_log.append(rate)
        return rate


# ------------------------------------------------------------------------------------------------ stages
def encoder_view(model, image_size: int, blocks: int):
    """A UMT encoder for ``image_size`` sharing the model's patch embedding, first ``blocks`` blocks and norm."""
    from videochat_flash.config import VideoChatFlashConfig
    from videochat_flash.model.umt import UMTEncoder

    cfg = VideoChatFlashConfig.from_dict(real_config_dict("2b", image_size)).vision
    with torch.device("meta"):
        enc = UMTEncoder(cfg)
    vision = model.vision
    enc.patch_embed = vision.patch_embed
    enc.blocks = nn.ModuleList(list(vision.blocks)[:blocks])
    enc.vision_layernorm = vision.vision_layernorm
    enc.reset_buffers()
    return enc.eval()


@contextmanager
def llm_layers(model, count: int):
    """Run the LLM with only its first ``count`` decoder layers (restored afterwards)."""
    inner = model.llm.model
    full = inner.layers
    inner.layers = nn.ModuleList(list(full)[:count])
    try:
        yield
    finally:
        inner.layers = full


def prompt_ids(text_tokens: int) -> list[int]:
    """Text ids around one <image> placeholder (a third before it, the rest after, like the chat prompt)."""
    from videochat_flash.inference.prompt import IMAGE_TOKEN_INDEX

    before = max(1, text_tokens // 3)
    after = text_tokens - before
    return list(range(1000, 1000 + before)) + [IMAGE_TOKEN_INDEX] + list(range(2000, 2000 + after))


@dataclass
class Row:
    model: str
    dtype: torch.dtype
    size: int | str
    stage: str
    work: str
    seconds: float
    flops: float
    full_seconds: float
    how: str
    peak: float = 0.0  # same-dtype matmul GFLOP/s, the faster of the timings just before and after


def measure_encoder(model, dtype, size, blocks, reps, frames, warm) -> Row:
    enc = encoder_view(model, size, blocks)
    g = torch.Generator().manual_seed(1)
    clip = torch.randn(1, FRAMES_PER_CLIP, 3, size, size, generator=g).to(dtype)
    with torch.inference_mode():
        # Warm-up on one frame (an image tile) unless this dtype's kernels already ran.
        seconds = best(timed(lambda: enc(clip), reps, warmup=None if warm else lambda: enc(clip[:, :1])))
    tokens = FRAMES_PER_CLIP * (size // PATCH) ** 2
    clips = frames // FRAMES_PER_CLIP
    how = f"×{VIT_BLOCKS}/{blocks} blocks ×{clips} clips" if blocks != VIT_BLOCKS else f"×{clips} clips"
    return Row(
        "UMT-L", dtype, size, "encoder", f"1 clip ({tokens} tok), {blocks}/{VIT_BLOCKS} blocks",
        seconds, encoder_flops(model, size, blocks), seconds * VIT_BLOCKS / blocks * clips, how,
    )  # fmt: skip


def measure_tome_mlp(model, name, dtype, size, reps, frames) -> Row:
    """Per clip, timed on a batch of ``clip_batch_size`` clips as `encode_pixels` runs them."""
    tokens = FRAMES_PER_CLIP * (size // PATCH) ** 2
    batch = model.clip_batch_size
    g = torch.Generator().manual_seed(2)
    features = torch.randn(batch, tokens, VIT_WIDTH, generator=g).to(dtype)
    target = FRAMES_PER_CLIP * TOKENS_PER_FRAME
    with torch.inference_mode():
        warmup = lambda: model.projector(features[:1], target)  # noqa: E731
        seconds = best(timed(lambda: model.projector(features, target), reps, warmup)) / batch
    clips = frames // FRAMES_PER_CLIP
    return Row(
        name, dtype, size, "ToMe + MLP", f"per clip, {batch}-clip batch ({tokens} → {target} tok)",
        seconds, tome_mlp_flops(model, size), seconds * clips, f"×{clips} clips",
    )  # fmt: skip


def measure_prefill(model, name, dtype, layers, text_tokens, reps, frames) -> tuple[Row, int]:
    llm = model.llm
    total = llm.num_layers
    visual_tokens = frames * TOKENS_PER_FRAME
    g = torch.Generator().manual_seed(3)
    visual = (torch.randn(visual_tokens, llm.cfg.hidden_size, generator=g) * 0.02).to(dtype)
    with torch.inference_mode():
        embeds, _ = model.embed_with_visual(prompt_ids(text_tokens), visual)
        length = embeds.shape[0]
        with llm_layers(model, layers):
            run = lambda: llm.prefill(embeds[None], llm.new_cache(reserve=0))  # noqa: E731
            warmup = lambda: llm.prefill(embeds[None, :32], llm.new_cache())  # noqa: E731
            seconds = best(timed(run, reps, warmup))
    row = Row(
        name, dtype, "-", "LLM prefill", f"{length} tok ({visual_tokens} visual), {layers}/{total} layers",
        seconds, prefill_flops(model, length, layers), seconds * total / layers,
        f"×{total}/{layers} layers" if layers != total else "as measured",
    )  # fmt: skip
    return row, length


def measure_decode(model, dtype, context: int, tokens: int) -> tuple[float, float, float]:
    """(mean seconds per token, FLOPs per token, bytes per token) of greedy steps after ``context`` tokens."""
    llm = model.llm
    cfg = llm.cfg
    cache = llm.new_cache(reserve=tokens + 2)
    g = torch.Generator().manual_seed(4)
    for i in range(cfg.num_hidden_layers):
        k = torch.randn(1, cfg.num_key_value_heads, context, cfg.head_dim, generator=g).to(dtype)
        cache.append(i, k, k.clone())
    token = torch.tensor([[1000]])
    with torch.inference_mode():
        llm.decode(token, cache)  # warm-up step (also extends the context by one)
        seconds = statistics.mean(timed(lambda: llm.decode(token, cache), tokens))
    mid = context + 1 + tokens // 2
    return seconds, decode_flops(model, mid), decode_bytes(model, mid)


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    encoder: dict = field(default_factory=dict)  # (dtype, size) -> Row: UMT-L is shared by both models
    decode_rows: list[list[str]] = field(default_factory=list)
    decode_seconds: dict = field(default_factory=dict)  # (model, dtype) -> s/token


def run_model(name: str, dtype: torch.dtype, args, refs: References, res: Results, emit) -> None:
    """Build one model, time its stages into ``res`` (the model is freed when this returns)."""
    rows, encoder_done = res.rows, res.encoder
    label = f"{name.upper()} {SHORT[dtype]}"
    need = param_bytes(name, dtype)
    vit_blocks = VIT_BLOCKS if args.full else min(args.vit_blocks, VIT_BLOCKS)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    start = time.perf_counter()
    model = random_model(real_config_dict(name, 448), dtype)
    count = sum(p.numel() for p in model.parameters())
    emit(
        f"built {label}: {count / 1e9:.3f} B params, {need / 2**30:.1f} GiB, {time.perf_counter() - start:.0f} s"
    )

    for size in sizes:
        if (dtype, size) not in encoder_done:  # UMT-L is the same tower in every released model
            warm = any(d == dtype for d, _ in encoder_done)
            enc_args = (model, dtype, size, vit_blocks, args.reps, args.frames, warm)
            row, row.peak = refs.bracket(dtype, measure_encoder, *enc_args)
            encoder_done[(dtype, size)] = row
            rows.append(row)
            emit(f"  encoder {size} px: {row.seconds:.2f} s (matmul {row.peak:.1f} GFLOP/s)")
        tome_args = (model, name.upper(), dtype, size, 2, args.frames)
        row, row.peak = refs.bracket(dtype, measure_tome_mlp, *tome_args)
        rows.append(row)
        emit(f"  ToMe + MLP {size} px: {row.seconds:.3f} s/clip (matmul {row.peak:.1f} GFLOP/s)")
    layers = model.llm.num_layers if args.full else min(args.llm_layers, model.llm.num_layers)
    prefill_args = (model, name.upper(), dtype, layers, args.text_tokens, args.reps, args.frames)
    (row, length), row_peak = refs.bracket(dtype, measure_prefill, *prefill_args)
    row.peak = row_peak
    rows.append(row)
    emit(f"  prefill: {row.seconds:.2f} s (matmul {row.peak:.1f} GFLOP/s)")
    tokens = args.decode_tokens if name == "2b" else args.decode_tokens_7b
    bandwidth = refs.read()
    (spt, step_flops, nbytes), peak = refs.bracket(dtype, measure_decode, model, dtype, length, tokens)
    bandwidth = max(bandwidth, refs.read())
    res.decode_seconds[(name, dtype)] = spt
    emit(f"  decode: {spt:.2f} s/token (matmul {peak:.1f} GFLOP/s, read {bandwidth:.1f} GB/s)")
    rate, gbs = step_flops / spt / 1e9, nbytes / spt / 1e9
    res.decode_rows.append(
        [
            name.upper(), SHORT[dtype], f"{tokens} after {length}", f"{spt:.2f}", f"{1 / spt:.2f}",
            f"{step_flops / 1e9:.1f}", f"{rate:.1f}", f"{rate / peak:.0%}",
            f"{nbytes / 1e9:.2f}", f"{gbs:.1f}", f"{gbs / bandwidth:.0%}",
        ]
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ main
def share(fraction: float) -> str:
    return "<1%" if fraction < 0.005 else f"{fraction:.0%}"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f}" if seconds < 10 else f"{seconds:.1f}" if seconds < 100 else f"{seconds:.0f}"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--models", default="2b,7b", help="comma list of 2b, 7b (default both)")
    add("--dtypes", default="float32,bfloat16", help="comma list (default float32,bfloat16)")
    add("--sizes", default="224,448", help="frame sizes for the encoder stages (default 224,448)")
    add("--frames", type=int, default=64, help="frames of the question (default 64 = 16 clips)")
    add("--text-tokens", type=int, default=40, help="text tokens around the video (default 40)")
    add("--vit-blocks", type=int, default=1, help="encoder blocks actually run (default 1 of 23)")
    add("--llm-layers", type=int, default=1, help="decoder layers actually prefilled (default 1 of 28)")
    add("--full", action="store_true", help="run all 23 blocks and 28 layers (very slow on a small CPU)")
    add("--decode-tokens", type=int, default=8, help="decode steps timed for 2B (default 8)")
    add("--decode-tokens-7b", type=int, default=4, help="decode steps timed for 7B (default 4)")
    add(
        "--reps", type=int, default=1, help="timed repetitions of encoder/prefill, fastest counts (default 1)"
    )
    add("--matmul-size", type=int, default=1536, help="n of the n×n reference matmul (default 1536)")
    add("--readme", action="store_true", help="append the output to benchmarks/README.md")
    args = parser.parse_args(argv)
    if args.frames % FRAMES_PER_CLIP:
        parser.error(f"--frames must be a multiple of {FRAMES_PER_CLIP}")
    models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    if any(m not in RELEASED for m in models):
        parser.error(f"--models: choose from {', '.join(RELEASED)}")
    dtypes = [DTYPES[d.strip()] for d in args.dtypes.split(",") if d.strip()]
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    torch.manual_seed(0)
    started = time.perf_counter()

    out: list[str] = []

    def emit(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    emit(f"$ {command_line()}")
    emit(machine_line())
    emit()

    refs = References(args.matmul_size)
    res = Results()
    skipped: list[str] = []
    for name in models:
        for dtype in dtypes:
            label = f"{name.upper()} {SHORT[dtype]}"
            need = param_bytes(name, dtype)
            free = available_memory_bytes()
            if need + MEMORY_MARGIN > free:
                reason = (
                    f"skipped {label}: its weights take {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available "
                    f"(needs weights + {MEMORY_MARGIN / 2**30:.0f} GiB)"
                )
                emit(reason)
                skipped.append(reason)
                continue
            run_model(name, dtype, args, refs, res, emit)
            gc.collect()  # the model is gone with run_model's frame; free it before the next one is built

    # ---------------------------------------------------------------- tables
    rows, encoder_done, decode_rows, decode_seconds = (
        res.rows,
        res.encoder,
        res.decode_rows,
        res.decode_seconds,
    )
    emit()
    emit(
        f"References, re-timed before and after every stage (n = {args.matmul_size}; min / median / max over the run, "
        "showing how much the shared machine's speed moved):"
    )
    emit()
    ref_rows = [
        [f"matmul x @ w.T {SHORT[dt]}", *(f"{f(v):.1f}" for f in (min, statistics.median, max)), "GFLOP/s"]
        for dt, v in refs.matmul_log.items()
    ]
    if refs.read_log:
        v = refs.read_log
        ref_rows.append(
            ["streaming read (sum, fp32)", *(f"{f(v):.1f}" for f in (min, statistics.median, max)), "GB/s"]
        )
    emit(markdown_table(["reference", "min", "median", "max", "unit"], ref_rows, "lrrrl"))
    emit()
    emit(
        f"Stages: measured work, then scaled to one {args.frames}-frame question. GFLOP/s = analytic FLOPs of the "
        "measured work / its time; 'vs matmul' = that / the same-dtype matmul timed just before and after it (the faster of the two)."
    )
    emit()
    table = []
    for r in rows:
        rate = r.flops / r.seconds / 1e9
        table.append(
            [
                r.model, SHORT[r.dtype], r.size, r.stage, r.work, fmt_s(r.seconds), f"{r.flops / 1e9:.1f}",
                f"{rate:.1f}", f"{rate / r.peak:.0%}", f"{fmt_s(r.full_seconds)} ({r.how})",
            ]
        )  # fmt: skip
    headers = ["model", "dtype", "px", "stage", "measured work", "s", "GFLOP", "GFLOP/s", "vs matmul"]
    emit(markdown_table([*headers, f"{args.frames} frames: s"], table, "lllllrrrrl"))
    emit()
    emit(
        f"Decode: greedy steps of the whole model after the {args.frames}-frame prompt (mean s/token). It is "
        "bandwidth-bound, so GB/s against the streaming read timed just before and after is the figure of merit."
    )
    emit()
    headers = ["model", "dtype", "tokens", "s/token", "tokens/s", "GFLOP/token", "GFLOP/s", "vs matmul"]
    emit(markdown_table([*headers, "GB read/token", "GB/s", "vs stream read"], decode_rows, "lllrrrrrrrr"))

    def find(**want) -> Row | None:
        return next((r for r in rows if all(getattr(r, k) == v for k, v in want.items())), None)

    summary = []
    for name in models:
        for dtype in dtypes:
            prefill = find(model=name.upper(), dtype=dtype, stage="LLM prefill")
            for size in sizes:
                enc = encoder_done.get((dtype, size))
                tome = find(model=name.upper(), dtype=dtype, size=size, stage="ToMe + MLP")
                if prefill is None or enc is None or tome is None:
                    continue
                total = enc.full_seconds + tome.full_seconds + prefill.full_seconds
                shares = [share(x.full_seconds / total) for x in (enc, tome, prefill)]
                summary.append([name.upper(), SHORT[dtype], size, fmt_s(total), *shares])
    if summary:
        emit()
        emit(f"Time to first token of a {args.frames}-frame question (sum of the scaled stages above):")
        emit()
        headers = ["model", "dtype", "px", "s", "encoder", "ToMe + MLP", "prefill"]
        emit(markdown_table(headers, summary, "lllrrrr"))
    ratios = []
    for r in rows:
        twin = find(model=r.model, size=r.size, stage=r.stage, dtype=torch.float32)
        if r.dtype == torch.bfloat16 and twin is not None:
            ratios.append([r.model, r.size, r.stage, f"{r.seconds / twin.seconds:.2f}×"])
    for name in models:
        if (name, torch.bfloat16) in decode_seconds and (name, torch.float32) in decode_seconds:
            ratio = decode_seconds[(name, torch.bfloat16)] / decode_seconds[(name, torch.float32)]
            ratios.append([name.upper(), "-", "decode", f"{ratio:.2f}×"])
    if torch.float32 in refs.matmul_log and torch.bfloat16 in refs.matmul_log:
        ratio = statistics.median(refs.matmul_log[torch.float32]) / statistics.median(
            refs.matmul_log[torch.bfloat16]
        )
        ratios.append(["-", "-", "matmul reference (medians)", f"{ratio:.2f}×"])
    if ratios:
        emit()
        emit("bf16 time / fp32 time of the same stage (> 1: bf16 is slower on this CPU):")
        emit()
        emit(markdown_table(["model", "px", "stage", "bf16 / fp32"], ratios, "lllr"))
    for reason in skipped:
        emit()
        emit(reason)
    emit()
    emit(
        f"total {time.perf_counter() - started:.0f} s; " + machine_line().replace("machine: ", "at the end: ")
    )
    text = "\n".join(out)
    if args.readme:
        body = "```\n" + out[0] + "\n```\n\n" + "\n".join(out[1:])
        append_readme("bench_model.py — per-stage speed of real-shape random models (CPU)", body)
    return text


if __name__ == "__main__":
    main()
