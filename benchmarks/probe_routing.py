"""Diagnostic: which answer format lets the demo's from-scratch LLM route a question's subject to the video?

"What color is the triangle?" asks the LLM to carry "triangle" from the question to where it answers and to look
it up among the visual tokens of several objects. `probe_binding.py` showed that the demo's visual tokens hold
the colour-shape binding and its LLM does not use it. This script isolates the LLM: the demo's LLM shape
(`Qwen2ForCausalLM`, 4 layers, width 128, 4 heads) and a 2-layer MLP connector, trained from scratch on
idealised scenes whose "visual tokens" are fixed random shape + colour vectors plus noise (16 tokens a frame,
2 per object, 4-8 frames, 1-4 objects with random colours), with every sample fresh. It compares answer formats:

* ``letter``: answer ``B`` (the asked attribute's letter in a fixed option list);
* ``restate``: answer ``<subject> <value> B`` - the subject copied from the question, the asked value right after
  it, then the letter; ``restate_sep`` puts one constant token between subject and value;

with the question before or after the options (``--q-last``), and ``pad`` constant tokens between the end of
the question and the answer (the chat template's ``<|im_end|>\\n<|im_start|>assistant\\n`` in the real data).
Held-out accuracy is per supervised answer token, teacher-forced (for ``restate``: subject copy / value given
the subject / letter given both).

    python benchmarks/probe_routing.py --steps 600 --readme   # the table in benchmarks/README.md (~8 min, 1 core)

``--tokens MODEL`` replaces the idealised tokens with a demo checkpoint's real ones: the generator's scenes rendered
in memory, through that checkpoint's tower and ToMe (before its connector; the probe trains its own), 1,200 scenes
for training and 256 held out, encoded once. ``--standardise`` / ``--whiten EPS`` rescale those tokens per channel /
per direction of their covariance. The variant ``shape x0.3`` makes the idealised shape code weaker than the colour
code, as the real tokens' turned out to behave (`benchmarks/README.md`, "Where the binding is lost").

    python benchmarks/probe_routing.py --tokens runs/demo22/stage0_mc/final --only "pad 5, 4 turns" --whiten 1e-4

``--connector codes`` (with ``--tokens``) replaces the probe's trained connector by the checkpoint's connector,
re-initialised and distilled onto attribute codes as the demo's ``stage0_codes`` does it
(`videochat_flash.train.connector_codes`, recipe ``recipes/demo/stage0_codes.yaml``), then frozen.

Not a test: never run in CI.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import append_readme, command_line, machine_line, markdown_table  # noqa: E402

from videochat_flash.config import Qwen2Config  # noqa: E402
from videochat_flash.model.init import init_weights_  # noqa: E402
from videochat_flash.model.qwen2 import Qwen2ForCausalLM  # noqa: E402

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLORS = ("red", "green", "blue", "yellow", "white")
LETTERS = ("A", "B", "C", "D", "E")
FEATURE_DIM = 96  # the demo tower's width
TOKENS_PER_FRAME = 16
WORDS = (
    (
        "<pad>",
        "<sys>",
        "<user>",
        "<asst>",
        "<eot>",
        "<vs>",
        "<ve>",
        "What",
        "color",
        "shape",
        "is",
        "the",
        "?",
        ":",
    )
    + ("Which", ".", "(A)", "(B)", "(C)", "(D)", "(E)", "absent")
    + SHAPES
    + COLORS
    + LETTERS
)
VOCAB = {w: i for i, w in enumerate(WORDS)}


@dataclass(frozen=True)
class Variant:
    answer: str  # letter | restate | restate_sep
    q_last: bool
    pad: int = 0
    turns: int = 1  # questions per sample (multi-turn)
    # multiplies the connector's output (the demo's visual tokens are ~30x the text embeddings' norm)
    visual_scale: float = 1.0
    lone: float = 0.0  # share of training scenes with one object (the demo's MC phase: ~0.7), the rest 2-4
    # share of training questions whose subject is drawn from the whole vocabulary, present in the scene or not
    # (answered ``<subject> absent`` when not): the video alone then says nothing of which subject is asked
    any_subject: float = 0.0
    # text-only samples added to each training batch: a question with no video, answered ``<subject> absent``,
    # so the subject copy is also trained where it is cheap (no video to decode, no tower, a short sequence)
    text_copy: int = 0
    # the shape code's norm relative to the colour code's in idealised object tokens (1: equal)
    shape_weight: float = 1.0

    @property
    def slots(self) -> tuple:
        """What each supervised answer token is scored as (None: the separator, a constant)."""
        return {"letter": (0,), "restate": ("subject", "value", "letter")}.get(
            self.answer, ("subject", None, "value", "letter")
        )

    @property
    def name(self) -> str:
        order = "question last" if self.q_last else "question first"
        extra = f", pad {self.pad}" if self.pad else ""
        extra += f", {self.turns} turns" if self.turns > 1 else ""
        extra += f", visual x{self.visual_scale:g}" if self.visual_scale != 1 else ""
        extra += f", {self.lone:.0%} lone" if self.lone else ""
        extra += f", {self.any_subject:.0%} any subject" if self.any_subject else ""
        extra += f", +{self.text_copy} text copy" if self.text_copy else ""
        extra += f", shape x{self.shape_weight:g}" if self.shape_weight != 1 else ""
        return f"{self.answer}, {order}" + extra


VARIANTS = (
    Variant("letter", q_last=False),
    Variant("letter", q_last=True),
    Variant("restate", q_last=False),
    Variant("restate", q_last=True),
    Variant("restate_sep", q_last=True),
    Variant("restate", q_last=True, pad=5),
    Variant("restate", q_last=True, pad=8),
    Variant("restate", q_last=True, pad=5, turns=4),
    Variant("restate", q_last=True, pad=5, visual_scale=30),
    Variant("restate", q_last=True, pad=5, lone=0.7),
    Variant("restate", q_last=True, pad=5, lone=0.7, any_subject=0.5),
    Variant("restate", q_last=True, pad=5, lone=0.7, any_subject=1.0),
    Variant("restate", q_last=True, pad=5, lone=0.7, any_subject=0.5, text_copy=8),
    Variant("restate", q_last=True, pad=5, turns=4, shape_weight=0.3),
)


class Scenes:
    """Random scenes and their idealised visual tokens: shape vector + colour vector + noise per object token."""

    def __init__(self, seed: int, noise: float = 0.5):
        g = torch.Generator().manual_seed(1234)  # the same "tower" for every run
        self.shape_vec = torch.randn(len(SHAPES), FEATURE_DIM, generator=g)
        self.color_vec = torch.randn(len(COLORS), FEATURE_DIM, generator=g)
        self.rng = random.Random(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.noise = noise

    def scene(self, lone: float = 0.0) -> list[tuple[int, int]]:
        """1-4 objects with distinct shapes; colours drawn freely, at least one of them unique (shape questions)."""
        while True:
            count = 1 if lone and self.rng.random() < lone else self.rng.randint(1 if not lone else 2, 4)
            shapes = self.rng.sample(range(len(SHAPES)), count)
            objs = [(s, self.rng.randrange(len(COLORS))) for s in shapes]
            colors = [c for _, c in objs]
            if any(colors.count(c) == 1 for c in colors):
                return objs

    def tokens(self, objs: list[tuple[int, int]], shape_weight: float = 1.0) -> torch.Tensor:
        frames = []
        for _ in range(self.rng.randint(4, 8)):
            frame = torch.randn(TOKENS_PER_FRAME, FEATURE_DIM, generator=self.gen) * self.noise
            slots = self.rng.sample(range(TOKENS_PER_FRAME), 2 * len(objs))
            for k, (s, c) in enumerate(objs):
                for slot in slots[2 * k : 2 * k + 2]:
                    noise = torch.randn(FEATURE_DIM, generator=self.gen) * self.noise
                    frame[slot] = shape_weight * self.shape_vec[s] + self.color_vec[c] + noise
            frames.append(frame)
        return torch.cat(frames)


class RealScenes(Scenes):
    """The generator's scenes (`data.shapes.sample_scene`: 1-4 objects, 4-16 s at 1 fps, rendered in memory, no mp4)
    with a demo checkpoint's real visual tokens: its tower's features merged by ToMe to 16 per frame, before the
    connector (the probe trains its own). A bank of scenes is encoded once per checkpoint and split; `scene()` draws
    from it."""

    _banks: dict = {}

    def __init__(self, seed: int, model_dir: str, held_out: bool, standardise: bool, whiten: float = 0.0):
        super().__init__(seed)
        key = (model_dir, held_out, standardise, whiten)
        if key not in self._banks:
            bank = encode_bank(model_dir, seed=99 if held_out else 7, count=256 if held_out else 1200)
            if whiten:
                bank = whitened(bank, whiten)
            self._banks[key] = standardised(bank) if standardise else bank
        self.bank = self._banks[key]
        self._tokens = None

    def scene(self, lone: float = 0.0) -> list[tuple[int, int]]:
        """With ``lone``, that share of scenes holds one object and the rest 2-4 (as `Scenes`); else 1-4."""
        one = bool(lone) and self.rng.random() < lone
        while True:
            objs, tokens = self.bank[self.rng.randrange(len(self.bank))]
            if not lone or (len(objs) == 1) == one:
                self._tokens = tokens
                return objs

    def tokens(self, objs: list[tuple[int, int]], shape_weight: float = 1.0) -> torch.Tensor:
        return self._tokens  # `batch` asks for the tokens of the scene it has just drawn


def encode_bank(model_dir: str, seed: int, count: int) -> list[tuple[list[tuple[int, int]], torch.Tensor]]:
    """``count`` scenes that `Scenes.scene` could draw (distinct shapes, one colour at least unique) and their tokens."""
    import numpy as np

    from videochat_flash.data.shapes import render_frame, sample_scene
    from videochat_flash.model.tome import tome_merge
    from videochat_flash.model.videochat import VideoChatFlash

    model = VideoChatFlash.from_pretrained(model_dir)
    per_clip = model.config.frames_per_clip
    rng = np.random.default_rng(seed)
    bank = []
    while len(bank) < count:
        scene = sample_scene(
            rng, duration=float(rng.integers(4, 17)), fps=1.0, size=64, num_objects=int(rng.integers(1, 5))
        )
        objs = [(SHAPES.index(o.shape), COLORS.index(o.color)) for o in scene.objects]
        colors = [c for _, c in objs]
        if len({s for s, _ in objs}) < len(objs) or not any(colors.count(c) == 1 for c in colors):
            continue
        frames = np.stack([render_frame(scene, i) for i in range(scene.num_frames // per_clip * per_clip)])
        with torch.no_grad():
            clips = model.preprocess_video(frames).unflatten(0, (-1, per_clip))
            merged = tome_merge(model.vision(clips), TOKENS_PER_FRAME * per_clip, model.projector.cfg.merge_heads)
        bank.append((objs, merged.flatten(0, 1).float()))
    return bank


def standardised(bank: list) -> list:
    """Each channel to zero mean, unit variance over the bank's tokens (as `probe_binding.py` feeds its probe)."""
    every = torch.cat([t for _, t in bank])
    mean, std = every.mean(0), every.std(0) + 1e-6
    return [(objs, (t - mean) / std) for objs, t in bank]


