"""`VideoChatFlash`: the whole model — UMT encoder, ToMe + MLP projector, Qwen2 LLM — and its public API.

Data flow (inference): uint8 frames -> `preprocess_frames` (S×S, normalised) -> UMT per 4-frame clip ->
ToMe to 16 tokens/frame -> MLP -> visual tokens ``[16·T, D]`` -> spliced at the ``<image>`` id of the prompt ->
Qwen2 prefill (optionally dropping visual tokens inside the LLM) -> decode loop.

Clips are encoded in batches of `clip_batch_size`, preprocessing only that batch's frames, so peak memory does
not grow with video length beyond the compressed tokens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import CompressionConfig, VideoChatFlashConfig
from ..errors import CheckpointError
from ..inference.generate import GenerateResult, GenerationConfig, generate
from ..inference.prompt import IGNORE_INDEX, IMAGE_TOKEN_INDEX, TextTokenizer
from . import loading
from .preprocess import arrange_image_tokens, image_tiles, pad_to_square, preprocess_frames
from .projector import ToMeProjector
from .qwen2 import Qwen2ForCausalLM
from .umt import UMTEncoder

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with bfloat16 matrix instructions (AMX or AVX512-BF16); elsewhere bf16 matmuls are slow."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """`"auto"`: bfloat16 on CUDA and on CPUs with bf16 matrix units, float32 on other CPUs."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        fast = device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16())
        return torch.bfloat16 if fast else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} (choose auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available (use --device cpu)")
    return device


def default_clip_batch_size(model: VideoChatFlash) -> int:
    """Clips encoded per forward: 8 on CPU; on CUDA as many as a quarter of the free memory holds (max 64).

    Per clip the encoder keeps about 16 activations of [frames·patches, width] alive in one block plus the
    attention of SDPA's fused kernel, so ~16·tokens·width·bytes is a generous per-clip estimate.
    """
    if model.device.type != "cuda":
        return 8
    free, _ = torch.cuda.mem_get_info(model.device)
    vision = model.config.vision
    per_clip = 16 * vision.num_frames * vision.tokens_per_frame * vision.hidden_size * model.dtype.itemsize
    return int(max(1, min(64, free // 4 // per_clip)))


@dataclass
class MultimodalSample:
    """One training sample: ids with at most one −200 placeholder, labels, and the pixels behind it."""

    input_ids: torch.Tensor  # [L] int64
    labels: torch.Tensor  # [L] int64, IGNORE_INDEX where not supervised
    pixels: torch.Tensor | None = None  # video [T,3,S,S] or image tiles [1+P,3,S,S]
    modality: str = "video"  # "video" | "image" | "text"
    image_grid: tuple[int, int] | None = None  # (rows, cols) of anyres tiles


class VideoChatFlash(nn.Module):
    def __init__(
        self,
        config: VideoChatFlashConfig,
        tokenizer: TextTokenizer | None = None,
        generation_config: GenerationConfig | None = None,
    ):
        super().__init__()
        self.config = config
        self.vision = UMTEncoder(config.vision)
        self.projector = ToMeProjector(config.projector)
        self.llm = Qwen2ForCausalLM(config.llm)
        self.tokenizer = tokenizer
        self.generation_config = generation_config or GenerationConfig()
        self.name_or_path: str | None = None  # where the weights came from (part of cache keys)
        self.clip_batch_size = 8
        self.vision_cache = None  # set by the trainer for stages with a frozen tower (train.frozen_vision_cache_gb)

    # ------------------------------------------------------------------ construction
    @property
    def ties_lm_head(self) -> bool:
        return self.config.llm.tie_word_embeddings

    @property
    def device(self) -> torch.device:
        return self.llm.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.model.embed_tokens.weight.dtype

    @classmethod
    def from_config(
        cls,
        config: VideoChatFlashConfig,
        tokenizer: TextTokenizer | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        generation_config: GenerationConfig | None = None,
    ) -> VideoChatFlash:
        """A randomly initialised model (``device="meta"`` builds shapes only, for dry runs)."""
        device = torch.device(device) if str(device) == "meta" else resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        with torch.device(device):
            model = cls(config, tokenizer, generation_config)
        return model.to(dtype=dtype)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        *,
        compression: CompressionConfig | None = None,
    ) -> VideoChatFlash:
        """Load a checkpoint directory (config.json + safetensors + tokenizer) or a hub id.

        Every missing, unexpected or wrongly shaped tensor is reported by name. ``compression`` overrides
        the checkpoint's video-level compression setting.
        """
        directory = loading.resolve_checkpoint(path_or_id)
        config = VideoChatFlashConfig.from_json_file(directory / loading.CONFIG_FILE)
        tokenizer = TextTokenizer.from_dir(directory)
        if tokenizer.vocab_size > config.llm.vocab_size:
            raise CheckpointError(
                f"tokenizer in {directory} has {tokenizer.vocab_size} tokens but the model only "
                f"{config.llm.vocab_size} embeddings"
            )
        gen_file = directory / loading.GENERATION_CONFIG
        generation = GenerationConfig.from_file(gen_file) if gen_file.is_file() else GenerationConfig()
        if generation.eos_token_ids == () or not generation.eos_token_ids:
            generation = replace(generation, eos_token_ids=(tokenizer.eos_token_id,))
        state = loading.read_safetensors(directory)
        # Load lm_head when stored, tie it to the embedding only when absent (REFERENCE §1.6).
        config = replace(config, llm=replace(config.llm, tie_word_embeddings="lm_head.weight" not in state))
        if compression is not None:
            config = config.with_compression(compression)
        device = resolve_device(device)
        with torch.device("meta"):
            model = cls(config, tokenizer, generation)
        model = model.to_empty(device=device)
        model.reset_buffers()
        loading.load_state(model, state, source=str(directory))
        model.name_or_path = str(path_or_id)
        model = model.to(dtype=resolve_dtype(dtype, device)).eval()
        model.clip_batch_size = default_clip_batch_size(model)
        return model

    def reset_buffers(self) -> None:
        """Recompute non-persistent buffers (position tables, RoPE) after building on the meta device."""
        for module in self.modules():
            if module is not self and hasattr(module, "reset_buffers"):
                module.reset_buffers()

    def save_pretrained(self, directory: str | os.PathLike, state_dict: dict | None = None) -> Path:
        """Write the HF layout the original code reads: config.json, model.safetensors, tokenizer, generation.

        ``state_dict`` (our parameter names) replaces the module's own tensors, e.g. a gathered FSDP state or
        base weights without LoRA adapters.
        """
        tensors = (
            loading.hf_state_dict(self)
            if state_dict is None
            else {loading.hf_key(k): v.detach().contiguous() for k, v in state_dict.items()}
        )
        config = self.config.to_dict()
        config["torch_dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
        extra = {loading.GENERATION_CONFIG: self.generation_config.to_json()}
        if self.tokenizer is not None:
            extra.update(self.tokenizer.files())
        return loading.write_checkpoint(directory, config, tensors, extra)

    # ------------------------------------------------------------------ preprocessing
    def preprocess_video(self, frames) -> torch.Tensor:
        return preprocess_frames(frames, self.config.image_size)

    def preprocess_image(self, image) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """Pixels of an image as tiles (anyres_nopad) or one padded/resized tile, and the tile grid."""
        size = self.config.image_size
        aspect = self.config.image_aspect_ratio
        if aspect == "anyres_nopad":
            return image_tiles(image, size, self.config.image_grid_pinpoints)
        if aspect == "pad":
            image = pad_to_square(image)
        array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
        return preprocess_frames(array[None], size), None

    # ------------------------------------------------------------------ visual encoding
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Video pixels ``[T,3,S,S]`` (T a multiple of the clip length) -> visual tokens ``[16·T, D]``."""
        per_clip = self.config.frames_per_clip
        if pixels.shape[0] % per_clip:
            raise ValueError(f"frame count {pixels.shape[0]} is not a multiple of the clip length {per_clip}")
        clips = pixels.reshape(-1, per_clip, *pixels.shape[1:])
        out = [
            self._encode_clips(clips[i : i + self.clip_batch_size])
            for i in range(0, len(clips), self.clip_batch_size)
        ]
        return torch.cat(out).flatten(0, 1)

    def _tower(self, pixels: torch.Tensor) -> torch.Tensor:
        """The vision tower's features of ``[B, F, 3, S, S]``; a trainer that froze the tower may set
        ``vision_cache`` (`train.feature_cache.FrozenTowerCache`) to reuse them across epochs. The cache keys on the
        pixels as given (on the host, from the data loader), so a hit never copies them to the device."""

        def tower(x: torch.Tensor) -> torch.Tensor:
            return self.vision(x.to(device=self.device, dtype=self.dtype))

        return tower(pixels) if self.vision_cache is None else self.vision_cache(tower, pixels)

    def _encode_clips(self, clips: torch.Tensor) -> torch.Tensor:
        """``[B, F, 3, S, S]`` -> ``[B, tokens_per_frame·F, D]``."""
        features = self._tower(clips)
        return self.projector(features, self.config.projector.tokens_per_frame * clips.shape[1])

    @torch.inference_mode()
    def encode_frames(self, frames) -> torch.Tensor:
        """uint8 RGB frames ``[T,H,W,3]`` used as given (no sampling) -> visual tokens ``[16·T, D]``."""
        frames = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [T, H, W, 3], got shape {tuple(frames.shape)}")
        per_batch = self.config.frames_per_clip * self.clip_batch_size
        out = [
            self.encode_pixels(self.preprocess_video(frames[i : i + per_batch]))
            for i in range(0, len(frames), per_batch)
        ]
        return torch.cat(out)

    def encode_image_pixels(self, pixels: torch.Tensor, grid: tuple[int, int] | None) -> torch.Tensor:
        """Image tiles ``[1+P,3,S,S]`` -> ``[64·(1+P), D]`` (each tile a 1-frame clip, merged to 64 tokens)."""
        features = self._tower(pixels[:, None])
        tokens = self.projector(features, self.config.projector.tokens_per_image)
        if grid is None or tokens.shape[0] == 1:
            return tokens.flatten(0, 1)
        return arrange_image_tokens(tokens, grid)

    @torch.inference_mode()
    def encode_image(self, image) -> torch.Tensor:
        """uint8 ``[H,W,3]`` or PIL image -> ``[64·(1+tiles), D]`` (anyres_nopad)."""
        from PIL import Image

        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        pixels, grid = self.preprocess_image(image)
        return self.encode_image_pixels(pixels, grid)

    # ------------------------------------------------------------------ prompt assembly
    def embed_with_visual(
        self, input_ids: Sequence[int], visual: torch.Tensor | None
    ) -> tuple[torch.Tensor, tuple[int, int] | None]:
        """Token embeddings with ``visual`` spliced in at the single −200 id: ``([L', D], (start, N))``."""
        ids = torch.as_tensor(list(input_ids), dtype=torch.long, device=self.device)
        where = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
        if visual is None:
            if where:
                raise ValueError("the prompt has an <image> placeholder but no visual tokens were given")
            return self.llm.model.embed_tokens(ids), None
        if len(where) != 1:
            raise ValueError(f"the prompt must contain exactly one <image> placeholder, found {len(where)}")
        start = where[0]
        text = self.llm.model.embed_tokens(ids.clamp_min(0))
        visual = visual.to(device=text.device, dtype=text.dtype)
        return torch.cat([text[:start], visual, text[start + 1 :]]), (start, visual.shape[0])

    def _truncate(self, length: int) -> int:
        limit = self.config.tokenizer_model_max_length
        return length if limit is None else min(length, int(limit))

    # ------------------------------------------------------------------ generation
    def _require_tokenizer(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise CheckpointError("this model has no tokenizer; load it with from_pretrained")
        return self.tokenizer

    def generation_settings(
        self, generation: GenerationConfig | dict | None = None, **overrides
    ) -> GenerationConfig:
        """The checkpoint's generation config with a dict / config / keyword overrides on top (as `chat`)."""
        base = self.generation_config
        if isinstance(generation, GenerationConfig):
            base = generation
        elif generation:
            base = base.merged(generation)
        return base.merged({k: v for k, v in overrides.items() if v is not None})

    @torch.inference_mode()
    def generate(
        self,
        prompt: str,
        visual: torch.Tensor | None,
        max_new_tokens: int | None = None,
        do_sample: bool | None = None,
        *,
        generation: GenerationConfig | dict | None = None,
        compression: CompressionConfig | None = None,
        on_token=None,
        **sampling,
    ) -> GenerateResult:
        """Answer a fully rendered prompt containing one ``<image>`` with ``visual`` tokens spliced in.

        Returns a result with ``.token_ids`` (new tokens only) and ``.text`` (decoded, stripped).
        ``compression`` defaults to the checkpoint's setting (off unless ``mm_llm_compress``).
        """
        tokenizer = self._require_tokenizer()
        settings = self.generation_settings(
            generation, max_new_tokens=max_new_tokens, do_sample=do_sample, **sampling
        )
        embeds, span = self.embed_with_visual(tokenizer.encode_with_image(prompt), visual)
        limit = self._truncate(embeds.shape[0])
        if limit < embeds.shape[0]:
            # The original silently truncates, which cuts the question (or part of the video) off the prompt.
            raise ValueError(
                f"the prompt is {embeds.shape[0]} tokens, more than the model's tokenizer_model_max_length "
                f"{limit}; use fewer frames (--max-frames / max_num_frames)"
            )
        if compression is None and self.config.compression.enabled:
            compression = self.config.compression
        if compression is not None and not compression.enabled:
            compression = None
        if compression is not None and span is None:
            compression = None  # nothing visual to drop
        result = generate(
            self.llm, embeds[None], settings, visual=span, compression=compression, on_token=on_token
        )
        result.text = tokenizer.clean_answer(result.token_ids)
        return result

    # ------------------------------------------------------------------ the main job
    def encode_video(self, video, max_num_frames: int = 512, media: dict | None = None, **kwargs):
        """Sample, decode and encode a video once -> `VideoTokens`, reusable for every question.

        ``video``: a path, bytes, file object, frame directory, image file, GIF or frames array (see
        `videochat_flash.video`). Keyword options: ``cache`` (a `TokenCache`), ``progress``, ``timings``,
        ``allow_url``.
        """
        from ..inference.session import encode_video

        return encode_video(self, video, max_num_frames=max_num_frames, media=media, **kwargs)

    def chat(
        self,
        video,
        question: str,
        history: list[dict] | None = None,
        max_num_frames: int = 512,
        generation: dict | None = None,
        media: dict | None = None,
        **kwargs,
    ) -> tuple[str, list[dict]]:
        """Answer a question about a video, as the original ``model.chat`` (REFERENCE §8).

        ``video`` may also be an already encoded `VideoTokens` (no decoding or encoding then). Returns
        ``(answer, history)``; pass the history back for the next turn.
        """
        from ..inference.session import chat

        return chat(self, video, question, history, max_num_frames, generation, media, **kwargs)

    def stream(self, source, **kwargs):
        """A `StreamSession` over a live source (growing file, URL with ``allow_url=True``, frame iterator)."""
        from ..inference.stream import StreamSession

        return StreamSession(self, source, **kwargs)

    # ------------------------------------------------------------------ training
    def _sample_visual(self, sample: MultimodalSample) -> torch.Tensor | None:
        if sample.modality == "text" or sample.pixels is None:
            return None
        if sample.modality == "image":
            return self.encode_image_pixels(sample.pixels, sample.image_grid)
        return self.encode_pixels(sample.pixels)

    def forward(
        self, samples: Sequence[MultimodalSample], compression: CompressionConfig | None = None
    ) -> torch.Tensor:
        """Mean next-token loss of a batch of samples (right-padded, truncated to the model's max length)."""
        embeds, labels, spans = [], [], []
        for sample in samples:
            visual = self._sample_visual(sample)
            emb, span = self.embed_with_visual(sample.input_ids.tolist(), visual)
            lab = sample.labels.to(self.device)
            if span is not None:
                start, count = span
                fill = torch.full((count,), IGNORE_INDEX, dtype=lab.dtype, device=lab.device)
                lab = torch.cat([lab[:start], fill, lab[start + 1 :]])
            keep = self._truncate(emb.shape[0])
            embeds.append(emb[:keep])
            labels.append(lab[:keep])
            spans.append(span if span is None or span[0] < keep else None)
        width = max(e.shape[0] for e in embeds)
        batch = torch.zeros(
            len(embeds), width, embeds[0].shape[-1], dtype=embeds[0].dtype, device=self.device
        )
        target = torch.full((len(embeds), width), IGNORE_INDEX, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(embeds), width, dtype=torch.bool, device=self.device)
        for i, (e, lab) in enumerate(zip(embeds, labels, strict=True)):
            batch[i, : e.shape[0]], target[i, : e.shape[0]], mask[i, : e.shape[0]] = e, lab, True
        _, loss, _ = self.llm(
            batch, attention_mask=mask, labels=target, visual=spans, compression=compression
        )
        if all(s is None for s in spans) and self.training:
            loss = loss + 0.0 * self._dummy_visual_loss()
        return loss

    def _dummy_visual_loss(self) -> torch.Tensor:
        """Touch the vision path on text-only batches so every rank's gradients cover the same parameters."""
        size = self.config.image_size
        pixels = torch.zeros(1, 3, size, size, device=self.device, dtype=self.dtype)
        return self.encode_image_pixels(pixels, None).sum()
