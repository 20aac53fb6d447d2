"""Diagnostic: how fast must a shape move for the demo's vision tower to learn its direction?

The demo model answers direction questions at chance, and its pre-trained tower names held-out objects' motion
direction no better (`motion` / `object_motion` in the model card's vision table, ~32–40% for 4 directions).
This script separates the two possible causes:

* **the data**: how many pixels an object moves between two sampled frames (1 fps) in the clips the tower is
  pre-trained on (`videochat_flash.data.dense.sample_dense_clips`, the generator's scene mix);
* **the tower**: a fresh tower of the demo's shape (`recipes/demo/stage0_scratch.yaml`) trained on the easiest
  possible direction task (one white square moving a fixed number of pixels per frame in one of 4 directions, a
  linear head on the mean token), per speed and background; held-out accuracy on fresh clips.

    python benchmarks/probe_motion.py                        # ~12 min on 2 CPU cores
    python benchmarks/probe_motion.py --speeds 2,6 --steps 300
    python benchmarks/probe_motion.py --speeds 4,6 --patch-init pca   # the demo build's patch-embedding init
    python benchmarks/probe_motion.py --speeds 4 --steps 300 --backgrounds 0,55,124,200,texture   # ~7 min

Not a test: never run in CI.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import append_readme, command_line, machine_line, markdown_table  # noqa: E402

DIRECTIONS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # left, right, up, down in (dx, dy)
SQUARE = 10  # side in pixels: about the demo's small shapes


def data_speeds(seed: int, scenes: int, size: int) -> np.ndarray:
    """Pixels moved per frame by each object visible in >= 2 frames of a pre-training clip (centroid distance
    between its first and last visible frame of the clip, divided by the frames between them)."""
    from videochat_flash.data.dense import sample_dense_clips

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(scenes):
        for clip in sample_dense_clips(rng, size, 4, needle_prob=0.0, max_clips=4):
            for k in range(len(clip.objects)):
                frames = [t for t in range(clip.owner.shape[0]) if (clip.owner[t] == k).any()]
                if len(frames) < 2:
                    continue
                first, last = (np.argwhere(clip.owner[t] == k).mean(axis=0) for t in (frames[0], frames[-1]))
                out.append(np.linalg.norm(last - first) / (frames[-1] - frames[0]))
    return np.asarray(out)


def square_clips(
    rng: np.random.Generator, n: int, speed: float, size: int, frames: int, background: str = "raw"
):
    """`[n, T, 3, S, S]` clips of a white square moving ``speed`` px/frame, and the direction index of each.

    ``background``: ``"raw"`` = 1.0 on 0.0, not normalised (the probe's first version); a grey level ``"0"``-``"255"``
    = a white (245) square on that flat grey; ``"texture"`` = on the generator's own background
    (`data.shapes.make_background`). The last two go through the model's preprocessing (ImageNet normalisation),
    as the pre-training clips do."""
    from videochat_flash.data.shapes import make_background
    from videochat_flash.model.preprocess import preprocess_frames

    raw = background == "raw"
    x = np.zeros((n, frames, size, size, 3), dtype=np.float32 if raw else np.uint8)
    labels = rng.integers(0, len(DIRECTIONS), n)
    travel = speed * (frames - 1)
    half = SQUARE // 2
    for i, d in enumerate(labels):
        if background == "texture":
            x[i] = make_background(rng, size)
        elif not raw:
            x[i] = int(background)
        ux, uy = DIRECTIONS[d]
        lo, hi = half + travel / 2, size - half - travel / 2
        cx, cy = rng.uniform(lo, hi, 2)
        for t in range(frames):
            offset = speed * (t - (frames - 1) / 2)
            px, py = int(round(cx + ux * offset)), int(round(cy + uy * offset))
            x[i, t, py - half : py + half, px - half : px + half] = 1.0 if raw else 245
    if raw:
        return torch.from_numpy(x.transpose(0, 1, 4, 2, 3).copy()), torch.from_numpy(labels)
    return torch.stack([preprocess_frames(clip, size) for clip in x]), torch.from_numpy(labels)


def train_direction(
    cfg,
    speed: float,
    steps: int,
    batch: int,
    seed: int,
    eval_clips: int,
    patch_init: str = "random",
    background: str = "raw",
) -> tuple[float, float]:
    """(final training loss, held-out accuracy) of a fresh tower of shape ``cfg`` + linear head on the mean token.

    ``patch_init="pca"``: the patch embedding starts as `vision_pretrain` starts it for the demo build
    (whitened principal components of the real pre-training clips, gain 2); ``"random"``: N(0, 0.02)."""
    from videochat_flash.data.dense import sample_dense_clips
    from videochat_flash.model.init import init_weights_
    from videochat_flash.model.umt import UMTEncoder
    from videochat_flash.train.vision_pretrain import clip_pixels, whiten_patch_embedding_

    torch.manual_seed(seed)
    encoder = UMTEncoder(cfg)
    init_weights_(encoder, seed=seed)
    if patch_init == "pca":
        rng = np.random.default_rng(seed)
        clips = [
            c for _ in range(16) for c in sample_dense_clips(rng, cfg.image_size, cfg.num_frames, 0.1, 4)
        ]
        whiten_patch_embedding_(encoder, clip_pixels(clips[:64], cfg.image_size), gain=2.0)
    head = torch.nn.Linear(cfg.hidden_size, len(DIRECTIONS))
    opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-3)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        x, y = square_clips(rng, batch, speed, cfg.image_size, cfg.num_frames, background)
        loss = torch.nn.functional.cross_entropy(head(encoder(x).mean(1)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    held = np.random.default_rng(seed + 10_000)
    correct = 0
    with torch.no_grad():
        for start in range(0, eval_clips, batch):
            n = min(batch, eval_clips - start)
            x, y = square_clips(held, n, speed, cfg.image_size, cfg.num_frames, background)
            correct += int((head(encoder(x).mean(1)).argmax(-1) == y).sum())
    return float(np.mean(losses[-25:])), correct / eval_clips


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--speeds", default="2,4,6,8", help="pixels per frame")
    p.add_argument("--patch-init", default="random", choices=("random", "pca"), help="see train_direction")
    p.add_argument(
        "--backgrounds",
        default="raw",
        help="comma list of: raw (1.0 on 0.0, unnormalised), a grey level 0-255, texture (the generator's); "
        "see square_clips",
    )
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-clips", type=int, default=256)
    p.add_argument("--scenes", type=int, default=400, help="scenes whose clips measure the data's speeds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-readme", action="store_true")
    a = p.parse_args()
    backgrounds = a.backgrounds.split(",")
    for b in backgrounds:
        if b not in ("raw", "texture") and not (b.isdigit() and int(b) <= 255):
            p.error(f"--backgrounds: {b!r} is not raw, texture or a grey level 0-255")
    torch.set_num_threads(a.threads)
    from videochat_flash.train.demo import tower_config

    lines = [machine_line(), ""]
    tower = tower_config()
    speeds = data_speeds(a.seed, a.scenes, tower.image_size)
    pct = np.percentile(speeds, [10, 25, 50, 75, 90])
    lines.append(
        f"pre-training clips: {len(speeds)} moving objects; px/frame at the 10/25/50/75/90th percentile: "
        + " / ".join(f"{v:.1f}" for v in pct)
        + f"; share >= 6 px/frame: {np.mean(speeds >= 6):.0%}"
    )
    rows = []
    runs = [(float(s), b) for s in a.speeds.split(",") for b in backgrounds]
    for speed, background in runs:
        t0 = time.time()
        loss, acc = train_direction(
            tower, speed, a.steps, a.batch, a.seed, a.eval_clips, a.patch_init, background
        )
        rows.append(
            [
                f"{speed:g}",
                background,
                a.patch_init,
                a.steps,
                f"{loss:.3f}",
                f"{acc:.0%}",
                f"{time.time() - t0:.0f}",
            ]
        )
        print(rows[-1], flush=True)
    lines += [
        "",
        "direction of one square (chance 25%, loss at chance 1.386):",
        "",
        markdown_table(
            [
                "px/frame",
                "background",
                "patch init",
                "steps",
                "final train loss",
                "held-out accuracy",
                "seconds",
            ],
            rows,
        ),
    ]
    body = "\n".join(lines)
    print(body)
    if not a.no_readme:
        append_readme(
            "Motion probe: what the demo tower can learn (`probe_motion.py`)",
            f"Command: `{command_line()}`\n\n```\n{body}\n```",
        )


if __name__ == "__main__":
    main()
