"""UMT-L video ViT (the vision tower), checkpoint-compatible with `model.vision_tower.vision_tower.encoder.*`.

A clip of T frames is embedded with a (1, 16, 16) tubelet, so every frame contributes (S/16)² tokens and the
whole clip is one token sequence (t-major, then row, then column) with joint space-time attention. Positions are
a fixed 1-D sinusoid over that flattened index (not learned, not stored). The tower is built with
``num_layers + select_layer + 1`` blocks (23 for UMT-L) and ends with the pretrained final LayerNorm.
REFERENCE §1.2.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import UMTConfig
from .attention import sdpa

# The pretrained UMT-L tables were laid out for 4-frame clips at 224 px (14 x 14 patches); every other
# geometry is interpolated from that one.
_BASE_FRAMES = 4
_BASE_GRID = 14


# ---------------------------------------------------------------------- position tables
def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """`[1, n, dim]` float32 table: sin on even channels, cos on odd ones (interleaved), built in float64."""
    pos = np.arange(num_positions, dtype=np.float64)[:, None]
    # Channels 2k and 2k+1 share the frequency 10000^(-2k/dim).
    freq = np.power(10000.0, 2 * (np.arange(dim) // 2) / dim)
    angle = pos / freq[None, :]
    table = np.empty_like(angle)
    table[:, 0::2] = np.sin(angle[:, 0::2])
    table[:, 1::2] = np.cos(angle[:, 1::2])
    return torch.from_numpy(table).float()[None]


def _resize_grid(table: torch.Tensor, frames: int, grid: int) -> torch.Tensor:
    """Bicubically resample every frame of a `[1, frames*14*14, C]` table to `grid x grid` patches."""
    dim = table.shape[-1]
    x = table.reshape(frames, _BASE_GRID, _BASE_GRID, dim).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(1, frames * grid * grid, dim)


def _resize_time(table: torch.Tensor, frames: int, grid: int, new_frames: int) -> torch.Tensor:
    """Linearly resample a `[1, frames*grid*grid, C]` table along time to `new_frames` frames."""
    dim = table.shape[-1]
    x = table.reshape(frames, grid * grid, dim).permute(1, 2, 0)  # (tokens, C, T): time is the 1-D axis
    x = F.interpolate(x, size=new_frames, mode="linear", align_corners=False)
    return x.permute(2, 0, 1).reshape(1, new_frames * grid * grid, dim)


def video_position_table(cfg: UMTConfig) -> torch.Tensor:
    """`[1, num_frames * L, C]` table added to video clips (REFERENCE §1.2.2)."""
    table = sinusoid_table(_BASE_FRAMES * _BASE_GRID**2, cfg.hidden_size)
    if cfg.grid != _BASE_GRID:
        table = _resize_grid(table, _BASE_FRAMES, cfg.grid)
    if cfg.num_frames != _BASE_FRAMES:
        table = _resize_time(table, _BASE_FRAMES, cfg.grid, cfg.num_frames)
    return table


def image_position_table(cfg: UMTConfig) -> torch.Tensor:
    """`[1, L, C]` table added to single frames (image tiles); equals frame 0 of the 224 px video table."""
    table = sinusoid_table(_BASE_GRID**2, cfg.hidden_size)
    if cfg.grid != _BASE_GRID:
        table = _resize_grid(table, 1, cfg.grid)
    return table


# ---------------------------------------------------------------------- modules
class PatchEmbed(nn.Module):
    """Tubelet-1 patch embedding; a Conv3d only so the weight keeps the checkpoint's 5-D shape."""

    def __init__(self, cfg: UMTConfig):
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv3d(cfg.in_channels, cfg.hidden_size, kernel_size=(1, p, p), stride=(1, p, p))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.proj(pixels.transpose(1, 2))  # [B, T, 3, S, S] -> [B, C, T, h, w]
        return x.flatten(2).transpose(1, 2)  # [B, T*h*w, C], t-major then row then column


class Attention(nn.Module):
    def __init__(self, cfg: UMTConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.num_heads = cfg.num_heads
        # The checkpoint stores q and v biases only; the key bias is an implicit zero.
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = (self.qkv(x) + bias).view(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, N, head_dim]
        out = sdpa(q, k, v)  # non-causal, scale head_dim^-0.5
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, cfg: UMTConfig):
        super().__init__()
        hidden = int(cfg.hidden_size * cfg.mlp_ratio)
        self.fc1 = nn.Linear(cfg.hidden_size, hidden)
        self.fc2 = nn.Linear(hidden, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class Block(nn.Module):
    def __init__(self, cfg: UMTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UMTEncoder(nn.Module):
    """`forward(pixels [B, T, 3, S, S]) -> [B, T*L, C]`; T = cfg.num_frames (video clip) or 1 (image tile)."""

    def __init__(self, cfg: UMTConfig):
        super().__init__()
        self.cfg = cfg
        self.gradient_checkpointing = False
        self.patch_embed = PatchEmbed(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_blocks))
        self.vision_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.final_norm_eps)
        # Recomputed, never loaded: the checkpoint does not hold them.
        self.register_buffer("pos_embed", video_position_table(cfg), persistent=False)
        self.register_buffer("img_pos_embed", image_position_table(cfg), persistent=False)

    def reset_buffers(self) -> None:
        self.reset_position_tables()

    def reset_position_tables(self) -> None:
        """Rebuild the tables in place (needed after constructing on the meta device and materialising)."""
        device = self.patch_embed.proj.weight.device
        self.pos_embed = video_position_table(self.cfg).to(device)
        self.img_pos_embed = image_position_table(self.cfg).to(device)

    def position_table(self, frames: int) -> torch.Tensor:
        if frames == 1:
            return self.img_pos_embed
        if frames == self.cfg.num_frames:
            return self.pos_embed
        raise ValueError(f"UMT clips must have 1 or {self.cfg.num_frames} frames, got {frames}")

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.ndim != 5:
            raise ValueError(f"expected pixels [B, T, 3, S, S], got shape {tuple(pixels.shape)}")
        x = self.patch_embed(pixels)
        x = x + self.position_table(pixels.shape[1]).to(dtype=x.dtype, device=x.device)
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.vision_layernorm(x)
