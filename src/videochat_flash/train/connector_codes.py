"""Connector distillation onto attribute codes: the demo model's ``stage0_codes``, between the tower's dense
pre-training (`vision_pretrain`) and stage 0.

The released models' connector learns to feed the LLM from a tower distilled from CLIP, whose features already
name what a region shows. The demo's from-scratch LLM, fed the demo tower's merged tokens through a trained or a
freshly initialised connector, learned "what colour is the triangle" among several objects only to 50-70% (it
names some object in view), while on idealised tokens (one fixed random vector per colour, shape, ... summed per
object) it learned the same lookup to 100% in a few hundred steps (`benchmarks/probe_routing.py`). So here the
connector MLP learns to map each merged token to such a code: the sum of one fixed random vector per attribute
(colour, shape, motion, onset) of the object that owns most of the token's patches; background and mixed tokens
map to zero. The clips, labels and ToMe merge are the tower pre-training's and the model's own; a merged token's
owner comes from replaying the merge on one-hot patch owners (`model.tome.replay_merges`). The stage changes no
architecture or checkpoint key: it only initialises ``mm_projector``, which stage 0 then keeps frozen.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..data.dense import PATCH_HEADS, DenseClip
from ..model.init import init_weights_
from ..model.tome import replay_merges, tome_merge
from .trainer import _progress
from .vision_pretrain import ClipStream, make_batch


@dataclass
class ConnectorCodesConfig:
    steps: int = 600
    clips: int = 1536  # dense clips whose merged tokens are the training set (encoded once)
    heldout_clips: int = 64  # more clips, for the metrics only
    batch_tokens: int = 1024
    lr: float = 3e-3
    # the attributes coded (`data.dense.PATCH_HEADS`)
    heads: tuple[str, ...] = ("color", "shape", "motion", "onset")
    # a merged token is an object's if that object owns at least this share of its patches
    min_share: float = 0.5
    frame_size: int = 64
    needle_prob: float = 0.1
    clips_per_scene: int = 4
    seed: int = 0

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> ConnectorCodesConfig:
        """The ``connector_codes:`` section of a recipe YAML (unknown fields are an error), then ``overrides``."""
        from .recipes import dataclass_from_section

        return dataclass_from_section(cls, path, "connector_codes", overrides)

    def __post_init__(self) -> None:
        self.heads = tuple(self.heads)
        unknown = [h for h in self.heads if h not in PATCH_HEADS]
        if unknown:
            raise ValueError(
                f"connector_codes.heads: unknown attribute(s) {unknown}; known: {list(PATCH_HEADS)}"
            )


def attribute_tables(heads: tuple[str, ...], dim: int, seed: int) -> dict[str, torch.Tensor]:
    """One fixed N(0, 1) vector per class of each attribute; class 0 ("background") is the zero vector."""
    g = torch.Generator().manual_seed(seed)
    tables = {}
    for name in heads:
        table = torch.randn(len(PATCH_HEADS[name]), dim, generator=g)
        table[0] = 0
        tables[name] = table
    return tables


def token_owners(owner: torch.Tensor, trace: list, target: int, min_share: float) -> torch.Tensor:
    """`[B, target]`: per merged token, 1 + the index of the object owning >= ``min_share`` of its patches, else 0.

    ``owner [B, N]``: object index per patch (-1 = background), as `vision_pretrain.make_batch` labels it."""
    k = int(owner.max()) + 2
    counts = replay_merges(F.one_hot(owner + 1, k).float(), trace, owner.shape[1], target)
    share, who = (counts / counts.sum(-1, keepdim=True)).max(-1)
    return torch.where(share >= min_share, who, torch.zeros_like(who))


def token_classes(who: torch.Tensor, labels: dict[str, torch.Tensor], heads: tuple[str, ...]) -> dict:
    """Per attribute, `[B, T]`: the owning object's class per merged token (0: background, or the object has no
    label for it, e.g. no direction where the clip shows it standing still)."""
    classes = {}
    for name in heads:
        per_object = labels[f"object_{name}"].clamp(min=0)  # unlabelled (-100) -> background: no code
        classes[name] = torch.cat([torch.zeros_like(per_object[:, :1]), per_object], dim=1).gather(1, who)
    return classes


def token_codes(classes: dict[str, torch.Tensor], tables: dict[str, torch.Tensor]) -> torch.Tensor:
    """`[..., D]`: the sum over attributes of each token's class vector (`token_classes`; zero for class 0)."""
    return sum(tables[name][classes[name]] for name in tables)


class EncodedClips(NamedTuple):
    tokens: torch.Tensor  # [n, C] merged tower tokens (the connector's inputs)
    codes: torch.Tensor  # [n, D] their targets
    owners: torch.Tensor  # [n] 1 + owning object, 0: none
    classes: dict[str, torch.Tensor]  # per attribute, [n] (`token_classes`)


