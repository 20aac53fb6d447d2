"""Diagnostic: can the demo's from-scratch LLM learn order, count and direction from ideal visual tokens?

The demo model's connector is distilled onto attribute codes (`videochat_flash.train.connector_codes`): each
merged token of an object maps to the sum of one fixed random vector per colour, shape, motion and onset class
(zero for background). Colour and shape questions reach 90%+ on the real build; order of appearance, count and
direction stay at 38-67%. This script asks whether the LLM itself can learn them in the steps the build gives
it, with perfect codes: scenes come from the generator (`data.shapes.sample_scene`, the short and long pools'
sizes and timings, 1 fps), and each sampled frame becomes 16 tokens: 2-3 per visible object carrying that
object's codes (motion: its direction on a clip where it moves, else "still"; onset: relative to its 4-frame
clip, as `data.dense` labels it), the rest zero, plus Gaussian noise on every token. Every sample is fresh;
one video's questions are one multi-turn conversation as in `stage0_mc`. Held-out accuracy is per answer
value, teacher-forced.

    OMP_NUM_THREADS=1 python benchmarks/probe_temporal.py --steps 1500 --variant base   # 32 min, 1 core

``--variant enumerate`` answers count and order questions by first listing the shapes in order of appearance;
``--variant echo`` starts direction and order answers with what the question names (the object, or
"first"/"last"), as session 21's trial of `data.tasks` did. ``--always-moving`` puts the direction code on every
clip of an object (as if it never stood still); ``--last-share`` is the share of order questions asking "last";
``--with-shape`` adds the real data's shape questions ("Which shape is red?" -> "red square"), whose answers
start like echoed direction answers; ``--every-object`` asks colour and shape of every object too (more turns,
as the real records); ``--long-order-echo`` echoes order with the real data's words ("shape that appeared last
red"); ``--absent N`` adds N questions per video about a shape or colour not in view (answered "<subject> then",
"then" standing for the real data's "is not in the video"); ``--absent-from F`` trains the first F of the steps
without them (held-out samples always have them); ``--letters`` ends each answer with its value's option letter,
as the real answers do (reported as value/letter L/whole answer).
Results: `benchmarks/README.md`, "Temporal probe". Not a test: never run in CI.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

from videochat_flash.config import Qwen2Config
from videochat_flash.data.dense import MOTION_CLASSES, _moves, _onset_class
from videochat_flash.data.shapes import COLORS, DIRECTIONS, SHAPES, sample_scene
from videochat_flash.model.init import init_weights_
from videochat_flash.model.qwen2 import Qwen2ForCausalLM
from videochat_flash.train.connector_codes import attribute_tables

TOKENS_PER_FRAME = 16
CLIP = 4
COUNTS = ("1", "2", "3", "4", "5")
WORDS = (
    (
        "<pad>",
        "<sys>",
        "<user>",
        "<asst>",
        "<eot>",
        "Option:",
        "Question:",
        "Answer:",
        "(A)",
        "(B)",
        "(C)",
        "(D)",
    )
    + (
        "(E)",
        ".",
        "What",
        "color",
        "is",
        "the",
        "shape",
        "that",
        "appeared",
        "first",
        "last",
        "?",
        "How",
        "many",
    )
    + (
        "shapes",
        "appear",
        "In",
        "which",
        "direction",
        "does",
        "move",
        "then",
        "Which",
        "sys1",
        "sys2",
        "sys3",
    )
    + COLORS
    + SHAPES
    + DIRECTIONS
    + COUNTS
)
VOCAB = {w: i for i, w in enumerate(WORDS)}
SYSTEM = ["<sys>", "sys1", "sys2", "sys3", "<eot>", "<user>"]


def draw_scene(rng: np.random.Generator, long_share: float):
    long = rng.random() < long_share
    seconds = rng.uniform(16, 48) if long else rng.uniform(4, 16)
    n = int(rng.integers(2, 6)) if long else int(rng.integers(1, 5))
    return sample_scene(
        rng, duration=round(seconds), fps=1.0, size=64, num_objects=n, kind="long" if long else "short"
    )


def visual_tokens(scene, tables, rng: np.random.Generator, noise: float, always_moving: bool) -> torch.Tensor:
    frames = max(CLIP, scene.num_frames // CLIP * CLIP)
    dim = tables["color"].shape[1]
    out = torch.zeros(frames, TOKENS_PER_FRAME, dim)
    for c0 in range(0, frames, CLIP):
        ids = list(range(c0, c0 + CLIP))
        for o in scene.objects:
            moving = always_moving or _moves(o, ids)
            motion = MOTION_CLASSES.index(o.direction if moving else "still")
            onset = _onset_class(o.start_frame, c0)
            code = (
                tables["color"][COLORS.index(o.color) + 1]
                + tables["shape"][SHAPES.index(o.shape) + 1]
                + tables["motion"][motion]
                + tables["onset"][onset]
            )
            for f in ids:
                if o.visible(f):
                    free = [s for s in range(TOKENS_PER_FRAME) if not out[f, s].any()]
                    k = 3 if o.size == "big" else 2
                    for s in rng.choice(free, size=min(k, len(free)), replace=False):
                        out[f, s] = code
    out = out.flatten(0, 1)
    return out + noise * torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32))


def questions(scene, rng: np.random.Generator, args: argparse.Namespace, absent: int) -> list[tuple]:
    """(task, question words, answer words, scored value) per question the scene allows, as ``args`` ask, with
    ``absent`` questions about subjects not in view."""
    objs = scene.objects
    out = []
    o = objs[int(rng.integers(len(objs)))]
    out.append(("color", ["What", "color", "is", "the", o.shape, "?"], [o.shape, o.color], o.color))
    variant = args.variant
    if args.with_shape:  # "Which shape is red?" -> "red square", as the real data asks
        s = objs[int(rng.integers(len(objs)))]
        out.append(("shape", ["Which", "shape", "is", s.color, "?"], [s.color, s.shape], s.shape))
    # subjects not in view, answered "<subject> then" ("then" stands for "not here")
    absent_shapes = [x for x in SHAPES if x not in {y.shape for y in objs}]
    absent_colors = [x for x in COLORS if x not in {y.color for y in objs}]
    for k in range(absent):
        if k % 2 == 0 and absent_shapes:
            a = absent_shapes[int(rng.integers(len(absent_shapes)))]
            out.append(("color_absent", ["What", "color", "is", "the", a, "?"], [a, "then"], "then"))
        elif absent_colors:
            a = absent_colors[int(rng.integers(len(absent_colors)))]
            out.append(("shape_absent", ["Which", "shape", "is", a, "?"], [a, "then"], "then"))
    if args.every_object:  # the real data asks colour and shape of every object
        for x in objs:
            out.append(("color", ["What", "color", "is", "the", x.shape, "?"], [x.shape, x.color], x.color))
            out.append(("shape", ["Which", "shape", "is", x.color, "?"], [x.color, x.shape], x.shape))
    d = objs[int(rng.integers(len(objs)))]
    out.append(
        (
            "direction",
            ["In", "which", "direction", "does", "the", d.color, d.shape, "move", "?"],
            [d.color, d.shape, d.direction] if variant == "echo" else ["Answer:", d.direction],
            d.direction,
        )
    )
    if 1 <= len(objs) <= 5:
        if variant == "enumerate":  # list the shapes in order of appearance, then the count
            ans = [w for x in objs for w in (x.color, x.shape)] + ["then", str(len(objs))]
        else:
            ans = ["Answer:", str(len(objs))]
        out.append(("count", ["How", "many", "shapes", "appear", "?"], ans, str(len(objs))))
    starts = [x.start_frame for x in objs]
    if len(objs) >= 2 and len(set(starts)) == len(starts):
        last = bool(rng.random() < args.last_share)
        t = objs[-1] if last else objs[0]
        q = ["What", "color", "is", "the", "shape", "that", "appeared", "last" if last else "first", "?"]
        if variant == "enumerate":
            ans = [w for x in objs for w in (x.color, x.shape)] + ["then", t.color]
        elif variant == "echo":  # the answer starts by naming what is asked: "last red"
            ans = ["last" if last else "first", t.color]
            if args.long_order_echo:  # the real data's words: "shape that appeared last red"
                ans = ["shape", "that", "appeared", *ans]
        else:
            ans = ["Answer:", t.color]
        out.append(("order_last" if last else "order_first", q, ans, t.color))
    rng.shuffle(out)
    return out


def build(scene, tables, rng, args, absent: int | None = None):
    """One sample: (token ids with zeros where the video goes, labels, visual tokens, where they start,
    the scored answers as (task, first answer position, answer length)); ``absent``: as ``args.absent`` if None."""
    vis = visual_tokens(scene, tables, rng, args.noise, args.always_moving)
    ids, scored = [VOCAB[w] for w in SYSTEM], []
    labels = [-100] * len(ids)
    vis_at = len(ids)
    ids += [0] * vis.shape[0]
    labels += [-100] * vis.shape[0]
    absent = args.absent if absent is None else absent
    for k, (task, q, ans, value) in enumerate(questions(scene, rng, args, absent)):
        opts = {"color": COLORS, "shape": SHAPES, "direction": DIRECTIONS, "count": COUNTS}.get(
            task.split("_")[0], COLORS
        )
        prompt = ([] if k == 0 else ["<user>"]) + ["Option:"]
        for i, w in enumerate(opts):
            prompt += [f"({'ABCDE'[i]})", w]
        prompt += ["Question:", *q, "<eot>", "<asst>"]
        ids += [VOCAB[w] for w in prompt]
        labels += [-100] * len(prompt)
        assert ans[-1] == value
        letter = args.letters and value in opts
        if letter:  # the value's option letter after it, as the real answers end ("... red (A).")
            ans = [*ans, f"({'ABCDE'[opts.index(value)]})"]
        scored.append((task, len(ids), len(ans), letter))  # the answer's span; the value ends it, or its letter
        ids += [VOCAB[w] for w in ans]
        labels += [VOCAB[w] for w in ans]
        ids += [VOCAB["."], VOCAB["<eot>"]]
        labels += [VOCAB["."], VOCAB["<eot>"]]
    return torch.tensor(ids), torch.tensor(labels), vis, vis_at, scored


def batch(samples, model):
    n = max(len(s[0]) for s in samples)
    dim = model.cfg.hidden_size
    emb = torch.zeros(len(samples), n, dim)
    lab = torch.full((len(samples), n), -100)
    mask = torch.zeros(len(samples), n, dtype=torch.bool)
    for b, (ids, labels, vis, at, _) in enumerate(samples):
        e = model.embed(ids)
        e = torch.cat([e[:at], vis, e[at + len(vis) :]])
        emb[b, : len(ids)] = e
        lab[b, : len(ids)] = labels
        mask[b, : len(ids)] = True
    return emb, lab, mask


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--noise", type=float, default=0.7)
    p.add_argument("--long-share", type=float, default=0.3)
    p.add_argument("--variant", default="base", choices=("base", "enumerate", "echo"))
    p.add_argument("--last-share", type=float, default=0.3, help="share of order questions asking 'last'")
    p.add_argument(
        "--always-moving", action="store_true", help="every visible clip carries the direction code (no 'still')"
    )
    p.add_argument("--with-shape", action="store_true", help="also ask 'Which shape is red?' as the real data does")
    p.add_argument("--absent", type=int, default=0, help="questions per video about subjects not in view")
    p.add_argument(
        "--absent-from", type=float, default=0.0, help="share of the steps trained before absent questions start"
    )
    p.add_argument("--every-object", action="store_true", help="colour and shape of every object too (more turns)")
    p.add_argument("--long-order-echo", action="store_true", help="order echoed as 'shape that appeared last red'")
    p.add_argument("--letters", action="store_true", help="answers end with the value's option letter: 'red (A)'")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    cfg = Qwen2Config(
        vocab_size=len(WORDS),
        hidden_size=args.hidden,
        intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(cfg)
    init_weights_(model, seed=args.seed)
    tables = attribute_tables(("color", "shape", "motion", "onset"), args.hidden, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warm = max(1, int(0.03 * args.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))
    )
    train_rng = np.random.default_rng(args.seed + 1)
    held = np.random.default_rng(10_000)
    held_out = [
        build(draw_scene(held, args.long_share), tables, held, args) for _ in range(160)
    ]
    t0 = time.time()
    print(f"# {vars(args)}", flush=True)
    for step in range(1, args.steps + 1):
        model.train()
        absent = args.absent if step > args.absent_from * args.steps else 0
        samples = [
            build(draw_scene(train_rng, args.long_share), tables, train_rng, args, absent)
            for _ in range(args.batch)
        ]
        emb, lab, mask = batch(samples, model)
        _, loss, _ = model(emb, attention_mask=mask, labels=lab)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            print(
                f"step {step} loss {loss.item():.3f} {time.time() - t0:.0f}s " + evaluate(model, held_out),
                flush=True,
            )
    return 0


@torch.no_grad()
def evaluate(model, held_out) -> str:
    model.eval()
    right, exact, total, letters = {}, {}, {}, {}
    for i in range(0, len(held_out), 16):
        chunk = held_out[i : i + 16]
        emb, _, mask = batch(chunk, model)
        logits, _, _ = model(emb, attention_mask=mask)
        for b, s in enumerate(chunk):
            ids = s[0]
            for task, at, n, letter in s[4]:
                pred = logits[b, at - 1 : at + n - 1].argmax(-1)
                hit = pred == ids[at : at + n]
                # value: the value word given the rest (teacher-forced); exact: every word, i.e.
                # greedy decoding from the answer's start gives exactly this answer
                right[task] = right.get(task, 0) + int(hit[-2 if letter else -1])
                exact[task] = exact.get(task, 0) + int(hit.all())
                total[task] = total.get(task, 0) + 1
                if letter:  # the letter given the value and the rest
                    letters[task] = letters.get(task, 0) + int(hit[-1])
    return " ".join(
        f"{t} {right[t] / total[t]:.0%}/"
        + (f"{letters[t] / total[t]:.0%}L/" if t in letters else "")
        + f"{exact[t] / total[t]:.0%}({total[t]})"
        for t in sorted(total)
    )


if __name__ == "__main__":
    sys.exit(main())