def whitened(bank: list, eps: float) -> list:
    """The tokens centred and whitened (covariance -> identity; eigenvalues below ``eps`` x the largest are floored
    there), over the bank's own tokens: every direction of the feature space at the same scale. Not
    `train.vision_pretrain.pca_whitening`: that one floors each component's std at an absolute 1e-3, and the
    measured lookup depended on a floor relative to the largest eigenvalue (`benchmarks/README.md`)."""
    every = torch.cat([t for _, t in bank])
    mean = every.mean(0)
    values, vectors = torch.linalg.eigh(torch.cov((every - mean).T, correction=0))
    floor = eps * values.max()
    transform = vectors @ torch.diag((values.clamp(min=0) + floor).rsqrt()) @ vectors.T
    return [(objs, (t - mean) @ transform) for objs, t in bank]


def make_scenes(seed: int, held_out: bool) -> Scenes:
    if TOKENS["model"]:
        return RealScenes(seed, TOKENS["model"], held_out, TOKENS["standardise"], TOKENS["whiten"])
    return Scenes(seed)


TOKENS = {"model": "", "standardise": False, "whiten": 0.0, "connector": "trained"}  # set from the command line
_DISTILLED: dict = {}


def distilled_connector(model_dir: str) -> nn.Module:
    """The checkpoint's connector, re-initialised (as a build starts it), distilled onto attribute codes with the
    demo's ``stage0_codes`` recipe, and frozen; the tower is the checkpoint's."""
    if model_dir not in _DISTILLED:
        from videochat_flash.model.videochat import VideoChatFlash
        from videochat_flash.train.connector_codes import ConnectorCodesConfig, distil_connector_
        from videochat_flash.train.demo import CODES_STAGE, DEMO_RECIPES

        model = VideoChatFlash.from_pretrained(model_dir).float().eval()
        cfg = ConnectorCodesConfig.from_yaml(DEMO_RECIPES / f"{CODES_STAGE}.yaml")  # re-initialises the connector
        metrics = distil_connector_(model, cfg, progress=False)
        print(f"connector distilled onto codes: held-out {metrics['heldout']}", flush=True)
        _DISTILLED[model_dir] = model.projector.mlp.requires_grad_(False)
    return copy.deepcopy(_DISTILLED[model_dir])


