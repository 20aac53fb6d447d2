"""Scaled dot-product attention for the model parts: PyTorch's SDPA, with cuDNN left out of decoding on CUDA.

Why: on Hopper (measured on an H200, torch 2.11, bfloat16) SDPA dispatches to cuDNN, which builds an execution
plan for every new sequence length. Decoding makes a new length at every step, so each step paid ~1.7 ms of CPU
time per layer: the 2B shape decoded 14–18 tokens/s, 50–54 without cuDNN, and the demo model's first bf16 answer
took 1.70 s instead of 0.18 s. A prefill builds its plans once and cuDNN is the fastest kernel there (131k-token
prefill 3.4 s, against 5.2 s with flash), so only decode steps leave it out. See `benchmarks/bench_gpu.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# Backends SDPA may pick for a decode step on CUDA; None = PyTorch's default choice (cuDNN included).
DECODE_BACKENDS: list[SDPBackend] | None = [
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]


def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    *,
    decode: bool = False,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention``; a ``decode`` step on CUDA runs on `DECODE_BACKENDS`."""
    if decode and q.is_cuda and DECODE_BACKENDS is not None:
        with sdpa_kernel(DECODE_BACKENDS):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
