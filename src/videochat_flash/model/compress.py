"""Video-level compression: dropping visual tokens between LLM layers (REFERENCE §7).

After decoder layer ``rank_layer - 1`` the visual block ``[start, start + cur)`` of the sequence shrinks to
``keep`` tokens, chosen either uniformly (§7.2 "uniform") or by how much the prompt's query rows attend to each
visual token (§7.2 "attention"). Kept tokens stay in their original order; the text after the block moves up.

This module holds the pure, reusable pieces (index choice, scoring from given q/k, the cut itself, the stage
plan); `qwen2.py` calls them at the right layers and feeds them the next layer's q/k projections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import CompressionConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class Stage:
    """One drop: after decoder layer ``layer_idx`` keep ``keep`` of the ``cur`` visual tokens."""

    index: int  # stage number s (0-based)
    layer_idx: int  # 0-based decoder layer after which the drop happens (= rank_layer - 1)
    type: str  # "uniform" | "attention"
    cur: int
    keep: int


def plan_stages(compression: CompressionConfig | None, num_visual: int, num_layers: int) -> list[Stage]:
    """The drops to perform for ``num_visual`` visual tokens in a ``num_layers``-deep LLM.

    Counts come from the original token count at every stage (ratios are absolute, §7.1). Rank layers past the
    last decoder layer are never reached, as in the original, so they are skipped. An "attention" stage needs
    the layer after the drop point for its q/k projections, so it cannot sit at the last layer.
    """
    if compression is None or not compression.enabled or num_visual <= 0:
        return []
    stages = []
    for s, rank_layer in enumerate(compression.layers):
        if rank_layer > num_layers:
            continue
        kind = compression.stage_type(s)
        if kind == "attention" and rank_layer == num_layers:
            raise ConfigError(
                f"llm_compress_layer_list entry {rank_layer} is an 'attention' stage at the last LLM layer "
                f"({num_layers}); attention ranking needs the next layer (use a rank layer < {num_layers})"
            )
        cur, keep = compression.stage_counts(num_visual, s)
        stages.append(Stage(index=s, layer_idx=rank_layer - 1, type=kind, cur=cur, keep=keep))
    return stages


def uniform_keep_indices(cur: int, keep: int) -> torch.Tensor:
    """``keep`` evenly spread indices in ``0..cur-1``, with PyTorch's integer ``linspace`` semantics (§7.2).

    The original calls ``torch.linspace(0, cur - 1, keep, dtype=int64)``: a float64 step, the first half of
    the points counted up from the start and the second half counted down from the end, each truncated toward
    zero. A plain ``floor(k * step)`` differs at some indices (e.g. 512 -> 384), so we spell the rule out.
    """
    if keep <= 0:
        return torch.zeros(0, dtype=torch.int64)
    if keep == 1:
        return torch.zeros(1, dtype=torch.int64)
    end = float(cur - 1)
    step = end / (keep - 1)
    k = torch.arange(keep, dtype=torch.float64)
    values = torch.where(k < keep // 2, step * k, end - step * (keep - 1 - k))
    return values.trunc().to(torch.int64)


def visual_attention_scores(
    q: torch.Tensor, k: torch.Tensor, query_rows: torch.Tensor, start: int, count: int
) -> torch.Tensor:
    """How much the query rows attend to each visual token: [count] scores (§7.2 steps 3-6).

    q: [heads, L, head_dim] and k: [heads, L, head_dim] (RoPE applied, k repeated to all query heads), for a
    sequence with no cached past. Only the query rows are computed; each softmax row is independent, so this
    equals slicing the full causal attention matrix. Softmax in float32, cast back to the activation dtype,
    then mean over heads, then the visual columns, then mean over the query rows.
    """
    length = k.shape[1]
    logits = q[:, query_rows] @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # [heads, n_query, L]
    future = torch.arange(length, device=q.device)[None, :] > query_rows[:, None]  # causal mask
    logits = logits.masked_fill(future, torch.finfo(logits.dtype).min)
    weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(q.dtype)
    return weights.mean(dim=0)[:, start : start + count].mean(dim=0)


def attention_keep_indices(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` highest-scoring indices, in ascending order (the kept tokens keep their video order)."""
    return torch.topk(scores, keep).indices.sort().values


def kept_positions(length: int, start: int, count: int, keep_idx: torch.Tensor) -> torch.Tensor:
    """Indices into a length-``length`` sequence that survive dropping: text, kept visual tokens, text."""
    device = keep_idx.device
    return torch.cat(
        [
            torch.arange(start, device=device),
            keep_idx + start,
            torch.arange(start + count, length, device=device),
        ]
    )


def drop_visual_tokens(
    x: torch.Tensor, start: int, count: int, keep_idx: torch.Tensor, dim: int = 1
) -> torch.Tensor:
    """Cut the visual block ``[start, start + count)`` of ``x`` along ``dim`` down to ``keep_idx`` (relative).

    Works for hidden states [B, L, D], labels [B, L] / [L] (``dim=0``), masks, position ids alike.
    """
    idx = kept_positions(x.shape[dim], start, count, keep_idx.to(x.device))
    return x.index_select(dim, idx)


def shift_index(index: int, start: int, count: int, keep: int) -> int:
    """Where a text position ``index`` (outside the visual block) lands after the block shrinks to ``keep``."""
    if start <= index < start + count:
        raise ValueError(f"index {index} lies inside the visual block [{start}, {start + count})")
    return index - (count - keep) if index >= start + count else index


def label_query_rows(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Training query rows (§7.2 step 4): every j-1 with label[j] supervised and label[j-1] not.

    That is the token right before each supervised span, the one that "asks" for the answer.
    """
    supervised = labels != ignore_index
    starts = supervised[1:] & ~supervised[:-1]
    return torch.nonzero(starts).flatten()
