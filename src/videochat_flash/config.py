"""Typed model configuration, read from a checkpoint's ``config.json``.

One place turns the flat HF-style JSON (REFERENCE §2) into the small dataclasses each model part takes
(`UMTConfig`, `ProjectorConfig`, `Qwen2Config`, `CompressionConfig`). Unsupported values fail here, at load,
with one line naming the field, the value and what is supported.

The raw JSON is kept (`VideoChatFlashConfig.raw`) so that a checkpoint we save carries every field the
original wrote, including the ones we only pass through.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError, read_json_object

SUPPORTED_MODEL_TYPES = ("videochat_flash_qwen", "llava_qwen", "llava_qwen_flash")
SUPPORTED_COMPRESS_TYPES = ("attention", "uniform", "uniform0_attention", "uniform1_attention")
SUPPORTED_IMAGE_ASPECT = ("anyres_nopad", "square", "pad")
SUPPORTED_MERGE_TYPES = ("spatial_nopad", "flat")

# ImageNet statistics used by the UMT image processor (REFERENCE §3.1).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def _unsupported(name: str, value: Any, supported: Any) -> ConfigError:
    return ConfigError(f"config field {name!r} = {value!r} is not supported (supported: {supported})")


@dataclass(frozen=True)
class UMTConfig:
    """UMT ViT sizes. Defaults are UMT-L (the released models hard-code these)."""

    hidden_size: int = 1024
    num_layers: int = 24  # depth of the pretrained tower; fewer blocks are built (see num_blocks)
    num_heads: int = 16
    patch_size: int = 16
    image_size: int = 224
    num_frames: int = 4  # frames per clip (= mm_local_num_frames)
    select_layer: int = -2  # mm_vision_select_layer: -2 builds depth-1 blocks
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    final_norm_eps: float = 1e-12
    in_channels: int = 3

    @property
    def num_blocks(self) -> int:
        """Blocks actually built and stored: ``depth + select_layer + 1`` (23 for UMT-L)."""
        return self.num_layers + self.select_layer + 1

    @property
    def grid(self) -> int:
        """Patches per side of a frame (14 at 224 px, 28 at 448 px)."""
        return self.image_size // self.patch_size

    @property
    def tokens_per_frame(self) -> int:
        return self.grid * self.grid

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class ProjectorConfig:
    """ToMe merge + 2-layer GELU MLP (`tome16_mlp_hd64`, REFERENCE §1.3, §6)."""

    in_dim: int = 1024  # mm_hidden_size
    out_dim: int = 3584  # LLM hidden size
    tokens_per_frame: int = 16  # video clips merge to 16 * frames_per_clip tokens
    tokens_per_image: int = 64  # each image tile merges to 64 tokens (8 x 8)
    merge_heads: int = 16  # ToMe metric averages over this many channel groups (= ViT heads)


@dataclass(frozen=True)
class Qwen2Config:
    """The decoder-only LLM (standard Qwen2 fields)."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    # {"type"|"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768} or None.
    rope_scaling: dict | None = None
    # The original chat code ignores `rope_scaling`; set True to reproduce that (parity).
    ignore_rope_scaling: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class CompressionConfig:
    """Video-level compression inside the LLM (REFERENCE §7).

    ``layers`` are 1-based "rank layers": a drop happens after decoder layer ``layer - 1``.
    ``ratios`` are absolute fractions of the original visual-token count, one more than ``layers``.
    """

    enabled: bool = False
    type: str = "attention"
    layers: tuple[int, ...] = (8, 16, 24)
    ratios: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125)

    def __post_init__(self):
        if self.type not in SUPPORTED_COMPRESS_TYPES:
            raise _unsupported("llm_compress_type", self.type, ", ".join(SUPPORTED_COMPRESS_TYPES))
        if len(self.ratios) != len(self.layers) + 1:
            raise ConfigError(
                f"config field 'llm_image_token_ratio_list' has {len(self.ratios)} entries; "
                f"it needs len(llm_compress_layer_list) + 1 = {len(self.layers) + 1}"
            )
        if list(self.layers) != sorted(set(self.layers)) or any(layer < 1 for layer in self.layers):
            raise ConfigError(
                f"config field 'llm_compress_layer_list' = {list(self.layers)} must be increasing layer numbers >= 1"
            )
        if any(not 0.0 < r <= 1.0 for r in self.ratios):
            raise ConfigError(
                f"config field 'llm_image_token_ratio_list' = {list(self.ratios)} must lie in (0, 1]"
            )

    def stage_type(self, stage: int) -> str:
        """The dropping rule used at stage ``stage`` (0-based), resolving the combined types."""
        if self.type == "uniform0_attention":
            return "uniform" if stage == 0 else "attention"
        if self.type == "uniform1_attention":
            return "uniform" if stage <= 1 else "attention"
        return self.type

    def stage_counts(self, num_visual: int, stage: int) -> tuple[int, int]:
        """(tokens before, tokens kept) at ``stage``; both from the original count (ratios are absolute)."""
        return int(num_visual * self.ratios[stage]), int(num_visual * self.ratios[stage + 1])

    @classmethod
    def published(cls, num_layers: int = 28) -> CompressionConfig:
        """The setting published with the released models: uniform0_attention, layers [4, 18], ratios [1, 0.75, 0.25].

        The released LLMs have 28 layers. For a shallower model (our demo) the layers are scaled to the same
        relative depths, keeping the last one below ``num_layers`` (an attention stage reads the next layer).
        """
        layers = (4, 18)
        if num_layers != 28:
            scaled = [max(1, min(num_layers - 1, round(layer * num_layers / 28))) for layer in layers]
            layers = tuple(sorted(set(scaled)))
        ratios = (1.0, 0.75, 0.25)[: len(layers) + 1]
        return cls(enabled=True, type="uniform0_attention", layers=layers, ratios=ratios)