def prompt_words(ask: list[str], options: tuple[str, ...], variant: Variant) -> list[str]:
    """The options listing and the question (in the variant's order), then the end of turn and the padding."""
    listing = [w for i, o in enumerate(options) for w in (f"({LETTERS[i]})", o)]
    return ((listing + ask) if variant.q_last else (ask + listing)) + ["<eot>", "<asst>"] + ["."] * variant.pad


def question(
    scenes: Scenes, objs, kind: str, variant: Variant, any_subject: float = 0.0
) -> tuple[list[str], list[str]]:
    """(prompt words after the video, supervised answer words) for a colour or a shape question; with probability
    ``any_subject`` the subject is drawn from the whole vocabulary (answer ``<subject> absent`` if not in view)."""
    colors = [c for _, c in objs]
    if scenes.rng.random() < any_subject:
        vocabulary = SHAPES if kind == "color" else COLORS
        subject = scenes.rng.choice(vocabulary)
        present = [o for o in objs if (SHAPES[o[0]] if kind == "color" else COLORS[o[1]]) == subject]
        if not present:
            ask = ["What", "color", "is", "the", subject, "?"] if kind == "color" else ["Which", "shape", "is", subject, "?"]
            return prompt_words(ask, COLORS if kind == "color" else SHAPES, variant), [subject, "absent"]
        if kind == "shape" and colors.count(present[0][1]) > 1:
            kind = "color"  # an ambiguous colour: ask a colour question instead
    if kind == "color":
        s, c = scenes.rng.choice(objs)
        subject, value, ask = SHAPES[s], COLORS[c], ["What", "color", "is", "the", SHAPES[s], "?"]
        options, letter = COLORS, LETTERS[c]
    else:
        s, c = scenes.rng.choice([o for o in objs if colors.count(o[1]) == 1])
        subject, value, ask = COLORS[c], SHAPES[s], ["Which", "shape", "is", COLORS[c], "?"]
        options, letter = SHAPES, LETTERS[s]
    prompt = prompt_words(ask, options, variant)
    if variant.answer == "letter":
        return prompt, [letter]
    sep = [":"] if variant.answer == "restate_sep" else []
    return prompt, [subject, *sep, value, letter]