@torch.no_grad()
def encode_clips(model, clips: list[DenseClip], tables: dict, min_share: float, batch: int = 64) -> EncodedClips:
    """The clips' merged tower tokens with their codes, owners and classes."""
    tokens, codes, owners, classes = [], [], [], []
    size, patch = model.config.vision.image_size, model.config.vision.patch_size
    for start in range(0, len(clips), batch):
        pixels, labels = make_batch(clips[start : start + batch], size, patch)
        features = model.vision(pixels.to(model.device, model.dtype)).float().cpu()
        target = model.projector.clip_tokens(pixels.shape[1])
        merged, trace = tome_merge(features, target, model.projector.cfg.merge_heads, return_trace=True)
        who = token_owners(labels["owner"], trace, target, min_share)
        per_token = token_classes(who, labels, tuple(tables))
        tokens.append(merged.flatten(0, 1))
        codes.append(token_codes(per_token, tables).flatten(0, 1))
        owners.append(who.flatten())
        classes.append({k: v.flatten() for k, v in per_token.items()})
    joined = {k: torch.cat([c[k] for c in classes]) for k in tables}
    return EncodedClips(torch.cat(tokens), torch.cat(codes), torch.cat(owners), joined)


@torch.no_grad()
def code_metrics(mlp, held: EncodedClips, tables: dict) -> dict[str, float]:
    """Held-out relative MSE, and per attribute how often a token's output is nearest (dot product) to its own
    class vector among that attribute's classes, over the tokens whose code holds that attribute."""
    out = mlp(held.tokens)
    codes, classes = held.codes, held.classes
    relative_mse = ((out - codes) ** 2).mean() / (codes**2).mean().clamp(min=1e-12)
    metrics = {"relative_mse": round(float(relative_mse), 4)}
    for name, table in tables.items():
        coded = classes[name] > 0
        guess = (out[coded] @ table[1:].T).argmax(-1) + 1
        hits = (guess == classes[name][coded]).float().mean() if coded.any() else torch.tensor(0.0)
        metrics[f"{name}_accuracy"] = round(float(hits), 4)
    return metrics


def distil_connector_(model, cfg: ConnectorCodesConfig, progress: bool = True) -> dict:
    """Re-initialise ``model.projector`` from ``cfg.seed`` and train it in place (the tower is only read); return
    the metrics. The result depends on the tower and ``cfg`` only, not on the connector's earlier weights."""
    started = time.time()
    init_weights_(model.projector, seed=cfg.seed)
    frames = model.config.vision.num_frames
    tables = attribute_tables(cfg.heads, model.projector.cfg.out_dim, cfg.seed)
    train_clips = ClipStream(cfg.seed, cfg, frames).take(cfg.clips)
    held_clips = ClipStream(cfg.seed + 10_000, cfg, frames).take(cfg.heldout_clips)
    train = encode_clips(model, train_clips, tables, cfg.min_share)
    held = encode_clips(model, held_clips, tables, cfg.min_share)
    mlp = model.projector.mlp.float()
    optimizer = torch.optim.AdamW(mlp.parameters(), lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = _progress(progress, cfg.steps, desc="connector codes")
    tail: list[float] = []  # the last steps' losses (the report's final loss)
    for _ in range(cfg.steps):
        idx = torch.randint(len(train.tokens), (cfg.batch_tokens,), generator=gen)
        loss = F.mse_loss(mlp(train.tokens[idx]), train.codes[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tail = (tail + [loss.item()])[-25:]
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {
        "config": asdict(cfg),
        "final_loss": round(sum(tail) / max(1, len(tail)), 4),
        "train_tokens": len(train.tokens),
        "object_token_share": round(float((train.owners > 0).float().mean()), 4),
        "heldout": code_metrics(mlp, held, tables),
        "seconds": round(time.time() - started, 1),
    }


def save_connector(model, out_path: str | Path, metrics: dict) -> None:
    """``mm_projector`` tensors under their checkpoint names (what ``model.projector_weights`` loads), and
    ``<out_path>.json`` with the metrics."""
    from safetensors.torch import save_file

    from ..model.loading import hf_key

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        hf_key(f"projector.{n}"): p.detach().contiguous().cpu() for n, p in model.projector.named_parameters()
    }
    tmp = out_path.with_name(out_path.name + ".part")
    save_file(tensors, str(tmp))
    tmp.replace(out_path)
    out_path.with_suffix(".json").write_text(json.dumps(metrics, indent=2) + "\n")


__all__ = [
    "ConnectorCodesConfig",
    "EncodedClips",
    "attribute_tables",
    "code_metrics",
    "distil_connector_",
    "encode_clips",
    "save_connector",
    "token_classes",
    "token_codes",
    "token_owners",
]