@dataclass(frozen=True)
class VideoChatFlashConfig:
    """Everything the model reads from config.json, typed and validated."""

    model_type: str
    vision: UMTConfig
    projector: ProjectorConfig
    llm: Qwen2Config
    compression: CompressionConfig
    image_aspect_ratio: str = "anyres_nopad"
    image_grid_pinpoints: tuple[tuple[int, int], ...] = ()
    mm_patch_merge_type: str = "spatial_nopad"
    tokenizer_model_max_length: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def image_size(self) -> int:
        return self.vision.image_size

    @property
    def frames_per_clip(self) -> int:
        return self.vision.num_frames

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_json_file(cls, path: str | Path) -> VideoChatFlashConfig:
        return cls.from_dict(read_json_object(path, "config file"))

    @classmethod
    def from_dict(cls, data: dict) -> VideoChatFlashConfig:
        model_type = data.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise _unsupported("model_type", model_type, ", ".join(SUPPORTED_MODEL_TYPES))
        _check_unsupported_paths(data)
        vision = _vision_config(data)
        llm = _llm_config(data)
        projector_type = data.get("mm_projector_type", "linear")
        if projector_type != "tome16_mlp_hd64":
            raise _unsupported("mm_projector_type", projector_type, "tome16_mlp_hd64")
        projector = ProjectorConfig(
            in_dim=int(data.get("mm_hidden_size", vision.hidden_size)),
            out_dim=llm.hidden_size,
            merge_heads=vision.num_heads,
        )
        if projector.in_dim != vision.hidden_size:
            raise ConfigError(
                f"config field 'mm_hidden_size' = {projector.in_dim} does not match the vision width "
                f"{vision.hidden_size}"
            )
        aspect = data.get("image_aspect_ratio", "square")
        if aspect not in SUPPORTED_IMAGE_ASPECT:
            raise _unsupported("image_aspect_ratio", aspect, ", ".join(SUPPORTED_IMAGE_ASPECT))
        merge = data.get("mm_patch_merge_type", "flat")
        if merge not in SUPPORTED_MERGE_TYPES:
            raise _unsupported("mm_patch_merge_type", merge, ", ".join(SUPPORTED_MERGE_TYPES))
        eos = data.get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        return cls(
            model_type=model_type,
            vision=vision,
            projector=projector,
            llm=llm,
            compression=_compression_config(data),
            image_aspect_ratio=aspect,
            image_grid_pinpoints=_pinpoints(data.get("image_grid_pinpoints"), vision.image_size),
            mm_patch_merge_type=merge,
            tokenizer_model_max_length=data.get("tokenizer_model_max_length"),
            bos_token_id=data.get("bos_token_id"),
            eos_token_id=eos,
            pad_token_id=data.get("pad_token_id"),
            raw=dict(data),
        )

    # ------------------------------------------------------------------ writing
    def to_dict(self) -> dict:
        """The config.json content: the raw fields we were built from, updated with our typed values."""
        out = dict(self.raw)
        out.update(
            model_type=self.model_type,
            hidden_size=self.llm.hidden_size,
            intermediate_size=self.llm.intermediate_size,
            num_hidden_layers=self.llm.num_hidden_layers,
            num_attention_heads=self.llm.num_attention_heads,
            num_key_value_heads=self.llm.num_key_value_heads,
            vocab_size=self.llm.vocab_size,
            rms_norm_eps=self.llm.rms_norm_eps,
            rope_theta=self.llm.rope_theta,
            max_position_embeddings=self.llm.max_position_embeddings,
            tie_word_embeddings=self.llm.tie_word_embeddings,
            rope_scaling=self.llm.rope_scaling,
            mm_vision_tower=out.get("mm_vision_tower")
            or ("umt-hd-large" if self.vision.image_size == 448 else "umt-large"),
            mm_hidden_size=self.vision.hidden_size,
            mm_local_num_frames=self.vision.num_frames,
            mm_vision_select_layer=self.vision.select_layer,
            mm_projector_type="tome16_mlp_hd64",
            mm_patch_merge_type=self.mm_patch_merge_type,
            image_aspect_ratio=self.image_aspect_ratio,
            image_grid_pinpoints=[list(p) for p in self.image_grid_pinpoints] or None,
            mm_llm_compress=self.compression.enabled,
            llm_compress_type=self.compression.type,
            llm_compress_layer_list=list(self.compression.layers),
            llm_image_token_ratio_list=list(self.compression.ratios),
            tokenizer_model_max_length=self.tokenizer_model_max_length,
            umt_hidden_size=self.vision.hidden_size,
            umt_num_hidden_layers=self.vision.num_layers,
            umt_num_attention_heads=self.vision.num_heads,
            umt_patch_size=self.vision.patch_size,
        )
        if "umt_image_size" in self.raw or self.vision.image_size not in (224, 448):
            out["umt_image_size"] = self.vision.image_size
        out.setdefault("vision_encode_type", "video_image")
        out.setdefault("mm_newline_position", "nothing")
        out.setdefault("frame_aspect_ratio", "square")
        out.setdefault("architectures", ["VideoChatFlashQwenForCausalLM"])
        return out

    def with_compression(self, compression: CompressionConfig) -> VideoChatFlashConfig:
        return replace(self, compression=compression)