def batch(scenes, llm, connector, variant: Variant, size: int, kind: str | None = None):
    """Embedded sequences [B, L, D], mask, labels, and per supervised token: (row, position, target, slot).

    With ``variant.turns`` > 1 a sample asks several questions about its scene, one turn each (as the demo's
    multi-turn records do); every turn's answer is supervised and scored."""
    samples = []
    for _ in range(size):
        objs = scenes.scene(variant.lone if kind is None else 0.0)  # held-out scenes: always 1-4 objects
        words, scored = ["<ve>"], []  # scored: (index in words, slot)
        for turn in range(variant.turns):
            share = variant.any_subject if kind is None else 0.0  # held-out questions: present subjects only
            prompt, answer = question(scenes, objs, kind or scenes.rng.choice(["color", "shape"]), variant, share)
            words += (["<user>"] if turn else []) + prompt
            scored += [(len(words) + k, slot) for k, slot in enumerate(variant.slots[: len(answer)])]
            words += answer + (["<eot>"] if turn + 1 < variant.turns else [])
        samples.append((scenes.tokens(objs, variant.shape_weight), words, scored))
    for _ in range(variant.text_copy if kind is None else 0):
        prompt, answer = question(scenes, [], scenes.rng.choice(["color", "shape"]), variant, any_subject=1.0)
        words = ["<ve>"] + prompt
        samples.append((torch.zeros(0, FEATURE_DIM), words + answer, [(len(words), "subject"), (len(words) + 1, None)]))
    length = max(3 + v.shape[0] + len(w) for v, w, _ in samples)
    x = torch.zeros(len(samples), length, llm.cfg.hidden_size)
    mask = torch.zeros(len(samples), length, dtype=torch.bool)
    labels = torch.full((len(samples), length), -100)
    targets = []
    head = torch.tensor([VOCAB[w] for w in ("<sys>", "<user>", "<vs>")])
    for b, (vis, words, scored) in enumerate(samples):
        tail = torch.tensor([VOCAB[w] for w in words])
        emb = torch.cat([llm.embed(head), connector(vis) * variant.visual_scale, llm.embed(tail)])
        n = emb.shape[0]
        x[b, :n], mask[b, :n] = emb, True
        for k, slot in scored:
            pos = n - len(words) + k
            labels[b, pos] = tail[k]
            targets.append((b, pos - 1, int(tail[k]), slot))
    return x, mask, labels, targets


