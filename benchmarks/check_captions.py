"""Diagnostic: do a demo model's free-form captions end, and do they count the shapes right?

"Describe the video." is the README's main-job question, but the card's evaluation scores only multiple-choice,
needle and grounding answers. The demo's training captions list the shapes in order of appearance and end with
"In total N shapes appear." This asks that question about held-out videos (the evaluation set of ``--seed``, as
`videochat-flash eval synth` renders it, with the demo's video settings) and reports how many captions reach that
closing sentence within ``--max-new-tokens`` and how many of those name the right N.

    python benchmarks/check_captions.py --model models/videochat-flash-demo --videos 12

Not a test: never run in CI.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", required=True, help="a model dir (repeat to compare)")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    from videochat_flash.data.synth import evaluate_captions, make_eval_set
    from videochat_flash.data.tasks import CAPTION_PROMPT
    from videochat_flash.model.videochat import VideoChatFlash
    from videochat_flash.train.demo import DATA

    torch.set_num_threads(args.threads)
    eval_dir = Path(tempfile.mkdtemp(prefix="captions_"))
    make_eval_set(
        eval_dir,
        args.seed,
        args.videos,
        size=DATA["size"],
        fps=DATA["fps"],
        short_seconds=DATA["short_seconds"],
        long_seconds=DATA["long_seconds"],
        train_max_seconds=max(DATA["long_seconds"]),
        niah_multipliers=(),
        num_single=0,
    )
    print("| model | videos | captions that end | of those, right count | seconds |")
    print("|---|---:|---:|---:|---:|")
    generation = {"max_new_tokens": args.max_new_tokens, "do_sample": False}
    for model_dir in args.model:
        model = VideoChatFlash.from_pretrained(model_dir)

        def caption(video, model=model):
            return model.chat(video, CAPTION_PROMPT, generation=generation)[0]

        t0 = time.time()
        result = evaluate_captions(eval_dir, caption)
        print(
            f"| {model_dir} | {result['videos']} | {result['ended']} | {result['right_count']} "
            f"| {time.time() - t0:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