# ---------------------------------------------------------------------- helpers
def _check_unsupported_paths(data: dict) -> None:
    """Fields whose other values select code paths the released models never use."""
    encode = data.get("vision_encode_type", "video_image")
    if encode != "video_image":
        raise _unsupported("vision_encode_type", encode, "video_image")
    newline = data.get("mm_newline_position", "nothing")
    if newline != "nothing":
        raise _unsupported("mm_newline_position", newline, "nothing")
    frame_aspect = data.get("frame_aspect_ratio", "square")
    if frame_aspect != "square":
        raise _unsupported("frame_aspect_ratio", frame_aspect, "square")
    version = str(data.get("transformers_version") or "")
    if "llava_ov" in version:
        raise _unsupported(
            "transformers_version", version, "any value without 'llava_ov' (no 2x2 pooling path)"
        )
    if data.get("use_sliding_window"):
        raise _unsupported("use_sliding_window", True, "false")
    act = data.get("hidden_act", "silu")
    if act != "silu":
        raise _unsupported("hidden_act", act, "silu")
    if data.get("mm_use_im_start_end"):
        raise _unsupported("mm_use_im_start_end", True, "false")


def _vision_config(data: dict) -> UMTConfig:
    tower = data.get("mm_vision_tower") or data.get("vision_tower")
    if not isinstance(tower, str):
        raise _unsupported("mm_vision_tower", tower, "'umt-large' (224 px) or 'umt-hd-large' (448 px)")
    name = tower.lower()
    if "internvideo2" in name:
        raise _unsupported("mm_vision_tower", tower, "UMT towers only ('umt-large', 'umt-hd-large')")
    if "umt-hd" in name:  # checked before "umt": the HD string contains both
        image_size = 448
    elif "umt" in name:
        image_size = 224
    else:
        raise _unsupported("mm_vision_tower", tower, "'umt-large' (224 px) or 'umt-hd-large' (448 px)")
    # Our own small models may use other resolutions; the released ones never set this key.
    image_size = int(data.get("umt_image_size", image_size))
    frames = int(data.get("mm_local_num_frames", -1))
    if frames <= 0:
        raise _unsupported(
            "mm_local_num_frames", frames, "a positive frame count per clip (4 in released models)"
        )
    vision = UMTConfig(
        hidden_size=int(data.get("umt_hidden_size", 1024)),
        num_layers=int(data.get("umt_num_hidden_layers", 24)),
        num_heads=int(data.get("umt_num_attention_heads", 16)),
        patch_size=int(data.get("umt_patch_size", 16)),
        image_size=image_size,
        num_frames=frames,
        select_layer=int(data.get("mm_vision_select_layer", -2)),
    )
    if vision.image_size % vision.patch_size:
        raise ConfigError(
            f"image size {vision.image_size} is not a multiple of umt_patch_size {vision.patch_size}"
        )
    if vision.hidden_size % vision.num_heads:
        raise ConfigError(
            f"config field 'umt_hidden_size' = {vision.hidden_size} is not divisible by "
            f"umt_num_attention_heads = {vision.num_heads}"
        )
    if not 1 <= vision.num_blocks <= vision.num_layers:
        raise _unsupported("mm_vision_select_layer", vision.select_layer, f"-{vision.num_layers}..-1")
    return vision


