"""The `tome16_mlp_hd64` projector: ToMe merge on ViT features, then a 2-layer GELU MLP (REFERENCE §1.3).

Video clips merge to 16 tokens per frame (64 for a 4-frame clip), image tiles to 64 tokens. The merge runs on
the vision width, before the MLP lifts the tokens to the LLM width. Only `mlp.0` and `mlp.2` hold weights.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ProjectorConfig
from .tome import tome_merge


def clip_tokens(frames_per_clip: int, tokens_per_frame: int = 16) -> int:
    """Tokens a video clip is merged to (64 for a 4-frame clip)."""
    return tokens_per_frame * frames_per_clip


class ToMeProjector(nn.Module):
    """`forward(features [B, N, C], num_tokens) -> [B, num_tokens, D]`; each row (clip or tile) merged alone."""

    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        self.cfg = cfg
        self.mlp = nn.Sequential(
            nn.Linear(cfg.in_dim, cfg.out_dim), nn.GELU(), nn.Linear(cfg.out_dim, cfg.out_dim)
        )

    def clip_tokens(self, frames_per_clip: int) -> int:
        return clip_tokens(frames_per_clip, self.cfg.tokens_per_frame)

    def forward(self, features: torch.Tensor, num_tokens: int) -> torch.Tensor:
        return self.mlp(tome_merge(features, num_tokens, self.cfg.merge_heads))
