"""Small models built from scratch: a Qwen-style BPE tokenizer and tiny random checkpoints.

The released checkpoints cannot be downloaded everywhere (tests, CI, offline laptops), so tests and the demo
model need their own tokenizer carrying the Qwen special tokens and small configs of the same architecture.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch

from ..config import VideoChatFlashConfig
from ..inference.prompt import ENDOFTEXT, IM_END, IM_START, TextTokenizer

# The Qwen2 pre-tokenizer split pattern (contractions, letters, single digits, punctuation, whitespace).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)  # ids vocab-3, vocab-2, vocab-1, as in the fixtures

DEFAULT_TEXTS = (
    "You are a helpful assistant.",
    "What color is the square? The square is red.",
    "Describe the video. A blue circle moves from left to right while a green triangle appears.",
    "Question: Which shape appears first?\nOption:\n(A) circle\n(B) square\n(C) triangle\nOnly give the best option.",
    "The event happens in the 12.5 - 20.0 seconds.",
    "The video lasts for 64.00 seconds, and 64 frames are uniformly sampled from it.",
)


def train_tokenizer(texts: Iterable[str] = DEFAULT_TEXTS, vocab_size: int = 512) -> TextTokenizer:
    """A byte-level BPE tokenizer with Qwen's normaliser and pre-tokenizer; specials get the last three ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return TextTokenizer.from_backend(tok)


def tiny_config_dict(
    vocab_size: int,
    *,
    image_size: int = 32,
    vision_width: int = 32,
    vision_depth: int = 3,
    vision_heads: int = 2,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 64,
    compress: bool = False,
    max_length: int = 32768,
) -> dict:
    """config.json content of a small model with the released architecture (the fields of REFERENCE §2)."""
    return {
        "architectures": ["VideoChatFlashQwenForCausalLM"],
        "model_type": "videochat_flash_qwen",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "bos_token_id": vocab_size - 3,
        "eos_token_id": vocab_size - 1,
        "mm_vision_tower": "umt-large",
        "umt_image_size": image_size,
        "umt_hidden_size": vision_width,
        "umt_num_hidden_layers": vision_depth,
        "umt_num_attention_heads": vision_heads,
        "umt_patch_size": 16 if image_size >= 64 else 8,
        "mm_hidden_size": vision_width,
        "mm_vision_select_layer": -2,
        "mm_projector_type": "tome16_mlp_hd64",
        "mm_local_num_frames": 4,
        "mm_pos_num_frames": 4,
        "vision_encode_type": "video_image",
        "mm_patch_merge_type": "spatial_nopad",
        "mm_newline_position": "nothing",
        "image_aspect_ratio": "anyres_nopad",
        "image_grid_pinpoints": [[i * image_size, j * image_size] for i in range(1, 4) for j in range(1, 4)],
        "frame_aspect_ratio": "square",
        "mm_llm_compress": compress,
        "llm_compress_type": "uniform0_attention",
        "llm_compress_layer_list": [1],
        "llm_image_token_ratio_list": [1.0, 0.5],
        "tokenizer_model_max_length": max_length,
        "tokenizer_padding_side": "right",
        "transformers_version": "4.40.1",
    }


def build_tiny_checkpoint(
    directory: str | os.PathLike, *, seed: int = 0, tokenizer: TextTokenizer | None = None, **config_overrides
) -> Path:
    """Write a small random-weight checkpoint (HF layout) that `VideoChatFlash.from_pretrained` loads."""
    from .videochat import VideoChatFlash

    tokenizer = tokenizer or train_tokenizer()
    config = VideoChatFlashConfig.from_dict(tiny_config_dict(tokenizer.vocab_size, **config_overrides))
    torch.manual_seed(seed)
    model = VideoChatFlash.from_config(config, tokenizer)
    init_small_(model, seed)
    return model.save_pretrained(directory)


@torch.no_grad()
def init_small_(model: torch.nn.Module, seed: int = 0) -> None:
    """Deterministic O(1)-activation init (matrices N(0,1)/sqrt(fan_in), norms ~1) for random test models."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if p.ndim >= 2:
            fan_in = p[0].numel()
            p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
        elif "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