def _llm_config(data: dict) -> Qwen2Config:
    try:
        heads = int(data["num_attention_heads"])
        cfg = Qwen2Config(
            vocab_size=int(data["vocab_size"]),
            hidden_size=int(data["hidden_size"]),
            intermediate_size=int(data["intermediate_size"]),
            num_hidden_layers=int(data["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(data.get("num_key_value_heads", heads)),
            rms_norm_eps=float(data.get("rms_norm_eps", 1e-6)),
            rope_theta=float(data.get("rope_theta", 10000.0)),
            max_position_embeddings=int(data.get("max_position_embeddings", 32768)),
            tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
            rope_scaling=data.get("rope_scaling"),
        )
    except KeyError as exc:
        raise ConfigError(f"config field {exc.args[0]!r} is missing (needed by the Qwen2 LLM)") from None
    if cfg.hidden_size % cfg.num_attention_heads or cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ConfigError(
            f"config fields hidden_size={cfg.hidden_size}, num_attention_heads={cfg.num_attention_heads}, "
            f"num_key_value_heads={cfg.num_key_value_heads} are inconsistent"
        )
    scaling = cfg.rope_scaling
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ("yarn", "default"):
            raise _unsupported("rope_scaling.type", kind, "yarn (or null)")
    return cfg


def _compression_config(data: dict) -> CompressionConfig:
    return CompressionConfig(
        enabled=bool(data.get("mm_llm_compress", False)),
        type=data.get("llm_compress_type", "attention"),
        layers=tuple(int(x) for x in data.get("llm_compress_layer_list", [8, 16, 24])),
        ratios=tuple(float(x) for x in data.get("llm_image_token_ratio_list", [1.0, 0.5, 0.25, 0.125])),
    )


def _pinpoints(value: Any, image_size: int) -> tuple[tuple[int, int], ...]:
    """Grid pinpoints as (width, height) pairs; the training string form "(1x1),...,(6x6)" is expanded."""
    if value is None:
        return ()
    if isinstance(value, str):
        import re

        found = re.findall(r"\((\d+)x(\d+)\)", value)
        if len(found) < 2:
            raise _unsupported("image_grid_pinpoints", value, "a list of [w, h] or '(1x1),...,(6x6)'")
        (a0, b0), (a1, b1) = (tuple(map(int, found[0])), tuple(map(int, found[-1])))
        return tuple((i * image_size, j * image_size) for i in range(a0, a1 + 1) for j in range(b0, b1 + 1))
    try:
        return tuple((int(w), int(h)) for w, h in value)
    except (TypeError, ValueError):
        raise _unsupported("image_grid_pinpoints", value, "a list of [w, h] pairs") from None
