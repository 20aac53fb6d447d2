"""Rotary position embeddings for the Qwen2 LLM: plain RoPE and YaRN (REFERENCE §1.4, §10).

Conventions follow transformers' Qwen2: ``inv_freq`` in float32, angles = position · inv_freq in float32,
duplicated to the full head dim, cos/sin (times the YaRN attention factor) cast to the activation dtype,
"rotate-half" pairing (dim i with dim i + head_dim/2).

``inv_freq`` is deliberately *not* a registered buffer: ``model.to(torch.bfloat16)`` would round it, and
bf16 frequencies give visibly wrong angles at positions in the thousands. It is a float32 constant derived
from the config, computed once per device on first use.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import Qwen2Config


def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """1 / θ^(2i/d) for i < d/2, float32."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def yarn_inv_freq(
    head_dim: int, theta: float, scaling: dict, max_position_embeddings: int
) -> tuple[torch.Tensor, float]:
    """YaRN frequencies and cos/sin scale, with transformers' parameter names and defaults.

    Low-frequency dims (many wavelengths longer than the original context) are interpolated (divided by
    ``factor``), high-frequency dims are kept, and a linear ramp between dims ``low``..``high`` blends the
    two. ``attention_factor`` (default 0.1·ln(factor) + 1) scales cos and sin, which scales q·k by its square.
    """
    factor = scaling.get("factor")
    original_max = scaling.get("original_max_position_embeddings", max_position_embeddings)
    if factor is None:
        factor = max_position_embeddings / original_max
    factor = float(factor)

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention_factor = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        # The dim index whose wavelength fits `num_rotations` times into the original context.
        return (head_dim * math.log(original_max / (num_rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp

    pos_freqs = theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep_extrapolated = 1 - ramp  # 1 for high-frequency dims, 0 for low-frequency ones
    inv_freq = interpolation * (1 - keep_extrapolated) + extrapolation * keep_extrapolated
    return inv_freq, float(attention_factor)


def rope_frequencies(cfg: Qwen2Config) -> tuple[torch.Tensor, float]:
    """(inv_freq float32 [head_dim/2], cos/sin scale) for ``cfg``; plain RoPE unless YaRN is configured."""
    scaling = None if cfg.ignore_rope_scaling else cfg.rope_scaling
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return default_inv_freq(cfg.head_dim, cfg.rope_theta), 1.0
    if kind == "yarn":
        return yarn_inv_freq(cfg.head_dim, cfg.rope_theta, scaling, cfg.max_position_embeddings)
    raise ValueError(f"rope_scaling type {kind!r} is not supported (yarn or none)")


class RotaryEmbedding(nn.Module):
    """Maps position ids to (cos, sin) tables of shape [T, head_dim] in the requested dtype."""

    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        self.cfg = cfg
        self._inv_freq: dict[torch.device, torch.Tensor] = {}
        _, self.attention_scaling = rope_frequencies(cfg)

    def reset_buffers(self) -> None:
        self._inv_freq.clear()

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        if device not in self._inv_freq:
            self._inv_freq[device] = rope_frequencies(self.cfg)[0].to(device)
        return self._inv_freq[device]

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.float()[:, None] * self.inv_freq(positions.device)[None, :]
        emb = torch.cat([angles, angles], dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if self.attention_scaling != 1.0:
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, head_dim]; cos/sin: [T, head_dim] (broadcast over batch and heads)."""
    return x * cos + rotate_half(x) * sin
