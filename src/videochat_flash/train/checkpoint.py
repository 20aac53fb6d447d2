"""Training checkpoints and initial weights.

A checkpoint is a directory ``checkpoint-{step:08d}`` holding

* the model in the Hugging Face layout (``model.save_pretrained``: config.json, model.safetensors with the
  original key names, tokenizer and generation config) — loadable by ``VideoChatFlash.from_pretrained``;
* with LoRA: ``adapter/`` (adapter_model.safetensors + adapter_config.json); model.safetensors then holds the
  base weights (and any fully trained part);
* the training state: ``trainer_state.json`` (step, data position, counters), ``optimizer.pt`` (or a
  ``optimizer/`` distributed checkpoint under FSDP), ``scheduler.pt`` and ``rng_state_rank{r}.pt``.

It is written into a temporary directory and renamed when complete, so a run killed at any moment leaves
either the previous checkpoint or the new one, never half of one. Only the last ``keep_last`` are kept.

The second half loads initial weights: a previous stage's checkpoint, a base Qwen2 folder, the raw UMT-L
``.pt`` (REFERENCE §1.2: keep ``encoder.*``, rename ``encoder.norm.*`` → ``encoder.vision_layernorm.*``,
non-strict) and a stage-1 projector.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from . import lora as lora_mod
from .distributed import DistEnv, barrier, is_fsdp, unwrap

PREFIX = "checkpoint-"
FINAL = "final"
TRAINER_STATE = "trainer_state.json"
OPTIMIZER = "optimizer.pt"
OPTIMIZER_DCP = "optimizer"
SCHEDULER = "scheduler.pt"
ADAPTER_DIR = "adapter"
HF_PREFIX_VISION = "model.vision_tower.vision_tower."
HF_PREFIX_PROJECTOR = "model.mm_projector."


@dataclass
class TrainState:
    """Where training stands after ``step`` optimizer steps."""

    step: int = 0
    total_steps: int = 0
    micro_batches: int = 0  # micro-batches consumed by each rank (the data position)
    samples_skipped: int = 0
    tokens_seen: int = 0
    world_size: int = 1
    strategy: str = "none"
    accumulation: int = 1
    seed: int = 0
    losses: list[float] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # distinct skipped records: where, path, reason

    @classmethod
    def from_dict(cls, data: dict) -> TrainState:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"{PREFIX}{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [
        p for p in out.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / TRAINER_STATE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def find_resume_dir(path: str | Path) -> Path:
    """A checkpoint directory, or the latest complete checkpoint inside an output directory."""
    path = Path(path)
    if (path / TRAINER_STATE).is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(f"no complete checkpoint to resume from in {path}")
    return found[-1]


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory (has config.json), or the final / latest model inside a training output directory."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if (path / FINAL / "config.json").is_file():
        return path / FINAL
    found = list_checkpoints(path)
    if found:
        return found[-1]
    raise CheckpointError(f"no model found in {path} (expected config.json, {FINAL}/ or {PREFIX}*/)")


# ------------------------------------------------------------------------------------- rng states
def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------ model writing
def key_mapper() -> Callable[[str], str]:
    """Our parameter name -> checkpoint name."""
    from ..model.loading import hf_key

    return hf_key


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU (a collective under FSDP: call it on every rank)."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def save_model(model: nn.Module, directory: Path, env: DistEnv, lora_config=None) -> None:
    """Write the HF layout into ``directory`` (rank 0), LoRA adapters separately under ``adapter/``.

    The plain case is ``model.save_pretrained``. Under FSDP the parameters are shards, and with LoRA the adapter
    tensors must stay out of model.safetensors; both then write the gathered, filtered state dict in the same
    layout (config, safetensors with checkpoint names, tokenizer, generation config).
    """
    fsdp = is_fsdp(model)
    state = full_state_dict(model) if fsdp or lora_config is not None else None
    if not env.is_main:
        return
    raw = unwrap(model)
    if state is None:
        raw.save_pretrained(directory)
        return
    base = {k: v for k, v in state.items() if not lora_mod.is_lora_parameter(k)}
    raw.save_pretrained(directory, state_dict=base)
    if lora_config is not None:
        adapter = {k: v for k, v in state.items() if lora_mod.is_lora_parameter(k)}
        lora_mod.write_adapter(
            lora_mod.rename_adapter_keys(adapter, key_mapper()), directory / ADAPTER_DIR, lora_config
        )


# ------------------------------------------------------------------------------- checkpoint writing
def save_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    state: TrainState,
    output_dir: str | Path,
    env: DistEnv,
    keep_last: int,
    lora_config=None,
) -> Path:
    """Write checkpoint ``state.step`` atomically and prune old ones. Every rank must call this."""
    output_dir = Path(output_dir)
    final = checkpoint_dir(output_dir, state.step)
    tmp = output_dir / f".tmp-{final.name}"
    if env.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(output_dir)
    barrier(env)
    save_model(model, tmp, env, lora_config)  # creates tmp (the model writer replaces its target directory)
    barrier(env)
    _save_optimizer(model, optimizer, tmp, env)
    torch.save(rng_state(), tmp / f"rng_state_rank{env.rank}.pt")
    if env.is_main:
        torch.save(scheduler.state_dict(), tmp / SCHEDULER)
        (tmp / TRAINER_STATE).write_text(json.dumps(asdict(state), indent=1) + "\n")
    barrier(env)
    if env.is_main:
        _atomic_replace_dir(tmp, final)
        prune_checkpoints(output_dir, keep_last)
    barrier(env)
    return final


def save_final_model(model: nn.Module, output_dir: str | Path, env: DistEnv, lora_config=None) -> Path:
    """The final model (no training state) as ``output_dir/final``, written atomically."""
    output_dir = Path(output_dir)
    final = output_dir / FINAL
    tmp = output_dir / f".tmp-{FINAL}"
    if env.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    barrier(env)
    save_model(model, tmp, env, lora_config)
    barrier(env)
    if env.is_main:
        _atomic_replace_dir(tmp, final)
    barrier(env)
    return final


def _save_optimizer(
    model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path, env: DistEnv
) -> None:
    if is_fsdp(model):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        dcp.save(
            {"optimizer": get_optimizer_state_dict(model, optimizer)},
            checkpoint_id=str(directory / OPTIMIZER_DCP),
        )
    elif env.is_main:  # replicated (DDP / single process): one copy
        torch.save(optimizer.state_dict(), directory / OPTIMIZER)


def _remove_stale_temps(output_dir: Path) -> None:
    for pattern in (f".tmp-{PREFIX}*", f"..tmp-{PREFIX}*", f".old-{PREFIX}*"):
        for p in output_dir.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


def _atomic_replace_dir(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` is moved aside first and removed afterwards."""
    old = None
    if dst.exists():
        old = dst.with_name(f".old-{dst.name}")
        if old.exists():
            shutil.rmtree(old)
        os.replace(dst, old)
    os.replace(src, dst)
    _fsync_dir(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def prune_checkpoints(output_dir: Path, keep_last: int) -> None:
    found = list_checkpoints(output_dir)
    for old in found[: max(0, len(found) - keep_last)]:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------ resuming
def read_train_state(directory: Path) -> TrainState:
    return TrainState.from_dict(json.loads((directory / TRAINER_STATE).read_text()))


def load_training_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, directory: Path, env: DistEnv
) -> TrainState:
    """Restore optimizer, scheduler and RNG states from a checkpoint (model weights are loaded before wrapping)."""
    state = read_train_state(directory)
    if is_fsdp(model):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        holder = {"optimizer": get_optimizer_state_dict(model, optimizer)}
        dcp.load(holder, checkpoint_id=str(directory / OPTIMIZER_DCP))
        set_optimizer_state_dict(model, optimizer, holder["optimizer"])
    else:
        optimizer.load_state_dict(torch.load(directory / OPTIMIZER, map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(directory / SCHEDULER, weights_only=True))
    rng_file = directory / f"rng_state_rank{env.rank}.pt"
    if not rng_file.is_file():
        raise CheckpointError(f"{rng_file} is missing (was the checkpoint written with another world size?)")
    set_rng_state(torch.load(rng_file, weights_only=True))
    return state


# --------------------------------------------------------------------------------- weight loading
def read_safetensors_dir(directory: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a model folder (single or sharded safetensors), checkpoint names."""
    from ..model.loading import read_safetensors

    return read_safetensors(Path(directory))


def load_hf_tensors(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    what: str,
    required: Callable[[str], bool] = lambda name: True,
) -> list[str]:
    """Copy checkpoint-named tensors into ``model``; returns our names that were loaded.

    Names the model does not know are ignored; parameters selected by ``required`` that stay missing, and
    shape mismatches, raise CheckpointError.
    """
    from ..model.loading import our_key

    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    loaded, mismatched = [], []
    with torch.no_grad():
        for hf_name, tensor in tensors.items():
            try:
                name = our_key(hf_name)
            except (KeyError, ValueError):
                continue
            target = params.get(name)
            if target is None:
                continue
            if tuple(target.shape) != tuple(tensor.shape):
                mismatched.append(f"{hf_name} {tuple(tensor.shape)} vs {tuple(target.shape)}")
                continue
            target.copy_(tensor.to(target.dtype))
            loaded.append(name)
    if mismatched:
        raise CheckpointError(f"{what}: tensor shapes differ from the model: {mismatched[0]}")
    missing = [
        n
        for n, _ in model.named_parameters()
        if required(n) and n not in set(loaded) and not lora_mod.is_lora_parameter(n)
    ]
    if missing:
        raise CheckpointError(f"{what}: {len(missing)} parameters missing, e.g. {missing[0]}")
    return loaded


def load_base_llm(model: nn.Module, llm_dir: str | Path) -> None:
    """Qwen2 weights from an HF folder; an absent ``lm_head`` (tied base) is copied from the embedding."""
    tensors = dict(read_safetensors_dir(llm_dir))
    if "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors:
        tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    llm_names = {n for n, _ in model.named_parameters() if _is_llm(n)}
    load_hf_tensors(model, tensors, f"base LLM {llm_dir}", required=lambda n: n in llm_names)


def _is_llm(name: str) -> bool:
    from ..model.loading import hf_key

    try:
        hf = hf_key(name)
    except (KeyError, ValueError):
        return False
    return "vision_tower" not in hf and "mm_projector" not in hf


def umt_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The raw UMT-L ``.pt`` under checkpoint names: ``encoder.*`` kept, ``encoder.norm`` renamed."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"UMT weights not found: {path}") from None
    for key in ("model", "module", "state_dict"):
        if isinstance(raw, dict) and key in raw and isinstance(raw[key], dict):
            raw = raw[key]
    out = {}
    for name, tensor in raw.items():
        if not name.startswith("encoder."):
            continue
        if name.startswith("encoder.norm."):
            name = "encoder.vision_layernorm." + name[len("encoder.norm.") :]
        out[HF_PREFIX_VISION + name] = tensor
    if not out:
        raise CheckpointError(f"{path} holds no 'encoder.*' tensors (is it a UMT checkpoint?)")
    return out


def load_umt(model: nn.Module, path: str | Path) -> None:
    """Non-strict: extra pretrained blocks (block 23 of UMT-L) are dropped; every tower parameter must load."""
    tensors = umt_tensors(path)
    vision_names = {n for n, _ in model.named_parameters() if _is_part(n, "vision_tower")}
    load_hf_tensors(model, tensors, f"UMT weights {path}", required=lambda n: n in vision_names)


def load_projector(model: nn.Module, path: str | Path) -> None:
    """Projector weights from a stage-1 output (model dir / output dir), a ``.safetensors`` or ``mm_projector.bin``."""
    path = Path(path)
    if path.is_dir():
        tensors = read_safetensors_dir(resolve_model_dir(path))
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors = load_file(str(path))
    elif path.is_file():
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise CheckpointError(f"projector weights not found: {path}")
    tensors = {k: v for k, v in tensors.items() if "mm_projector" in k}
    names = {n for n, _ in model.named_parameters() if _is_part(n, "mm_projector")}
    load_hf_tensors(model, tensors, f"projector weights {path}", required=lambda n: n in names)


def _is_part(name: str, marker: str) -> bool:
    from ..model.loading import hf_key

    try:
        return marker in hf_key(name)
    except (KeyError, ValueError):
        return False


def merge_lora_checkpoint(source: str | Path, output: str | Path) -> Path:
    """A full HF checkpoint with the LoRA adapter of ``source`` (a checkpoint or final dir) folded into its weights."""
    from ..model import loading

    source = resolve_model_dir(source)
    adapter_dir = source / ADAPTER_DIR
    if not adapter_dir.is_dir():
        raise CheckpointError(f"{source} has no {ADAPTER_DIR}/ to merge")
    adapter, config = lora_mod.read_adapter(adapter_dir)
    merged = lora_mod.merge_adapter_into_state_dict(loading.read_safetensors(source), adapter, config.scaling)
    extra = {
        p.name: p
        for p in source.iterdir()
        if p.is_file()
        and p.name not in (loading.CONFIG_FILE, loading.WEIGHTS_FILE, TRAINER_STATE)
        and p.suffix in (".json", ".txt")
    }
    config_json = json.loads((source / loading.CONFIG_FILE).read_text())
    return loading.write_checkpoint(output, config_json, merged, extra)
