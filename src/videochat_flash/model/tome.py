"""Token merging (ToMe): size-weighted bipartite soft matching that shrinks each clip to a fixed token count.

Each step splits the tokens alternately into A (even positions) and B (odd positions), pairs every A token
with its most similar B token, and folds the r best-matched A tokens into their partners as size-weighted
averages. Steps halve the count until one last partial step lands exactly on the target. REFERENCE §6.
"""

from __future__ import annotations

import torch


def merge_schedule(num_tokens: int, target: int) -> list[int]:
    """Tokens removed per step: halve while that does not overshoot, then remove the rest (§6.1).

    784 -> 64 gives [392, 196, 98, 34]. The original asserts num_tokens > target; equal counts return []
    (nothing to merge), which lets tiny models whose clips already have the target size run.
    """
    if target < 1 or num_tokens < target:
        raise ValueError(f"cannot merge {num_tokens} tokens down to {target}")
    schedule = []
    while num_tokens > target:
        half = num_tokens // 2
        r = min(half, num_tokens - target)
        schedule.append(r)
        num_tokens -= r
    return schedule


@torch.no_grad()
def _match(x: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every A token: its most similar B token (`node_idx`), and A sorted by that similarity (`edge_idx`)."""
    b, p, c = x.shape
    # Similarity metric: the per-token mean of the head-sized channel groups, L2-normalised (no epsilon).
    metric = x.view(b, p, num_heads, c // num_heads).mean(dim=2)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(-1, -2)  # [b, |A|, |B|] cosine similarities
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)
    return node_idx, edge_idx


def bipartite_merge(
    x: torch.Tensor, size: torch.Tensor | None, r: int, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One merge step on `x [b, p, c]` with token sizes `size [b, p, 1]` (None = all ones).

    Returns `(x [b, p - r, c], size [b, p - r, 1], node_idx [b, |A|], edge_idx [b, |A|])`. Output order:
    the unmerged A tokens in descending-similarity order, then all B tokens in their original order.
    The matching is discrete (no gradient); the weighted average is differentiable in x.
    """
    b, p, c = x.shape
    if size is None:
        size = torch.ones(b, p, 1, dtype=x.dtype, device=x.device)
    r = min(r, p // 2)
    node_idx, edge_idx = _match(x, num_heads)
    # Sum size-weighted features and sizes together (one gather/scatter), divide at the end.
    merged = _sum_merged(torch.cat([x * size, size], dim=-1), node_idx, edge_idx, r)
    size = merged[..., c:]
    return merged[..., :c] / size, size, node_idx, edge_idx


def _sum_merged(values: torch.Tensor, node_idx: torch.Tensor, edge_idx: torch.Tensor, r: int) -> torch.Tensor:
    """One merge step on `values [b, p, k]`: the r best-matched A tokens (even positions) are added into their B
    partners; the unmerged A tokens (descending similarity) come first, then all B tokens in order."""
    width = values.shape[-1]
    a, dst = values[:, ::2], values[:, 1::2]
    unm_idx, src_idx = edge_idx[:, r:, None], edge_idx[:, :r, None]
    unmerged = a.gather(1, unm_idx.expand(-1, -1, width))
    src = a.gather(1, src_idx.expand(-1, -1, width))
    dst_idx = node_idx[:, :, None].gather(1, src_idx)
    return torch.cat([unmerged, dst.scatter_add(1, dst_idx.expand(-1, -1, width), src)], dim=1)


def tome_merge(x: torch.Tensor, target: int, num_heads: int, return_trace: bool = False):
    """Merge `x [b, p, c]` down to `[b, target, c]`, every row independently.

    With `return_trace=True` also returns `[(node_idx, edge_idx), ...]`, one pair per step.
    """
    size = None
    trace = []
    for r in merge_schedule(x.shape[1], target):
        x, size, node_idx, edge_idx = bipartite_merge(x, size, r, num_heads)
        trace.append((node_idx, edge_idx))
    return (x, trace) if return_trace else x


def replay_merges(values: torch.Tensor, trace: list, num_tokens: int, target: int) -> torch.Tensor:
    """Apply a `tome_merge` trace (made on `[b, num_tokens, c]` features) to other per-token `values [b, num_tokens,
    k]`, summing what merges: e.g. one-hot patch labels become per-token label counts, which tell how pure each
    merged token is (the demo's connector distillation labels merged tokens this way)."""
    for r, (node_idx, edge_idx) in zip(merge_schedule(num_tokens, target), trace, strict=True):
        values = _sum_merged(values, node_idx, edge_idx, min(r, values.shape[1] // 2))
    return values
