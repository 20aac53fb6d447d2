"""Checkpoint I/O: HF directory layout, original key names, strict key checks, hub download.

Our module tree is ``vision`` (UMT encoder), ``projector`` (ToMe + MLP) and ``llm`` (Qwen2). Released
checkpoints name the same tensors ``model.vision_tower.vision_tower.encoder.*``, ``model.mm_projector.*`` and
the plain Qwen2 names. `hf_key` / `our_key` are the only place that knows this mapping; loading and saving
both go through them, so a checkpoint we write loads in the original code and vice versa.

Only safetensors are read here: pickled ``.bin``/``.pt`` weights can run code when unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError

# (our prefix, checkpoint prefix), most specific first.
_PREFIXES = (
    ("vision.", "model.vision_tower.vision_tower.encoder."),
    ("projector.", "model.mm_projector."),
    ("llm.", ""),
)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)
_HUB_PATTERNS = ["*.json", "*.safetensors", "merges.txt", "*.txt", "*.md"]


def hf_key(name: str) -> str:
    """Checkpoint (original) name of one of our parameter names."""
    for ours, theirs in _PREFIXES:
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    raise KeyError(f"parameter {name!r} belongs to no model part")


def our_key(name: str) -> str:
    """Our parameter name for a checkpoint name."""
    for ours, theirs in _PREFIXES:
        if name.startswith(theirs):
            return ours + name[len(theirs) :]
    raise KeyError(name)  # unreachable: the LLM prefix is empty


def model_part(hf_name: str) -> str:
    """The training part a checkpoint tensor belongs to (`mm_tunable_parts` vocabulary, REFERENCE §9)."""
    if "vision_tower" in hf_name:
        return "mm_vision_tower"
    if "mm_projector" in hf_name:
        return "mm_mlp_adapter"
    return "mm_language_model"


# ---------------------------------------------------------------------- locating a checkpoint
def resolve_checkpoint(path_or_id: str | os.PathLike) -> Path:
    """A local checkpoint directory, downloading a hub id (``org/name``) through huggingface_hub if needed."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise CheckpointError(f"{path} is not a checkpoint directory: {CONFIG_FILE} is missing")
        return path
    text = str(path_or_id)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(
            f"checkpoint not found: {text} (expected a directory with {CONFIG_FILE} or a hub id)"
        )
    return _download(text)


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # offline, unknown repo, auth: all end the same way for the user
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"could not get {repo_id!r} from the Hugging Face hub ({reason}); on a machine with access run "
            f"`huggingface-cli download {repo_id} --local-dir DIR` and pass DIR instead"
        ) from None


# ---------------------------------------------------------------------- reading weights
def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (single file or sharded with an index), checkpoint names."""
    from safetensors.torch import load_file

    index = directory / WEIGHTS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index: {exc}") from None
        files = sorted(set(weight_map.values()))
    elif (directory / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    else:
        pickled = sorted(p.name for p in directory.glob("*.bin")) + sorted(
            p.name for p in directory.glob("*.pt")
        )
        hint = (
            f" (found {', '.join(pickled)}: pickled weights are not loaded; convert them to safetensors)"
            if pickled
            else ""
        )
        raise CheckpointError(f"no {WEIGHTS_FILE} or {WEIGHTS_INDEX} in {directory}{hint}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"weight shard {file} named in the index is missing")
        try:
            state.update(load_file(str(file)))
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"weight file {file} is corrupt or not safetensors: {exc}") from None
    return state


def load_state(
    model: torch.nn.Module, hf_state: Mapping[str, torch.Tensor], *, source: str = "checkpoint"
) -> None:
    """Copy checkpoint tensors into ``model``; every missing, unexpected or wrongly shaped key is an error.

    ``lm_head.weight`` may be absent when the model ties it to the embedding.
    """
    own = model.state_dict()
    expected = {hf_key(k): k for k in own}
    tied = getattr(model, "ties_lm_head", False)
    missing = [k for k in expected if k not in hf_state and not (tied and k == "lm_head.weight")]
    unexpected = [k for k in hf_state if k not in expected]
    if tied:
        unexpected = [k for k in unexpected if k != "lm_head.weight"]
    wrong = [
        f"{k} {tuple(hf_state[k].shape)} != {tuple(own[ours].shape)}"
        for k, ours in expected.items()
        if k in hf_state and tuple(hf_state[k].shape) != tuple(own[ours].shape)
    ]
    problems = []
    for label, names in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong)):
        if names:
            shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{source} does not match the model config: " + "; ".join(problems))
    with torch.no_grad():
        for k, ours in expected.items():
            if k in hf_state:
                own[ours].copy_(hf_state[k])


def hf_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under checkpoint names (tied lm_head written too, as the released files do)."""
    return {hf_key(k): v.detach().contiguous() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------- writing
def write_checkpoint(
    directory: str | os.PathLike,
    config: dict,
    tensors: Mapping[str, torch.Tensor],
    extra_files: Mapping[str, str | Path] | None = None,
) -> Path:
    """Write config.json + model.safetensors (+ copies of ``extra_files``) atomically.

    Everything goes to a temporary sibling directory first, which is renamed into place, so a crash never
    leaves a half-written checkpoint under the final name.
    """
    from safetensors.torch import save_file

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_file(
            {k: v.cpu() for k, v in tensors.items()}, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"}
        )
        for name, src in (extra_files or {}).items():
            if isinstance(src, Path):
                shutil.copyfile(src, tmp / name)
            else:
                (tmp / name).write_text(src)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
