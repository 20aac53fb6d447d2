"""Process groups, model wrapping (FSDP2 / DDP) and small collectives.

The same code runs as one plain process (no process group), or under ``torchrun`` on one or many nodes:
``torchrun --nnodes N --nproc_per_node G -m videochat_flash.train RECIPE.yaml``. NCCL is used on GPUs, gloo
on CPU. FSDP2 (`torch.distributed.fsdp.fully_shard`) shards every LLM decoder layer, then the root (which
holds the vision tower unless `shard_vision_blocks`, see `wrap_model`); DDP is the simple alternative.
Checkpoints of a multi-node run are written by every rank into one directory: use a shared filesystem.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(backend: str | None = None, device: str | None = None) -> DistEnv:
    """Join the torchrun process group when launched by it; otherwise a single-process environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda:
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world <= 1:
        return DistEnv(device=dev)
    backend = backend or ("nccl" if use_cuda else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce(values: list[float], env: DistEnv, op: str = "sum") -> list[float]:
    """Sum (or mean) a few floats over ranks (float64 on the collective's device)."""
    if not env.distributed:
        return list(values)
    device = env.device if env.backend == "nccl" else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    if op == "mean":
        t /= env.world_size
    return t.tolist()


# ------------------------------------------------------------------------------------------ wrapping
def block_lists(model: nn.Module, prefix: str = "") -> list[nn.ModuleList]:
    """The repeated-block lists (LLM ``layers``, vision ``blocks``) under ``prefix``."""
    found = []
    for name, module in model.named_modules():
        if not name.startswith(prefix):
            continue
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "blocks"):
            found.append(module)
    return found


def wrap_model(
    model: nn.Module,
    strategy: str,
    env: DistEnv,
    shard_vision_blocks: bool = False,
    find_unused_parameters: bool = False,
) -> nn.Module:
    """Shard / replicate ``model`` for data-parallel training. Returns the module to call in the loop.

    FSDP2 shards every LLM decoder layer on its own (each runs exactly once per forward on every rank), then
    the root, which holds the embeddings, lm_head, projector and — by default — the vision tower: the root's
    parameters are gathered once per forward, so ranks may encode different numbers of clips (or none, for
    text) in any order. ``shard_vision_blocks`` also shards each vision block; that issues one collective per
    block *call*, so it is only safe when every rank encodes the same number of clip batches in the same order
    (e.g. fixed frame counts, one video per sample, no text-only or image samples).
    """
    if not env.distributed or strategy == "none":
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        lists = block_lists(model, "llm.") + (block_lists(model, "vision.") if shard_vision_blocks else [])
        for blocks in lists:
            for block in blocks:
                fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"unknown parallel strategy {strategy!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The user module behind a DDP wrapper (FSDP2 shards in place, so it is the module itself)."""
    return model.module if hasattr(model, "no_sync") and hasattr(model, "module") else model


def is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - old torch
        return False
    return isinstance(model, FSDPModule)


@contextmanager
def accumulation_context(model: nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on micro-batches that are not the last of an optimizer step."""
    if sync:
        yield
        return
    if hasattr(model, "no_sync"):  # DDP
        with model.no_sync():
            yield
        return
    if is_fsdp(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    with nullcontext():
        yield


def clip_grad_norm(model: nn.Module, max_norm: float | None) -> float:
    """Clip the global gradient norm (DTensor-aware under FSDP2); returns the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


# --------------------------------------------------------------------------------- memory estimate
@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device for one training configuration (rough; see `estimate_memory`)."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits


def estimate_memory(
    total_params: int,
    trainable_params: int,
    largest_block_params: int,
    strategy: str,
    world_size: int,
    seq_len: int,
    llm_hidden: int,
    llm_layers: int,
    llm_ffn: int,
    vocab: int,
    vision_tokens: int,
    vision_hidden: int,
    vision_blocks: int,
    micro_batch: int,
    checkpointing: bool,
    vision_trainable: bool = True,
    act_bytes: int = 2,
) -> MemoryEstimate:
    """A back-of-the-envelope memory budget per device.

    Parameters and gradients are float32 (autocast computes in bf16), AdamW keeps two float32 moments.
    FSDP divides those by the world size and adds one gathered block; DDP/none keep full copies.
    Activations (bf16) with gradient checkpointing: every layer's input plus one layer being recomputed;
    without it roughly 34·D + 5·FFN bytes-per-element per token per layer (fused attention, no S² term).
    A frozen vision tower stores no activations (nothing upstream needs gradients). The LLM logits are float32
    ``[tokens, vocab]`` plus their gradient.
    """
    shard = world_size if strategy == "fsdp" else 1
    weights = 4 * total_params / shard + (4 * largest_block_params if strategy == "fsdp" else 0)
    grads = 4 * trainable_params / shard
    optim = 8 * trainable_params / shard
    per_layer_full = seq_len * (34 * llm_hidden + 5 * llm_ffn) * act_bytes / 2
    vis_full = vision_tokens * (34 * vision_hidden + 5 * 4 * vision_hidden) * act_bytes / 2
    if checkpointing:
        llm_act = llm_layers * seq_len * llm_hidden * act_bytes + per_layer_full
        vis_act = vision_blocks * vision_tokens * vision_hidden * act_bytes + vis_full
    else:
        llm_act = llm_layers * per_layer_full
        vis_act = vision_blocks * vis_full
    if not vision_trainable:
        vis_act = vis_full / vision_blocks if vision_blocks else 0.0  # one block's transient working set
    logits = 2 * 4 * seq_len * vocab
    return MemoryEstimate(weights, grads, optim, micro_batch * (llm_act + vis_act), micro_batch * logits)
