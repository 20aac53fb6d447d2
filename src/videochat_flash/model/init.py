"""Weight initialisation for models trained from scratch (no pretrained UMT or LLM to start from).

PyTorch's per-module defaults (uniform ±1/sqrt(fan_in), N(0, 1) embeddings) leave a from-scratch ViT
dominated by one shared direction: every patch of a mostly uniform frame embeds to nearly the same vector,
the residual blocks amplify it, and the LLM receives visual tokens with cosine similarity > 0.99 to each
other, from which it learns nothing (the demo model's first attempt). The GPT-2/ViT recipe used here —
N(0, 0.02) weights, zero biases, unit norms, residual output projections scaled by 1/sqrt(2·layers) —
keeps patch content and position on the same scale, so tokens of different content stay distinguishable.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .qwen2 import RMSNorm

# Output projections of residual branches (ViT blocks and Qwen2 layers): scaled down with depth.
_RESIDUAL_OUTPUTS = ("attn.proj", "mlp.fc2", "self_attn.o_proj", "mlp.down_proj")


@torch.no_grad()
def init_weights_(model: nn.Module, std: float = 0.02, seed: int | None = None) -> None:
    """Re-initialise every parameter of ``model`` in place for training from scratch."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    layers = _num_layers(model)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv3d, nn.Conv2d, nn.Embedding)):
            scale = std / math.sqrt(2 * layers) if name.endswith(_RESIDUAL_OUTPUTS) else std
            _normal_(module.weight, scale, generator)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
        elif isinstance(module, (nn.LayerNorm, RMSNorm)):
            if getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
    for name, param in model.named_parameters():
        if name.endswith(("q_bias", "v_bias")):  # UMT's separate attention biases
            param.zero_()


def _normal_(weight: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
    values = torch.randn(weight.shape, generator=generator, dtype=torch.float32) * std
    weight.copy_(values.to(device=weight.device, dtype=weight.dtype))


def _num_layers(model: nn.Module) -> int:
    """The deepest stack of residual blocks (LLM layers or ViT blocks), at least 1."""
    depths = [len(m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    return max([1, *depths])
