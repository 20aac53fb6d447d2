"""FLOPs and memory of the released shapes for 1k ... 10k frames: the paper's efficiency claims in numbers.

    python benchmarks/flops_table.py [--models 2b-448,7b-224,7b-448] [--frames 1000,2000,...] [--dtype bfloat16]

Analytical (videochat_flash.eval.flops; counts checked against torch's FlopCounterMode on tiny models). For
every shape and frame count it compares three ways of feeding the LLM:

* "dense": every encoder patch token goes to the LLM (784 tokens/frame at 448 px, 196 at 224 px) — the
  no-compression baseline the paper's "about 1/50" refers to;
* "clip": ToMe clip-level compression only, 16 tokens/frame (the released evaluation setting);
* "clip+video": plus video-level compression inside the LLM, the published demo setting
  (uniform0_attention, rank layers 4 and 18, ratios 1 / 0.75 / 0.25).

The vision encoder's FLOPs are the same in all three. Memory = weights + KV cache + visual tokens + peak
activations (fused attention), bf16 by default; 64 text tokens, 256 answer tokens.
"""

from __future__ import annotations

import argparse

from videochat_flash.config import CompressionConfig
from videochat_flash.eval import flops

TEXT, NEW = 64, 256


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def row(name: str, cfg, frames: int, dtype: str) -> dict:
    nbytes = flops.DTYPE_BYTES[dtype]
    c = cfg.llm
    est = flops.estimate(
        cfg,
        frames,
        compression=CompressionConfig.published(),
        text_tokens=TEXT,
        new_tokens=NEW,
        dtype=dtype,
        name=name,
    )
    dense_visual = est["frames"] * cfg.vision.tokens_per_frame
    dense = flops.prefill_cost(c, TEXT, dense_visual)
    dense_kv = sum(flops.kv_cache_bytes(c, [n + NEW for n in dense.lengths], nbytes))
    dense_act = flops.activation_bytes(cfg, TEXT + dense_visual, nbytes)["peak"]
    weights = est["memory"]["weights"]["total"]
    f, m = est["flops"], est["memory"]
    return {
        "frames": frames,
        "vision": f["vision_total"],
        "dense_prefill": dense.total,
        "clip_prefill": f["prefill"]["total"],
        "video_prefill": f["prefill_compressed"]["total"],
        "dense_mem": weights + dense_kv + dense_act + dense_visual * c.hidden_size * nbytes,
        "clip_mem": m["peak"],
        "video_mem": m["peak_compressed"],
        "dense_kv": dense_kv,
        "clip_kv": m["kv_cache"]["total"],
        "video_kv": m["kv_cache_compressed"]["total"],
        "tokens_dense": TEXT + dense_visual,
        "tokens_clip": est["tokens"]["prompt"],
    }


def pf(x: float) -> str:
    return f"{x / 1e15:.2f}"


def gb(x: float) -> str:
    return f"{x / 1024**3:.1f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="2b-448,7b-224,7b-448")
    ap.add_argument("--frames", type=_ints, default=list(range(1000, 10001, 1000)))
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(flops.DTYPE_BYTES))
    args = ap.parse_args(argv)

    for model in args.models.split(","):
        name, cfg = flops.model_config(model.strip())
        v = cfg.vision
        per_frame = v.tokens_per_frame
        print(
            f"### {name}: UMT-L @ {v.image_size} px ({per_frame} patch tokens/frame) + "
            f"{cfg.llm.num_hidden_layers}-layer LLM, D={cfg.llm.hidden_size}, {args.dtype}"
        )
        print()
        print(
            f"Tokens per frame into the LLM: dense {per_frame}, clip-level 16 "
            f"(1/{per_frame / 16:g}); after the last video-level stage 4 (1/{per_frame / 4:g})."
        )
        print()
        print(
            "| frames | vision PFLOP | LLM prefill PFLOP dense / clip / clip+video | prefill saving clip, clip+video "
            "| KV cache GiB dense / clip / clip+video | peak memory GiB dense / clip / clip+video |"
        )
        print("|---|---|---|---|---|---|")
        last = None
        for n in args.frames:
            r = row(name, cfg, n, args.dtype)
            last = r
            print(
                f"| {n} | {pf(r['vision'])} | {pf(r['dense_prefill'])} / {pf(r['clip_prefill'])} / "
                f"{pf(r['video_prefill'])} | {r['dense_prefill'] / r['clip_prefill']:.0f}x, "
                f"{r['dense_prefill'] / r['video_prefill']:.0f}x | {gb(r['dense_kv'])} / {gb(r['clip_kv'])} / "
                f"{gb(r['video_kv'])} | {gb(r['dense_mem'])} / {gb(r['clip_mem'])} / {gb(r['video_mem'])} |"
            )
        if last is not None:
            print()
            print(
                f"At {last['frames']} frames the clip-level prompt is {last['tokens_clip']} tokens "
                f"(dense: {last['tokens_dense']}); "
                f"vision + LLM prefill {pf(last['vision'] + last['clip_prefill'])} PFLOP vs "
                f"{pf(last['vision'] + last['dense_prefill'])} PFLOP dense; peak memory "
                f"{gb(last['clip_mem'])} GiB ({'fits' if last['clip_mem'] < 80e9 else 'does not fit'} in 80 GB) vs "
                f"{gb(last['dense_mem'])} GiB dense."
            )
        print()


if __name__ == "__main__":
    main()
