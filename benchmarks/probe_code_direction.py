"""Diagnostic: how much of an object's direction reaches the LLM through the demo's connector codes?

The demo's connector maps each merged tower token to an attribute code (`train.connector_codes`: one fixed random
vector per colour, shape, motion and onset class, summed). Its held-out `motion_accuracy` counts single tokens. The
LLM can pool every token of an object, so this script asks the question per object: on held-out dense clips
(`vision_pretrain.ClipStream`, a seed the distillation never drew), for each object the clip shows moving, it
scores the object's tokens against the four direction codes (dot product, summed over the tokens the object owns)
and counts how often the best one is the object's direction, the way the LLM would read it with a perfect
lookup. Colour and shape are scored the same way for comparison.

    python benchmarks/probe_code_direction.py runs/demo29            # a demo build's work dir (stage 0's parts)
    python benchmarks/probe_code_direction.py runs/demo29 --model models/videochat-flash-demo   # a saved model

With ``--model`` the tower and connector come from that model (trained on in stages 2-4), the code tables and
clips from the recipe as before; ``--tower PATH`` reads another tower (a UMT ``.pt``) and distils a connector for
it first, as the build's `stage0_codes` does. ``--linear N`` also fits a linear direction classifier on N
training clips (the distillation's own stream), on the tower's tokens and on the connector's outputs, per token
and per object (mean of its tokens): what any readout of them could get, against the code readout. Results: `benchmarks/README.md`, "Direction in the connector codes".
Not a test: never run in CI.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from videochat_flash.data.dense import MOTION_CLASSES
from videochat_flash.data.shapes import DIRECTIONS
from videochat_flash.train import checkpoint as ckpt
from videochat_flash.train.connector_codes import (
    ConnectorCodesConfig,
    attribute_tables,
    distil_connector_,
    encode_clips,
)
from videochat_flash.train.demo import CODES_STAGE, DEMO_RECIPES, FIRST_STAGE
from videochat_flash.train.recipes import load_recipe
from videochat_flash.train.trainer import ModelSources, build_model
from videochat_flash.train.vision_pretrain import ClipStream

HELD_OUT_SEED = 20_000  # distillation draws cfg.seed (train) and cfg.seed + 10_000 (its held-out clips)


def load_parts(work: Path, model_dir: Path | None, tower: Path | None, cfg: ConnectorCodesConfig):
    if model_dir is not None:
        from videochat_flash.model.videochat import VideoChatFlash

        return VideoChatFlash.from_pretrained(model_dir).eval()
    weights = tower or work / "stage0_vision" / "umt.pt"
    recipe = load_recipe(DEMO_RECIPES / f"{FIRST_STAGE}.yaml", [f"model.vision_weights={weights}"])
    model = build_model(recipe, ModelSources(vision_weights=weights)).eval()
    if tower is None:
        ckpt.load_projector(model, work / "stage0_codes" / "mm_projector.safetensors")
    else:
        with torch.enable_grad():  # main() reads under no_grad
            distil_connector_(model, cfg, progress=False)
    return model


def object_means(values, owners, classes, tokens_per_clip: int, labels: range):
    """Per (clip, object) whose class is in ``labels``: the mean of its tokens' ``values``, and its class."""
    rows, targets = [], []
    clip_of = torch.arange(len(owners)) // tokens_per_clip
    for clip in range(int(clip_of.max()) + 1):
        in_clip = clip_of == clip
        for obj in owners[in_clip].unique().tolist():
            mine = in_clip & (owners == obj)
            if obj and int(classes[mine][0]) in labels:
                rows.append(values[mine].mean(0))
                targets.append(int(classes[mine][0]) - labels.start)
    return torch.stack(rows), torch.tensor(targets)


