"""Dense supervised pre-training of the UMT tower on synthetic clips (the demo model's stand-in for UMT's own
pre-training, which distils CLIP on millions of real videos).

Linear heads on the tower's output tokens predict each patch's colour, shape, motion and onset, and a head on
the mean token predicts how many objects the clip shows (`videochat_flash.data.dense`). Clips are rendered in
memory, never repeat, and alternate between the resolutions the later stages use (64 px, then 96 px in the
high-resolution stage), whose position tables are both interpolated from the same sinusoid.

The output is a UMT ``.pt`` (``encoder.*`` keys, as the released UMT-L file) that a recipe loads with
``model.vision_weights``; the heads are thrown away. A metrics JSON beside it records the held-out accuracy.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import UMTConfig
from ..data.dense import (
    MAX_COUNT,
    PATCH_HEADS,
    UNLABELLED,
    DenseClip,
    owner_labels,
    patch_owner,
    sample_dense_clips,
)
from ..data.shapes import STYLE
from ..model.init import init_weights_
from ..model.preprocess import preprocess_frames
from ..model.umt import UMTEncoder, video_position_table
from .trainer import WarmupSchedule, _progress

PATCH_INITS = ("pca", "random")
MOTION_HEADS = ("motion", "object_motion")  # the losses the motion warm-up trains


@dataclass
class VisionPretrainConfig:
    steps: int = 1500
    batch_size: int = 32
    clips_per_scene: int = 4  # clips of one scene in a batch (scene sampling is the costly part)
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    grad_clip: float = 1.0
    frame_size: int = 64  # rendered frame side (the synthetic videos' size)
    image_sizes: tuple[int, ...] = (64, 64, 64, 96)  # encoder input sizes, cycled per step (96 px costs 4x)
    needle_prob: float = 0.1
    seed: int = 0
    eval_clips: int = 256
    log_every: int = 50
    init_clips: int = 64  # clips whose patches set the whitened patch-embedding init
    # "pca": whitened principal components of sample patches (shape learned sooner); "random": the plain
    # N(0, 0.02) init, under which the tower learns sub-patch motion sooner (benchmarks/README.md, motion probe)
    patch_init: str = "pca"
    patch_init_gain: float = 2.0
    # First steps: motion-only scenes (`data.dense.MOTION_KIND`) and the motion heads alone. The tower learned
    # direction only so: from the mixed clips, or with the other heads on from step 1, the motion loss stayed at
    # chance (benchmarks/README.md, motion in the tower's pre-training).
    motion_warmup_steps: int = 0
    # After the warm-up, this share of each batch's clips still comes from the motion-only scenes (all heads on
    # them): without them the motion learned in the warm-up was mostly lost once the pools' clips came in. At 0.25
    # the demo tower's held-out motion rose from 68% to 79% per patch, shape unchanged (benchmarks/README.md,
    # "Direction in the connector codes").
    motion_mix: float = 0.0
    loss_weights: dict[str, float] = field(default_factory=lambda: {"count": 0.5})

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> VisionPretrainConfig:
        """The ``vision_pretrain:`` section of a recipe YAML (unknown fields are an error), then ``overrides``."""
        from .recipes import dataclass_from_section

        return dataclass_from_section(cls, path, "vision_pretrain", overrides)

    def __post_init__(self) -> None:
        if self.patch_init not in PATCH_INITS:
            raise ValueError(f"vision_pretrain.patch_init must be one of {PATCH_INITS}, got {self.patch_init!r}")
        if not 0.0 <= self.motion_mix < 1.0:
            raise ValueError(f"vision_pretrain.motion_mix must be in [0, 1), got {self.motion_mix}")


class DenseHeads(nn.Module):
    """Linear classifiers: per patch (`PATCH_HEADS`), per object on the mean of its patches (``object_*``), and
    the object count on the mean token.

    The object heads matter most: ToMe merges an object's similar patches into a few size-weighted averages,
    so the mean of an object's patches is close to what the LLM receives; and a mean of boundary patches (a bag
    of local edges) already tells shapes apart, which per-patch heads alone only learned after the attention
    found same-object patches (measured: shape at chance for 700 steps with per-patch heads only).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.patch = nn.ModuleDict(
            {name: nn.Linear(dim, len(classes)) for name, classes in PATCH_HEADS.items()}
        )
        self.object = nn.ModuleDict(
            {name: nn.Linear(dim, len(classes)) for name, classes in PATCH_HEADS.items()}
        )
        self.count = nn.Linear(dim, MAX_COUNT)

    def forward(self, tokens: torch.Tensor, owner: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``owner [B, N]``: object index per token (-1 = background); without it the object heads are skipped."""
        out = {name: head(tokens) for name, head in self.patch.items()}
        out["count"] = self.count(tokens.mean(dim=1))
        if owner is not None:
            pooled = object_means(tokens, owner)
            out.update({f"object_{name}": head(pooled) for name, head in self.object.items()})
        return out


def object_means(tokens: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """`[B, K, C]`: the mean token of each object's patches (K = max objects per clip; zeros where absent)."""
    k = max(1, int(owner.max()) + 1)
    onehot = F.one_hot(owner.clamp(min=-1) + 1, k + 1)[..., 1:].to(
        tokens.dtype
    )  # [B, N, K], background dropped
    sums = torch.einsum("bnk,bnc->bkc", onehot, tokens)
    return sums / onehot.sum(dim=1).clamp(min=1)[..., None]


def clip_pixels(clips: list[DenseClip], image_size: int) -> torch.Tensor:
    """`[B, T, 3, S, S]`: the clips through the model's own preprocessing (resize, normalise)."""
    return torch.stack([preprocess_frames(c.frames, image_size) for c in clips])


def make_batch(
    clips: list[DenseClip], image_size: int, patch: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Pixels `[B, T, 3, S, S]` (the model's own preprocessing) and labels (`[B, T*g*g]` per patch head, `[B]`)."""
    pixels = clip_pixels(clips, image_size)
    owners = [patch_owner(c.owner, image_size, patch) for c in clips]
    per_clip = [owner_labels(c.objects, who) for c, who in zip(clips, owners, strict=True)]
    owners = [who.reshape(-1) for who in owners]
    labels = {
        name: torch.from_numpy(np.stack([p[name].reshape(-1) for p in per_clip])) for name in PATCH_HEADS
    }
    labels["count"] = torch.tensor([c.count for c in clips])
    labels["owner"] = torch.from_numpy(np.stack(owners))
    k = max(1, int(labels["owner"].max()) + 1)
    for name in PATCH_HEADS:
        # UNLABELLED for objects that own no patch of the clip
        table = torch.full((len(clips), k), UNLABELLED, dtype=torch.long)
        for b, (clip, who) in enumerate(zip(clips, owners, strict=True)):
            for obj in np.unique(who[who >= 0]):
                table[b, obj] = clip.objects[obj][name]
        labels[f"object_{name}"] = table
    return pixels, labels


def dense_losses(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per head: mean CE over object patches + mean CE over background patches (objects cover ~10% of a frame,
    so a plain mean would let "background" dominate); `UNLABELLED` patches in neither; count: plain CE."""
    out = {}
    for name in PATCH_HEADS:
        flat = labels[name].flatten()
        ce = F.cross_entropy(logits[name].flatten(0, 1), flat, reduction="none", ignore_index=UNLABELLED)
        fg, bg = flat > 0, flat == 0
        fg_loss = ce[fg].mean() if fg.any() else ce.sum() * 0
        bg_loss = ce[bg].mean() if bg.any() else ce.sum() * 0
        out[name] = fg_loss + bg_loss
        key = f"object_{name}"
        if key in logits and (labels[key] >= 0).any():
            out[key] = F.cross_entropy(logits[key].flatten(0, 1), labels[key].flatten(), ignore_index=UNLABELLED)
    out["count"] = F.cross_entropy(logits["count"], labels["count"])
    return out


@torch.no_grad()
def dense_accuracy(
    logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]
) -> dict[str, tuple[int, int]]:
    """(correct, total) per head, on object patches only (background is easy and would hide failures)."""
    out = {}
    for name in PATCH_HEADS:
        fg = labels[name] > 0
        pred = logits[name].argmax(-1)
        out[name] = (int((pred[fg] == labels[name][fg]).sum()), int(fg.sum()))
        key = f"object_{name}"
        if key in logits:
            seen = labels[key] >= 0
            out[key] = (int((logits[key].argmax(-1)[seen] == labels[key][seen]).sum()), int(seen.sum()))
    out["count"] = (int((logits["count"].argmax(-1) == labels["count"]).sum()), len(labels["count"]))
    return out


class ClipStream:
    """An endless, seeded stream of dense clips, `clips_per_scene` at a time from fresh scenes. ``cfg``: any config
    with ``frame_size``, ``needle_prob`` and ``clips_per_scene`` (this module's, `connector_codes`').
    ``motion_only``: the motion warm-up's scenes instead of the pools'."""

    def __init__(self, seed: int, cfg, num_frames: int, motion_only: bool = False):
        self.rng = np.random.default_rng(seed)
        self.cfg = cfg
        self.num_frames = num_frames
        self.motion_only = motion_only
        self.buffer: list[DenseClip] = []

    def take(self, n: int) -> list[DenseClip]:
        while len(self.buffer) < n:
            self.buffer += sample_dense_clips(
                self.rng,
                self.cfg.frame_size,
                self.num_frames,
                self.cfg.needle_prob,
                self.cfg.clips_per_scene,
                motion_only=self.motion_only,
            )
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


class _Towers:
    """One tower, a position table per input size (the tables are buffers, swapped before each forward)."""

    def __init__(self, encoder: UMTEncoder, sizes: tuple[int, ...]):
        self.encoder = encoder
        self.tables = {s: video_position_table(replace(encoder.cfg, image_size=s)) for s in sizes}

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        self.encoder.pos_embed = self.tables[pixels.shape[-1]]
        return self.encoder(pixels)


def evaluate_tower(
    encoder: UMTEncoder, heads: DenseHeads, cfg: VisionPretrainConfig, image_size: int, seed: int
) -> dict[str, float]:
    """Held-out accuracy per head (object patches; count per clip) on ``cfg.eval_clips`` fresh clips."""
    towers = _Towers(encoder, (image_size,))
    stream = ClipStream(seed, cfg, encoder.cfg.num_frames)
    totals: dict[str, list[int]] = {}
    was_training = encoder.training
    encoder.eval()
    heads.eval()
    for start in range(0, cfg.eval_clips, cfg.batch_size):
        pixels, labels = make_batch(
            stream.take(min(cfg.batch_size, cfg.eval_clips - start)), image_size, encoder.cfg.patch_size
        )
        with torch.no_grad():
            acc = dense_accuracy(heads(towers(pixels), labels["owner"]), labels)
        for name, (c, n) in acc.items():
            totals.setdefault(name, [0, 0])
            totals[name][0] += c
            totals[name][1] += n
    encoder.train(was_training)
    heads.train(was_training)
    encoder.reset_position_tables()
    return {name: round(c / max(1, n), 4) for name, (c, n) in totals.items()}


@torch.no_grad()
def whiten_patch_embedding_(encoder: UMTEncoder, pixels: torch.Tensor, gain: float = 2.0) -> None:
    """Data-dependent init of the patch embedding: the leading principal components of ``pixels``' patches,
    whitened (unit variance per channel) and scaled by ``gain``.

    Why: shape is a property of edges at any offset inside a patch, and a random N(0, 0.02) projection leaves
    those patterns buried under the position table (norm ~7 against ~3 for content). Measured on one-big-shape
    clips (200 steps, per-object shape loss; chance = 1.61): random init 1.63, whitened PCA x2 1.50, plus
    fan-in MLP init (`fan_in_mlp_`) 1.43; a per-patch MLP without attention: 1.65 -> 1.24 with this init.
    """
    proj = encoder.patch_embed.proj
    p = encoder.cfg.patch_size
    c = pixels.shape[2]
    patches = pixels.flatten(0, 1).unfold(2, p, p).unfold(3, p, p)  # [N, C, gh, gw, p, p]
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * p * p)
    weight, bias = pca_whitening(patches, proj.out_channels, gain)
    proj.weight.copy_(weight.reshape(proj.out_channels, c, 1, p, p).to(proj.weight.dtype))
    proj.bias.copy_(bias.to(proj.bias.dtype))


def pca_whitening(x: torch.Tensor, rows: int, gain: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear map ``y = W x + b`` (``W [rows, D]``, float64) whose outputs are the leading principal components
    of the samples ``x [N, D]``, centred and scaled to standard deviation ``gain``; rows past the rank are 0."""
    x = x.double()
    mean = x.mean(dim=0)
    _, sv, vh = torch.linalg.svd(x - mean, full_matrices=False)
    k = min(rows, vh.shape[0])
    std = (sv[:k] / x.shape[0] ** 0.5).clamp(min=1e-3)
    weight = torch.zeros(rows, x.shape[1], dtype=torch.float64)
    weight[:k] = vh[:k] / std[:, None] * gain
    return weight, -(weight @ mean)


@torch.no_grad()
def fan_in_mlp_(encoder: UMTEncoder, seed: int) -> None:
    """MLP input layers at std 1/sqrt(width): the GPT-2 std of 0.02 assumes widths near 1,000; at the demo's 96 it
    feeds GELU pre-activations of std ~0.2, where GELU is almost linear and the blocks add no new features."""
    generator = torch.Generator().manual_seed(seed)
    for block in encoder.blocks:
        w = block.mlp.fc1.weight
        w.copy_(torch.randn(w.shape, generator=generator) * w.shape[1] ** -0.5)


def umt_state_dict(encoder: UMTEncoder) -> dict[str, torch.Tensor]:
    """The tower's weights under the released UMT ``.pt`` names (``encoder.*``, final norm ``encoder.norm``)."""
    out = {}
    for name, tensor in encoder.state_dict().items():
        if name.startswith("vision_layernorm."):
            name = "norm." + name[len("vision_layernorm.") :]
        out["encoder." + name] = tensor.detach().clone()
    return out


def pretrain_vision(
    umt_cfg: UMTConfig, out_path: str | Path, cfg: VisionPretrainConfig, progress: bool = True
) -> dict:
    """Train a fresh tower with dense heads, write ``out_path`` (UMT ``.pt``) and ``<out_path>.json`` (metrics)."""
    out_path = Path(out_path)
    torch.manual_seed(cfg.seed)
    encoder = UMTEncoder(umt_cfg)
    init_weights_(encoder, seed=cfg.seed)
    fan_in_mlp_(encoder, seed=cfg.seed)
    stream = ClipStream(cfg.seed, cfg, umt_cfg.num_frames)
    motion_stream = ClipStream(cfg.seed + 2, cfg, umt_cfg.num_frames, motion_only=True)
    if cfg.patch_init == "pca":
        sample = clip_pixels(stream.take(cfg.init_clips), umt_cfg.image_size)  # pixels only: no labels needed
        whiten_patch_embedding_(encoder, sample, gain=cfg.patch_init_gain)
    heads = DenseHeads(umt_cfg.hidden_size)
    init_weights_(heads, seed=cfg.seed + 1)
    params = list(encoder.parameters()) + list(heads.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupSchedule(cfg.steps, cfg.warmup_steps))
    towers = _Towers(encoder, cfg.image_sizes)
    bar = _progress(progress, cfg.steps, desc="vision")
    history = []
    running: dict[str, tuple[float, int]] = {}  # loss -> (sum, steps) since the last log row
    started = time.time()
    for step in range(1, cfg.steps + 1):
        size = cfg.image_sizes[(step - 1) % len(cfg.image_sizes)]
        warmup = step <= cfg.motion_warmup_steps
        if warmup:
            clips = motion_stream.take(cfg.batch_size)
        else:
            mixed = round(cfg.motion_mix * cfg.batch_size)
            clips = stream.take(cfg.batch_size - mixed) + motion_stream.take(mixed)
        pixels, labels = make_batch(clips, size, umt_cfg.patch_size)
        losses = dense_losses(heads(towers(pixels), labels["owner"]), labels)
        if warmup:
            losses = {k: v for k, v in losses.items() if k in MOTION_HEADS}
        loss = sum(cfg.loss_weights.get(k, 1.0) * v for k, v in losses.items())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"vision pre-training: non-finite loss at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        for k, v in losses.items():
            total, n = running.get(k, (0.0, 0))
            running[k] = (total + float(v.detach()), n + 1)
        if bar is not None:
            bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            row = {
                "step": step,
                **{k: round(total / n, 4) for k, (total, n) in running.items()},
                "seconds": round(time.time() - started, 1),
            }
            history.append(row)
            running = {}
            msg = " ".join(f"{k} {v}" for k, v in row.items())
            (bar.write if bar is not None else print)(f"[vision] {msg}")
    if bar is not None:
        bar.close()
    encoder.reset_position_tables()
    metrics = {
        "config": asdict(cfg),
        "tower": asdict(umt_cfg),
        "style": asdict(STYLE),  # the scenes' look (`data.shapes.SceneStyle`): a cached tower must match it
        "seconds": round(time.time() - started, 1),
        "history": history,
        "heldout": {
            str(s): evaluate_tower(encoder, heads, cfg, s, seed=cfg.seed + 10_000) for s in cfg.image_sizes
        },
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".part")
    torch.save({"model": umt_state_dict(encoder)}, tmp)
    tmp.replace(out_path)
    out_path.with_suffix(".json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


__all__ = [
    "ClipStream",
    "DenseHeads",
    "VisionPretrainConfig",
    "dense_accuracy",
    "dense_losses",
    "evaluate_tower",
    "fan_in_mlp_",
    "make_batch",
    "pretrain_vision",
    "umt_state_dict",
    "pca_whitening",
    "whiten_patch_embedding_",
]
