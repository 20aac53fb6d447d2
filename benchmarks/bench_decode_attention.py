"""One decode step's attention over a long KV cache: copy-the-cache GQA vs grouped queries (what qwen2.py does).

    python benchmarks/bench_decode_attention.py [--context 8000] [--threads 1]

Both variants compute the same thing (checked below); the old one repeats every KV head `groups` times per
step (`repeat_kv`), the grouped one folds each KV head's query heads into SDPA's query axis and reads the cache
in place. Ratios are measured in one run on the same tensors.
"""

import argparse
import time

import torch
import torch.nn.functional as F

from videochat_flash.model.qwen2 import repeat_kv

SHAPES = {"2B (Qwen2.5-1.5B)": (12, 2, 128), "7B (Qwen2-7B)": (28, 4, 128)}


def copy_cache(q, k, v, groups):
    return F.scaled_dot_product_attention(q, repeat_kv(k, groups), repeat_kv(v, groups))


def grouped(q, k, v, groups):
    b, h, _, d = q.shape
    return F.scaled_dot_product_attention(q.view(b, h // groups, groups, d), k, v).reshape(b, h, 1, d)


def timed(fn, *args, repeat=20):
    fn(*args)
    start = time.perf_counter()
    for _ in range(repeat):
        fn(*args)
    return (time.perf_counter() - start) / repeat


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--context", type=int, default=8000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"command: python benchmarks/bench_decode_attention.py --context {args.context} --threads {args.threads}"
    )
    print("| shape | dtype | context | copy cache ms/layer | grouped ms/layer | speed-up |")
    print("|---|---|---:|---:|---:|---:|")
    for name, (heads, kv, d) in SHAPES.items():
        for dtype in (torch.float32, torch.bfloat16):
            q = torch.randn(1, heads, 1, d, dtype=dtype)
            k = torch.randn(1, kv, args.context, d, dtype=dtype)
            v = torch.randn(1, kv, args.context, d, dtype=dtype)
            groups = heads // kv
            diff = (copy_cache(q, k, v, groups) - grouped(q, k, v, groups)).abs().max().item()
            assert diff < (1e-5 if dtype == torch.float32 else 2e-2), diff
            old, new = timed(copy_cache, q, k, v, groups), timed(grouped, q, k, v, groups)
            dt = str(dtype).removeprefix("torch.")
            print(
                f"| {name} | {dt} | {args.context} | {old * 1e3:.2f} | {new * 1e3:.2f} | {old / new:.1f}x |"
            )


if __name__ == "__main__":
    main()
