"""Training step of the demo LLM on a right-padded batch: SDPA's causal kernel against the padding mask.

`Qwen2ForCausalLM.forward` used to build a [B, 1, L, L] mask for every padded batch, which sends SDPA on CPU
to its generic kernel. Right padding needs no mask: under the causal one no real token sees a later pad. This
times forward + backward of the bundled demo model's LLM shape (its config.json) on batches shaped like
the demo's stage-0 phases (8 samples, lengths drawn from the given range), both ways, alternating, in one run.

    python benchmarks/bench_padded_attention.py --threads 2 --readme
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import append_readme, command_line, machine_line, markdown_table  # noqa: E402

from videochat_flash.cli import DEFAULT_MODEL_DIR  # noqa: E402
from videochat_flash.config import VideoChatFlashConfig  # noqa: E402
from videochat_flash.model import qwen2  # noqa: E402
from videochat_flash.model.init import init_weights_  # noqa: E402


def step_seconds(llm, x, mask, labels, masked: bool) -> float:
    """One forward + backward; ``masked`` forces the explicit padding mask (the code before the change)."""
    real = qwen2.is_right_padded
    if masked:
        qwen2.is_right_padded = lambda m: False
    try:
        t0 = time.perf_counter()
        _, loss, _ = llm(x, attention_mask=mask, labels=labels)
        loss.backward()
        return time.perf_counter() - t0
    finally:
        qwen2.is_right_padded = real


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument(
        "--lengths", default="150,400", help="sample lengths drawn from this range (stage0_mc: ~150-400)"
    )
    p.add_argument("--readme", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = VideoChatFlashConfig.from_json_file(DEFAULT_MODEL_DIR / "config.json").llm  # the demo's LLM
    llm = qwen2.Qwen2ForCausalLM(cfg)
    init_weights_(llm, seed=0)
    lo, hi = (int(v) for v in args.lengths.split(","))
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(lo, hi + 1, (8,), generator=g)
    length = int(lengths.max())
    mask = torch.arange(length)[None] < lengths[:, None]
    x = torch.randn(8, length, cfg.hidden_size, generator=g)
    labels = torch.randint(0, cfg.vocab_size, (8, length), generator=g).masked_fill(~mask, -100)
    times = {"padding mask": [], "causal kernel": []}
    for _ in range(2):  # warm-up
        step_seconds(llm, x, mask, labels, True)
        step_seconds(llm, x, mask, labels, False)
    for _ in range(args.repeats):
        times["padding mask"].append(step_seconds(llm, x, mask, labels, True))
        times["causal kernel"].append(step_seconds(llm, x, mask, labels, False))
    base = statistics.median(times["padding mask"])
    rows = [
        (k, f"{1000 * statistics.median(v):.1f}", f"{base / statistics.median(v):.2f}x")
        for k, v in times.items()
    ]
    table = markdown_table(("attention", "median step ms", "speed-up"), rows)
    print(table)
    if args.readme:
        body = "\n".join(
            (
                f"    {command_line()}",
                "",
                machine_line(),
                f"batch 8, lengths {lo}-{hi} (max {length}), {args.threads} threads, "
                f"{args.repeats} alternating repeats",
                "",
                table,
            )
        )
        append_readme("Padded training batches on the causal kernel (`bench_padded_attention.py`)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