def linear_accuracy(x, y, x_held, y_held, classes: int, steps: int = 1500) -> float:
    """Held-out accuracy of a linear classifier fitted (full batch, AdamW) on standardised ``x``."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    head = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-3)
    with torch.enable_grad():
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(head((x - mean) / std), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return round(float((head((x_held - mean) / std).argmax(-1) == y_held).float().mean()), 4)


def object_scores(out, owners, classes, table, tokens_per_clip: int, labels: range):
    """Per (clip, object) whose class for this attribute is in ``labels``: (true class, summed scores)."""
    rows = []
    clip_of = torch.arange(len(owners)) // tokens_per_clip
    scores = out @ table[labels.start : labels.stop].T
    for clip in range(int(clip_of.max()) + 1):
        in_clip = clip_of == clip
        for obj in owners[in_clip].unique().tolist():
            if obj == 0:
                continue
            mine = in_clip & (owners == obj)
            cls = int(classes[mine][0])
            if cls in labels:
                rows.append((cls, scores[mine].sum(0), int(mine.sum())))
    return rows


def code_readout(out, held, table, head: str, per_clip: int, span: range) -> dict:
    """Accuracy of the nearest class code (among ``span``) per token, and per object over its tokens' sum."""
    rows = object_scores(out, held.owners, held.classes[head], table, per_clip, span)
    hits = [int(s.argmax()) + span.start == c for c, s, _ in rows]
    one_token = [hit for hit, (_, _, n) in zip(hits, rows, strict=True) if n == 1]
    labels = held.classes[head]
    coded = torch.tensor([int(c) in span for c in labels])
    guesses = (out[coded] @ table[span.start : span.stop].T).argmax(-1) + span.start
    return {
        "objects": len(rows),
        "object_accuracy": round(sum(hits) / max(1, len(hits)), 4),
        "token_accuracy": round(float((guesses == labels[coded]).float().mean()), 4),
        "objects_with_one_token": len(one_token),
        "one_token_object_accuracy": round(sum(one_token) / max(1, len(one_token)), 4),
    }


def linear_readouts(x, train, x_held, held, per_clip: int, span: range) -> dict:
    """Linear direction classifiers on ``x`` (features of ``train``'s tokens), scored on ``held``'s."""
    labels, labels_held = train.classes["motion"], held.classes["motion"]
    coded = torch.tensor([int(c) in span for c in labels])
    coded_held = torch.tensor([int(c) in span for c in labels_held])
    token = linear_accuracy(
        x[coded],
        labels[coded] - span.start,
        x_held[coded_held],
        labels_held[coded_held] - span.start,
        len(span),
    )
    obj = linear_accuracy(
        *object_means(x, train.owners, labels, per_clip, span),
        *object_means(x_held, held.owners, labels_held, per_clip, span),
        len(span),
    )
    return {"token": token, "object": obj}


@torch.no_grad()
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("work", type=Path, help="a demo build's work dir (stage0_vision/, stage0_codes/)")
    p.add_argument("--model", type=Path, default=None, help="read tower and connector from this saved model")
    p.add_argument("--clips", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--tower", type=Path, default=None, help="another tower (.pt); a connector is distilled for it"
    )
    p.add_argument("--linear", type=int, default=0, help="fit linear direction readouts on this many clips")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = replace(ConnectorCodesConfig.from_yaml(DEMO_RECIPES / f"{CODES_STAGE}.yaml"), seed=0)
    model = load_parts(args.work, args.model, args.tower, cfg)
    tables = attribute_tables(cfg.heads, model.projector.cfg.out_dim, cfg.seed)
    clips = ClipStream(cfg.seed + HELD_OUT_SEED, cfg, model.config.vision.num_frames).take(args.clips)
    held = encode_clips(model, clips, tables, cfg.min_share)
    out = model.projector.mlp.float()(held.tokens)
    per_clip = len(held.tokens) // len(clips)
    first_dir = MOTION_CLASSES.index(DIRECTIONS[0])
    spans = {
        "direction": range(first_dir, first_dir + len(DIRECTIONS)),
        "color": range(1, len(tables["color"])),
        "shape": range(1, len(tables["shape"])),
    }
    report = {"clips": len(clips), "source": str(args.model or args.tower or args.work)}
    for name, span in spans.items():
        head = "motion" if name == "direction" else name
        report[name] = code_readout(out, held, tables[head], head, per_clip, span)
    if args.linear:
        stream = ClipStream(cfg.seed, cfg, model.config.vision.num_frames)
        train = encode_clips(model, stream.take(args.linear), tables, cfg.min_share)
        train_out = model.projector.mlp.float()(train.tokens)
        report["direction_linear"] = {"train_clips": args.linear}
        for name, x, x_held in (("tower", train.tokens, held.tokens), ("connector", train_out, out)):
            fit = linear_readouts(x, train, x_held, held, per_clip, spans["direction"])
            report["direction_linear"].update({f"{name}_{k}": v for k, v in fit.items()})
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
