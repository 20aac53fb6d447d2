"""Benchmark: a frozen-tower training stage with and without `train.frozen_vision_cache_gb`.

The demo's multiple-choice phase (`recipes/demo/stage0_mc.yaml`: connector + LLM trained, tower frozen) run on a
small synthetic set for a few epochs, once without the cache and once with it, from the same weights (the bundled
demo model) and seed, in one process. Reports the mean step time of the first epoch (the cache fills) and of the
later epochs (the tower's outputs are reused), the ratio, and whether the losses matched step for step.

    python benchmarks/bench_frozen_cache.py                  # ~3 min on 2 CPU cores
    python benchmarks/bench_frozen_cache.py --scenes 96 --epochs 4

Not a test: never run in CI.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import append_readme, command_line, machine_line, markdown_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def make_data(root: Path, scenes: int) -> Path:
    from videochat_flash.data.synth import generate_dataset
    from videochat_flash.train.demo import DATA

    sizes = dict(DATA, num_samples=scenes, num_single=scenes, num_long=1, num_niah=1)
    generate_dataset(root, 11, stage="stage0_mc", **sizes)
    return root / "stage0_mc.yaml"


def run(mixture: Path, out: Path, steps: int, cache_gb: float, threads: int) -> list[dict]:
    from videochat_flash.train.recipes import load_recipe
    from videochat_flash.train.trainer import train

    torch.set_num_threads(threads)
    recipe = load_recipe(
        REPO / "recipes" / "demo" / "stage0_mc.yaml",
        [
            f"model.init_from={REPO / 'models' / 'videochat-flash-demo'}",
            f"data.path={mixture}",
            f"train.output_dir={out}",
            f"train.max_steps={steps}",
            "train.log_steps=1",
            "logging.progress_bar=false",
            f"train.frozen_vision_cache_gb={cache_gb}",
        ],
    )
    train(recipe)
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=48, help="short scenes and one-shape videos each")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-readme", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mixture = make_data(tmp / "data", a.scenes)
        from videochat_flash.train.data import load_mixture, read_mixture

        samples = len(load_mixture(read_mixture(mixture)))
        per_epoch = samples // 8  # global batch 8 in the recipe
        steps = per_epoch * a.epochs
        logs = {gb: run(mixture, tmp / f"cache{gb}", steps, gb, a.threads) for gb in (0.0, 2.0)}
    steps_of = {gb: [r for r in log if "loss" in r] for gb, log in logs.items()}
    rows, mean = [], {}
    for gb, recs in steps_of.items():
        first = [r["step_time_s"] for r in recs[:per_epoch]]
        later = [r["step_time_s"] for r in recs[per_epoch:]]
        mean[gb] = (sum(first) / len(first), sum(later) / len(later))
        end = next((r for r in logs[gb] if r.get("event") == "end"), {})
        rows.append(
            [
                "off" if not gb else f"{gb:g} GiB",
                f"{mean[gb][0]:.3f}",
                f"{mean[gb][1]:.3f}",
                json.dumps(end.get("vision_cache", "-")),
            ]
        )
    same = [r["loss"] for r in steps_of[0.0]] == [r["loss"] for r in steps_of[2.0]]
    body = "\n".join(
        [
            f"Command: `{command_line()}`",
            "",
            machine_line(),
            "",
            f"{samples} multi-turn samples ({a.scenes} short scenes + {a.scenes} one-shape videos x2), "
            f"{per_epoch} steps per epoch, {a.epochs} epochs, batch 8, tower frozen.",
            "",
            markdown_table(["cache", "s/step epoch 1", "s/step later epochs", "cache stats"], rows),
            "",
            f"Later epochs with the cache take {mean[2.0][1] / mean[0.0][1]:.2f}x the time without it; "
            f"losses identical step for step: {same}.",
        ]
    )
    print(body)
    if not a.no_readme:
        append_readme("Frozen-tower feature cache (`bench_frozen_cache.py`)", body)


if __name__ == "__main__":
    main()