def evaluate(llm, connector, variant: Variant, seed: int) -> dict[str, dict[int | str, float]]:
    scenes = make_scenes(seed, held_out=True)
    out = {}
    with torch.no_grad():
        for kind in ("color", "shape"):
            right, total = {}, {}
            for _ in range(4):
                x, mask, _, targets = batch(scenes, llm, connector, variant, 32, kind)
                logits, _, _ = llm(x, attention_mask=mask)
                for b, pos, target, slot in targets:
                    if slot is None:
                        continue
                    right[slot] = right.get(slot, 0) + int(logits[b, pos].argmax() == target)
                    total[slot] = total.get(slot, 0) + 1
            out[kind] = {slot: right[slot] / total[slot] for slot in total}
    return out


def train_variant(variant: Variant, steps: int, eval_every: int, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(WORDS),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    llm = Qwen2ForCausalLM(cfg)
    init_weights_(llm, seed=seed)
    if TOKENS["connector"] == "codes":
        connector = distilled_connector(TOKENS["model"])
    else:
        connector = nn.Sequential(nn.Linear(FEATURE_DIM, 128), nn.GELU(), nn.Linear(128, 128))
    params = [p for p in list(llm.parameters()) + list(connector.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    scenes = make_scenes(seed, held_out=False)
    history = []
    t0 = time.time()
    for step in range(1, steps + 1):
        x, mask, labels, _ = batch(scenes, llm, connector, variant, 8)
        _, loss, _ = llm(x, attention_mask=mask, labels=labels)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % eval_every == 0:
            history.append({"step": step, **evaluate(llm, connector, variant, seed=10_000)})
            print(f"[{variant.name}] step {step} {history[-1]} ({time.time() - t0:.0f} s)", flush=True)
    return history


def cell(acc: dict) -> str:
    if set(acc) == {0}:
        return f"{100 * acc[0]:.0f}"
    return " / ".join(f"{100 * acc[k]:.0f}" for k in ("subject", "value", "letter"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--readme", action="store_true", help="append the table to benchmarks/README.md")
    p.add_argument("--only", default="", help="run only the variants whose name contains this text")
    p.add_argument("--tokens", default="", help="a demo checkpoint: its real ToMe'd tower tokens, not idealised ones")
    p.add_argument("--standardise", action="store_true", help="with --tokens: standardise each token channel")
    p.add_argument(
        "--whiten", type=float, default=0.0, help="with --tokens: whiten the tokens, eigenvalue floor EPS x the largest"
    )
    p.add_argument(
        "--connector",
        choices=("trained", "codes"),
        default="trained",
        help="with --tokens: 'codes' = the checkpoint's connector distilled onto attribute codes (stage0_codes), frozen",
    )
    args = p.parse_args()
    if args.connector == "codes" and not args.tokens:
        p.error("--connector codes needs --tokens MODEL (the tower it distils over)")
    torch.set_num_threads(args.threads)
    TOKENS.update(model=args.tokens, standardise=args.standardise, whiten=args.whiten, connector=args.connector)
    t0 = time.time()
    chosen = [v for v in VARIANTS if args.only in v.name]
    results = {v: train_variant(v, args.steps, args.eval_every, args.seed) for v in chosen}
    steps = [h["step"] for h in next(iter(results.values()))]
    headers = ["format", "question"] + [f"{kind} @{s}" for kind in ("color", "shape") for s in steps]
    rows = [
        [v.name.split(",")[0], ", ".join(v.name.split(", ")[1:])]
        + [cell(h[kind]) for kind in ("color", "shape") for h in hist]
        for v, hist in results.items()
    ]
    table = markdown_table(headers, rows)
    print(table)
    if args.readme:
        body = (
            f"`{command_line()}` ({time.time() - t0:.0f} s; {machine_line()})\n\n"
            "Held-out accuracy in % after N steps (batch 8, fresh samples). `letter`: the answer letter; "
            "`restate` cells: subject copied / value given the subject / letter given both "
            "(teacher-forced).\n\n" + table
        )
        append_readme("Routing probe: answer formats for the demo LLM (`probe_routing.py`)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
