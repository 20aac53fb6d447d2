"""Training recipes: typed dataclasses built from a small YAML file plus ``key=value`` overrides.

A recipe has one section per concern::

    model:     what to build and where its initial weights come from (base LLM, UMT .pt, stage-1 projector,
               previous stage) — or a small from-scratch model (``llm`` given as a dict of Qwen2 fields)
    data:      data mixture YAML, template (qwen_2 | plain), frame sampling, max length
    optim:     AdamW, per-part learning rates, cosine schedule with warmup
    train:     tunable parts, batch sizes, epochs/steps, precision, checkpointing, logging cadence
    parallel:  fsdp | ddp | none, and the world size assumed by --dry-run
    lora:      optional LoRA adapters on the LLM (and optionally the vision encoder)

`load_recipe` is the one place YAML becomes typed config; unknown keys and wrong types fail with one line.
`model_config_dict` turns the model section into the ``config.json`` dict that `VideoChatFlashConfig` reads.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

TUNABLE_PARTS = ("mm_vision_tower", "mm_mlp_adapter", "mm_language_model")

# Public configs of the base LLMs (REFERENCE §1.4), so `--dry-run` needs no download.
KNOWN_LLMS: dict[str, dict[str, Any]] = {
    "Qwen2-7B-Instruct": dict(
        vocab_size=152064,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
        sliding_window=131072,
        max_window_layers=28,
        tie_word_embeddings=False,
        hidden_act="silu",
        bos_token_id=151643,
        eos_token_id=151645,
    ),
    "Qwen2.5-1.5B-Instruct": dict(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
        sliding_window=32768,
        max_window_layers=21,
        tie_word_embeddings=True,
        hidden_act="silu",
        bos_token_id=151643,
        eos_token_id=151645,
    ),
}

# Qwen2 fields copied from a base LLM's config.json into ours.
LLM_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "rms_norm_eps",
    "rope_theta",
    "max_position_embeddings",
    "sliding_window",
    "max_window_layers",
    "tie_word_embeddings",
    "hidden_act",
    "bos_token_id",
    "eos_token_id",
    "attention_dropout",
    "initializer_range",
)

# Multimodal fields every recipe model gets unless the recipe's `model.config` says otherwise (§2, §9).
MM_DEFAULTS: dict[str, Any] = dict(
    model_type="videochat_flash_qwen",
    architectures=["VideoChatFlashQwenForCausalLM"],
    mm_hidden_size=1024,
    mm_vision_select_layer=-2,
    mm_projector_type="tome16_mlp_hd64",
    mm_local_num_frames=4,
    mm_pos_num_frames=8,
    vision_encode_type="video_image",
    mm_patch_merge_type="spatial_nopad",
    mm_newline_position="nothing",
    image_aspect_ratio="anyres_nopad",
    image_grid_pinpoints="(1x1),...,(6x6)",
    frame_aspect_ratio="square",
    mm_llm_compress=False,
    llm_compress_type="attention",
    llm_compress_layer_list=[8, 16, 24],
    llm_image_token_ratio_list=[1.0, 0.5, 0.25, 0.125],
    tokenizer_padding_side="right",
    mm_use_im_start_end=False,
    mm_use_im_patch_token=False,
    use_sliding_window=False,
    pad_token_id=None,
)


# ----------------------------------------------------------------------------------------- sections
@dataclass
class ModelRecipe:
    """What to build and where its initial weights come from.

    ``llm`` is the name of a built-in base shape (`KNOWN_LLMS`), a dict of Qwen2 config fields (a small model
    trained from scratch), or null to read ``llm_path/config.json``. Weights: ``llm_path`` (HF Qwen2 folder),
    ``vision_weights`` (UMT ``.pt``), ``projector_weights`` (a stage-1 output), or ``init_from`` (a previous
    stage's checkpoint, whose config is then the base and ``config`` edits it, e.g. the tower switch of stage 4).
    Anything not loaded is randomly initialised.
    """

    llm: str | dict | None = None
    llm_path: str | None = None
    tokenizer: str | None = None
    vision_tower: str = "umt-large"
    vision_weights: str | None = None
    projector_weights: str | None = None
    init_from: str | None = None
    config: dict = field(default_factory=dict)


@dataclass
class DataRecipe:
    path: str | None = None  # data mixture YAML (§9.1)
    template: str = "qwen_2"
    frames_upbound: int = 8
    frames_lowbound: int = 1
    sample_type: str = "dynamic_fps1"
    local_num_frames: int = 4
    time_msg: str | None = "short"
    decode_size: int | None = None
    max_length: int = 32768  # model_max_length: ids truncated before, embeddings after visual splicing
    num_workers: int = 2
    shuffle: bool = True
    group_by_modality: bool = True


@dataclass
class OptimRecipe:
    lr: float = 1e-5
    vision_tower_lr: float | None = None  # None: same as lr
    projector_lr: float | None = None
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: str = "cosine"  # cosine | linear | constant (each after linear warmup)
    warmup_ratio: float = 0.03
    max_grad_norm: float | None = 1.0


@dataclass
class CompressionRecipe:
    """Optional video-level compression (§7) applied during training."""

    enabled: bool = False
    type: str = "uniform0_attention"
    layers: list[int] = field(default_factory=lambda: [4, 18])
    ratios: list[float] = field(default_factory=lambda: [1.0, 0.75, 0.25])


@dataclass
class TrainRecipe:
    tunable_parts: list[str] = field(default_factory=lambda: list(TUNABLE_PARTS))
    output_dir: str = "outputs/run"
    epochs: int = 1
    max_steps: int | None = None  # cap on optimizer steps (None: whole epochs)
    global_batch_size: int = 256
    per_device_batch_size: int = 1
    seed: int = 42
    dtype: str = "bf16"  # autocast dtype on accelerators: bf16 | fp32 (off); fp16 would need loss scaling
    autocast_on_cpu: bool = False
    gradient_checkpointing: bool = True
    compile: bool = False
    deterministic: bool = False
    save_steps: int | None = None  # None: only at the end
    # > 0: keep the frozen tower's outputs (up to this many GiB) and reuse them when the same pixels come again
    # (`feature_cache.FrozenTowerCache`); for multi-epoch stages with the tower frozen, refused otherwise
    frozen_vision_cache_gb: float = 0.0
    keep_last: int = 2
    log_steps: int = 1
    compression: CompressionRecipe = field(default_factory=CompressionRecipe)


@dataclass
class ParallelRecipe:
    strategy: str = "fsdp"  # fsdp | ddp | none
    world_size: int = 1  # devices assumed by --dry-run (a real run uses torchrun's WORLD_SIZE)
    backend: str | None = None  # nccl on GPUs, gloo on CPU when None
    shard_vision_blocks: bool = False  # FSDP: shard each vision block (only for homogeneous video batches)
    find_unused_parameters: bool = False  # DDP: for models with data-dependent unused parameters


@dataclass
class LoraRecipe:
    enabled: bool = False
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    vision: bool = False  # also adapt the vision encoder's linear layers
    vision_target_modules: list[str] = field(default_factory=lambda: ["qkv", "proj", "fc1", "fc2"])


@dataclass
class LoggingRecipe:
    jsonl: bool = True
    tensorboard: bool = True  # used when the tensorboard package is installed
    progress_bar: bool = True


@dataclass
class Recipe:
    name: str = "recipe"
    description: str = ""
    model: ModelRecipe = field(default_factory=ModelRecipe)
    data: DataRecipe = field(default_factory=DataRecipe)
    optim: OptimRecipe = field(default_factory=OptimRecipe)
    train: TrainRecipe = field(default_factory=TrainRecipe)
    parallel: ParallelRecipe = field(default_factory=ParallelRecipe)
    lora: LoraRecipe = field(default_factory=LoraRecipe)
    logging: LoggingRecipe = field(default_factory=LoggingRecipe)

    def grad_accumulation(self, world_size: int) -> int:
        """Gradient accumulation steps giving the recipe's global batch on ``world_size`` devices."""
        per_step = self.train.per_device_batch_size * world_size
        if self.train.global_batch_size % per_step:
            raise ConfigError(
                f"train.global_batch_size = {self.train.global_batch_size} is not a multiple of "
                f"per_device_batch_size x world_size = {self.train.per_device_batch_size} x {world_size}"
            )
        return self.train.global_batch_size // per_step


# ------------------------------------------------------------------------------------------- loading
def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML, apply ``dotted.key=value`` overrides (values parsed as YAML), validate."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"recipe file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a YAML mapping")
    raw.setdefault("name", path.stem)
    return recipe_from_dict(apply_overrides(raw, overrides or []))


def recipe_from_dict(raw: dict) -> Recipe:
    recipe = _build(Recipe, raw, "")
    validate(recipe)
    return recipe


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of ``raw`` with each ``a.b.c=value`` applied (value parsed as YAML)."""
    out = json.loads(json.dumps(raw))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            value = text
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def _build(cls, raw: Any, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe section {where or 'top level'!r} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown recipe key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in raw.items():
        key = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(hints[name], value, key)
    return cls(**kwargs)


def _coerce(tp, value: Any, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"recipe key {key} = {value!r} has the wrong type"
        )
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"recipe key {key} = {value!r} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"recipe key {key} = {value!r} must be an integer")
    if tp is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(value)  # YAML reads 1e-5 (no dot) as a string
        except (TypeError, ValueError):
            raise ConfigError(f"recipe key {key} = {value!r} must be a number") from None
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"recipe key {key} = {value!r} must be a string")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        raise ConfigError(f"recipe key {key} = {value!r} must be a mapping")
    if origin in (list, tuple):
        if isinstance(value, str) and args and args[0] is str:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"recipe key {key} = {value!r} must be a list")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is tuple:
            if len(args) == 2 and args[1] is not Ellipsis and len(items) != 2:
                raise ConfigError(f"recipe key {key} = {value!r} must have 2 entries")
            return tuple(items)
        return items
    raise ConfigError(f"recipe key {key}: unsupported type {tp}")  # pragma: no cover - programming error


def validate(recipe: Recipe) -> None:
    """Cross-field checks with one-line messages."""
    bad = [p for p in recipe.train.tunable_parts if p not in TUNABLE_PARTS]
    if bad:
        raise ConfigError(f"train.tunable_parts has {bad[0]!r} (supported: {', '.join(TUNABLE_PARTS)})")
    if not recipe.train.tunable_parts and not recipe.lora.enabled:
        raise ConfigError("train.tunable_parts is empty and LoRA is off: nothing would be trained")
    if recipe.data.template not in ("qwen_2", "plain"):
        raise ConfigError(f"data.template = {recipe.data.template!r} is not supported (qwen_2, plain)")
    if recipe.optim.scheduler not in ("cosine", "linear", "constant"):
        raise ConfigError(
            f"optim.scheduler = {recipe.optim.scheduler!r} is not supported (cosine, linear, constant)"
        )
    if not 0.0 <= recipe.optim.warmup_ratio < 1.0:
        raise ConfigError(f"optim.warmup_ratio = {recipe.optim.warmup_ratio} must lie in [0, 1)")
    if recipe.parallel.strategy not in ("fsdp", "ddp", "none"):
        raise ConfigError(
            f"parallel.strategy = {recipe.parallel.strategy!r} is not supported (fsdp, ddp, none)"
        )
    if recipe.train.dtype not in ("bf16", "fp32"):
        raise ConfigError(f"train.dtype = {recipe.train.dtype!r} is not supported (bf16, fp32)")
    for name in ("global_batch_size", "per_device_batch_size", "epochs", "log_steps", "keep_last"):
        if getattr(recipe.train, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1")
    if recipe.train.global_batch_size % recipe.train.per_device_batch_size:
        raise ConfigError("train.global_batch_size must be a multiple of train.per_device_batch_size")
    if recipe.data.frames_lowbound > recipe.data.frames_upbound:
        raise ConfigError("data.frames_lowbound must not exceed data.frames_upbound")
    if recipe.data.local_num_frames < 1:
        raise ConfigError("data.local_num_frames must be >= 1")
    llm = recipe.model.llm
    if isinstance(llm, str) and llm not in KNOWN_LLMS and not recipe.model.llm_path:
        raise ConfigError(
            f"model.llm = {llm!r} is not a built-in shape ({', '.join(KNOWN_LLMS)}); give model.llm_path"
        )
    comp = recipe.train.compression
    if comp.enabled and recipe.parallel.strategy == "fsdp" and comp.type != "uniform":
        raise ConfigError(
            f"train.compression.type = {comp.type!r} reads the next decoder layer's weights outside its forward, "
            "which FSDP keeps sharded: use parallel.strategy ddp (or none), or compression type uniform"
        )
    if recipe.lora.enabled and recipe.lora.rank < 1:
        raise ConfigError("lora.rank must be >= 1")


# ----------------------------------------------------------------------------------- model config
def resolve_path(value: str | None) -> str | None:
    return None if value is None else os.path.expandvars(os.path.expanduser(value))


def base_llm_config(model: ModelRecipe) -> dict[str, Any]:
    """The Qwen2 fields of the base LLM: from ``llm_path/config.json`` when present, else built in / inline."""
    llm_path = resolve_path(model.llm_path)
    if isinstance(model.llm, dict):
        return dict(model.llm)
    if llm_path and (Path(llm_path) / "config.json").is_file():
        data = json.loads((Path(llm_path) / "config.json").read_text())
        return {k: data[k] for k in LLM_FIELDS if k in data}
    name = model.llm or (Path(llm_path).name if llm_path else None)
    if name in KNOWN_LLMS:
        return dict(KNOWN_LLMS[name])
    if name is None:
        raise ConfigError(
            "no base LLM: set model.llm (a built-in shape or inline config), model.llm_path or "
            "model.init_from"
        )
    raise ConfigError(
        f"cannot find the base LLM config: {llm_path}/config.json is missing and {name!r} is not a built-in "
        f"shape ({', '.join(KNOWN_LLMS)})"
    )


def model_config_dict(recipe: Recipe, previous: dict | None = None) -> dict[str, Any]:
    """The config.json dict of the model a recipe trains.

    ``previous`` is the config of ``model.init_from`` when continuing from an earlier stage; otherwise the base
    LLM's Qwen2 fields are combined with the multimodal defaults. ``model.config`` is applied last.
    """
    model = recipe.model
    if previous is not None:
        out = dict(previous)
        out["mm_vision_tower"] = model.vision_tower
    else:
        out = dict(MM_DEFAULTS)
        out.update(base_llm_config(model))
        out["mm_vision_tower"] = model.vision_tower
        # The released 2B stores an untied lm_head even though its base ties it (REFERENCE §1.6).
        out["tie_word_embeddings"] = False
        out.setdefault("pad_token_id", None)
    out["tokenizer_model_max_length"] = recipe.data.max_length
    out["mm_tunable_parts"] = ",".join(recipe.train.tunable_parts)
    out["mm_vision_tower_lr"] = recipe.optim.vision_tower_lr
    out.update(model.config)
    return out


def dataclass_from_section(cls, path: str | Path, section: str, overrides: dict | None = None):
    """``cls`` from one top-level section of a YAML file, then ``overrides``; an unknown field is an error, and a
    list is made a tuple where the field's default is one (YAML has no tuples)."""
    values = dict((yaml.safe_load(Path(path).read_text()) or {}).get(section) or {})
    values.update(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown {section} field(s) {unknown}; known: {sorted(fields)}")
    for name, value in values.items():
        if isinstance(value, list) and isinstance(fields[name].default, tuple):
            values[name] = tuple(value)
    return cls(**values)
