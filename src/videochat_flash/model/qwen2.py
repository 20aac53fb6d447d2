"""The Qwen2 decoder-only LLM, with video-level compression (visual-token dropping) built into prefill.

Parameter names equal transformers' ``Qwen2ForCausalLM`` so checkpoints load key for key (REFERENCE §1.4):
GQA attention with q/k/v biases, rotate-half RoPE (`rope.py`), RMSNorm with a float32 variance, SwiGLU MLP.

Three entry points:
* `prefill` — one prompt (batch 1) into a `KVCache`; drops visual tokens after the configured layers
  (`compress.py`, §7) and returns the last position's logits plus a trace of what happened.
* `decode` — one token; every layer uses its own cache length as position (§7.4).
* `forward` — training: a right-padded batch, no cache, optional label-aware compression, shifted CE loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import CompressionConfig, Qwen2Config
from . import compress
from .attention import sdpa
from .kv_cache import KVCache
from .rope import RotaryEmbedding, apply_rope

IGNORE_INDEX = -100


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Variance in float32, normalised value cast back before the weight multiply (as HF does).
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=True)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, n, self.head_dim).transpose(1, 2)  # [B, n, T, head_dim]

    def query_key(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE'd q [B, H, T, hd] and k repeated to all H query heads (used by attention ranking)."""
        q = apply_rope(self._heads(self.q_proj(x), self.n_heads), cos, sin)
        k = apply_rope(self._heads(self.k_proj(x), self.n_kv), cos, sin)
        return q, repeat_kv(k, self.n_heads // self.n_kv)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
    ) -> torch.Tensor:
        b, t, _ = x.shape
        q = apply_rope(self._heads(self.q_proj(x), self.n_heads), cos, sin)
        k = apply_rope(self._heads(self.k_proj(x), self.n_kv), cos, sin)
        v = self._heads(self.v_proj(x), self.n_kv)
        past = 0
        if cache is not None:
            past = cache.lengths[layer_idx]
            k, v = cache.append(layer_idx, k, v)
        groups = self.n_heads // self.n_kv
        if mask is None and t == 1:
            # One new token sees the whole cache (no mask): fold each KV head's query group into the query
            # axis, so the cache is read in place instead of being copied `groups` times per step.
            out = sdpa(q.view(b, self.n_kv, groups, self.head_dim), k, v, decode=True)
            return self.o_proj(out.reshape(b, 1, -1))
        k, v = repeat_kv(k, groups), repeat_kv(v, groups)
        if mask is not None:
            out = sdpa(q, k, v, attn_mask=mask)
        elif past == 0:
            out = sdpa(q, k, v, is_causal=True)
        else:  # a chunk after cached tokens: causal with an offset (is_causal aligns top-left, wrong here)
            out = sdpa(q, k, v, attn_mask=causal_mask(t, past, x.device))
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[B, kv, T, hd] -> [B, kv·groups, T, hd]; query head h uses kv head h // groups."""
    if groups == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


def causal_mask(t: int, past: int, device: torch.device) -> torch.Tensor:
    """Bool [t, past + t]: query i (absolute past + i) may see keys 0..past + i."""
    return torch.arange(past + t, device=device)[None, :] <= (torch.arange(t, device=device)[:, None] + past)


class MLP(nn.Module):
    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask=None, cache=None, layer_idx=0):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer_idx)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    """The decoder stack (checkpoint prefix ``model.``)."""

    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


# ---------------------------------------------------------------------- traces
@dataclass
class LayerTrace:
    """What decoder layer ``layer`` received: sequence length and its first/last position id."""

    layer: int
    seq_len: int
    pos_first: int
    pos_last: int


@dataclass
class StageTrace:
    """One drop. ``kept_rel`` indexes the visual block as it was before this stage, ``kept_orig`` the
    original 0..N-1 visual tokens. ``scores`` is the per-token attention score (attention stages only)."""

    index: int
    layer_idx: int
    type: str
    cur: int
    keep: int
    kept_rel: torch.Tensor
    kept_orig: torch.Tensor
    scores: torch.Tensor | None = None


@dataclass
class PrefillTrace:
    layers: list[LayerTrace] = field(default_factory=list)
    stages: list[StageTrace] = field(default_factory=list)


@dataclass
class PrefillResult:
    logits: torch.Tensor  # [V] float32, at the last position
    trace: PrefillTrace
    # With output_hidden_states: HF convention, [i] = input of layer i (after any preceding drop), the last
    # entry = output of the final norm; each [1, L_i, D].
    hidden_states: list[torch.Tensor] | None = None


@dataclass
class _Visual:
    """The visual block while it shrinks: where it starts, how long it is, which original tokens remain."""

    start: int
    count: int
    orig: torch.Tensor  # original indices of the remaining visual tokens


# ---------------------------------------------------------------------- the model
class Qwen2ForCausalLM(nn.Module):
    def __init__(self, cfg: Qwen2Config):
        super().__init__()
        self.cfg = cfg
        self.model = Qwen2Model(cfg)
        # Tied: the output projection *is* the embedding matrix; no separate `lm_head.weight` exists.
        self.lm_head = (
            None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        )
        self.rope = RotaryEmbedding(cfg)
        self.gradient_checkpointing = False

    @property
    def num_layers(self) -> int:
        return self.cfg.num_hidden_layers

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(ids)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, weight)

    def new_cache(self, reserve: int = 256) -> KVCache:
        return KVCache(self.num_layers, reserve=reserve)

    def _rope(self, start: int, length: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rope(torch.arange(start, start + length, device=like.device), like.dtype)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def prefill(
        self,
        inputs_embeds: torch.Tensor,
        cache: KVCache,
        *,
        visual: tuple[int, int] | None = None,
        compression: CompressionConfig | None = None,
        query_index: int | None = None,
        output_hidden_states: bool = False,
    ) -> PrefillResult:
        """Run the prompt [1, L, D] through all layers, filling ``cache``; logits of the last position.

        ``visual`` = (start, N) of the visual block. With ``compression`` enabled the block shrinks after the
        configured layers; ``query_index`` (default L-1, the last prompt token) is the row whose attention ranks
        visual tokens. Positions are renumbered 0..len-1 after each drop; each layer caches what it processed.
        """
        x = inputs_embeds
        if x.dim() != 3 or x.shape[0] != 1:
            raise ValueError(f"prefill takes one prompt [1, L, D], got shape {tuple(x.shape)}")
        length = x.shape[1]
        stages = self._stages(visual, compression, length)
        if stages and any(cache.lengths):
            raise ValueError("compression needs an empty cache (the prompt must be prefilled in one piece)")
        vis = None
        if stages:
            vis = _Visual(visual[0], visual[1], torch.arange(visual[1], device=x.device))
        query = length - 1 if query_index is None else query_index % length
        if vis is not None and vis.start <= query < vis.start + vis.count:
            raise ValueError(
                f"query_index {query} lies inside the visual block {visual}; it must be a text token"
            )
        by_layer = {s.layer_idx: s for s in stages}
        trace = PrefillTrace()
        hidden = [] if output_hidden_states else None

        for i, layer in enumerate(self.model.layers):
            start = cache.lengths[i]  # renumbered after drops: a layer's positions continue its own cache
            cos, sin = self._rope(start, x.shape[1], x)
            trace.layers.append(LayerTrace(i, x.shape[1], start, start + x.shape[1] - 1))
            if hidden is not None:
                hidden.append(x)
            x = layer(x, cos, sin, cache=cache, layer_idx=i)
            if i in by_layer:
                rows = torch.tensor([query], device=x.device)
                x, vis, step = self._drop(x, by_layer[i], vis, rows, cos, sin)
                trace.stages.append(step)
                query = compress.shift_index(query, vis.start, step.cur, step.keep)
        x = self.model.norm(x)
        if hidden is not None:
            hidden.append(x)
        return PrefillResult(self.logits(x[0, -1]).float(), trace, hidden)

    @torch.no_grad()
    def decode(
        self, token: int | torch.Tensor, cache: KVCache, *, positions: list[int] | None = None
    ) -> torch.Tensor:
        """One step: a token id (int / 0-d / [1] / [1, 1] tensor) or an embedding [1, 1, D]; logits [V] float32.

        Each layer's position is its own cache length: after compression later layers hold fewer tokens, so
        this equals the uncompressed position decremented at every compress layer (§7.4). If ``positions`` is
        given, the position used by each layer is appended to it (for tests / debugging).
        """
        if isinstance(token, int) or (torch.is_tensor(token) and not token.is_floating_point()):
            ids = torch.as_tensor(token, device=self.model.embed_tokens.weight.device).reshape(1, 1)
            x = self.embed(ids)
        else:
            x = token.reshape(1, 1, -1)
        rope = (-1, None, None)
        for i, layer in enumerate(self.model.layers):
            pos = cache.lengths[i]
            if positions is not None:
                positions.append(pos)
            if pos != rope[0]:  # layers share a position until a compress layer; skip the tiny kernels
                rope = (pos, *self._rope(pos, 1, x))
            x = layer(x, rope[1], rope[2], cache=cache, layer_idx=i)
        return self.logits(self.model.norm(x)[0, -1]).float()

    # ------------------------------------------------------------------ training
    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        visual: list[tuple[int, int] | None] | None = None,
        compression: CompressionConfig | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Full-sequence forward without cache: (logits [B, L', V], loss or None, labels after drops).

        ``attention_mask`` [B, L] bool marks real tokens (right padding only). With ``compression`` each
        sample's visual block is cut on its own (query rows = the token before each supervised span, or the
        last real token without labels); the batch is then re-padded to its longest sample and positions are
        0..len-1 again. Logits are in the activation dtype; the loss is a float32 mean CE over labels != -100.
        """
        x = inputs_embeds
        bsz, length, _ = x.shape
        mask = attention_mask.bool() if attention_mask is not None else None
        stages = [[] for _ in range(bsz)]
        if compression is not None and compression.enabled and visual is not None:
            stages = [self._stages(v, compression, length) for v in visual]
        drop_layers = {s.layer_idx for per_sample in stages for s in per_sample}
        vis = [
            _Visual(v[0], v[1], torch.arange(v[1], device=x.device)) if st else None
            for v, st in zip(visual or [None] * bsz, stages, strict=True)
        ]

        for i, layer in enumerate(self.model.layers):
            cos, sin = self._rope(0, x.shape[1], x)
            # Right padding (what batches hold): under the causal mask alone no real token sees a pad, so
            # SDPA's causal kernel serves without a [B, 1, L, L] mask; only pad rows differ, and nothing
            # reads them (`benchmarks/bench_padded_attention.py`).
            attn_mask = None if mask is None or is_right_padded(mask) else padded_causal_mask(mask)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, attn_mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, attn_mask)
            if i in drop_layers:
                x, mask, labels, vis = self._drop_batch(x, i, stages, vis, mask, labels, cos, sin)

        logits = self.logits(self.model.norm(x))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX
            )
        return logits, loss, labels

    # ------------------------------------------------------------------ compression
    def _stages(self, visual, compression, length) -> list[compress.Stage]:
        if visual is None or compression is None or not compression.enabled:
            return []
        start, count = visual
        if start < 0 or start + count > length:
            raise ValueError(f"visual block ({start}, {count}) does not fit a sequence of length {length}")
        return compress.plan_stages(compression, count, self.num_layers)

    def _rank_visual(self, x, layer_idx, vis: _Visual, cur, keep, rows, cos, sin):
        """Scores + kept indices of an "attention" stage, using the NEXT layer's norm and q/k (§7.2)."""
        nxt = self.model.layers[layer_idx + 1]
        with torch.no_grad():
            q, k = nxt.self_attn.query_key(nxt.input_layernorm(x.detach()), cos, sin)
            scores = compress.visual_attention_scores(q[0], k[0], rows, vis.start, cur)
        return scores, compress.attention_keep_indices(scores, keep)

    def _drop(self, x, stage: compress.Stage, vis: _Visual, rows, cos, sin):
        """Cut one sample's visual block [1, L, D] -> [1, L', D]; returns (x, new visual state, trace)."""
        if vis.count != stage.cur:
            raise ValueError(
                f"stage {stage.index} expects {stage.cur} visual tokens, the block has {vis.count}"
            )
        scores = None
        if stage.type == "uniform":
            keep_idx = compress.uniform_keep_indices(stage.cur, stage.keep).to(x.device)
        else:
            scores, keep_idx = self._rank_visual(
                x, stage.layer_idx, vis, stage.cur, stage.keep, rows, cos, sin
            )
        x = compress.drop_visual_tokens(x, vis.start, stage.cur, keep_idx)
        orig = vis.orig[keep_idx]
        step = StageTrace(
            stage.index, stage.layer_idx, stage.type, stage.cur, stage.keep, keep_idx, orig, scores
        )
        return x, _Visual(vis.start, stage.keep, orig), step

    def _drop_batch(self, x, layer_idx, stages, vis, mask, labels, cos, sin):
        """Per-sample drops after ``layer_idx``, then right-pad the batch again (training forward)."""
        rows_x, rows_labels, lengths, new_vis = [], [], [], []
        for b in range(x.shape[0]):
            n = int(mask[b].sum()) if mask is not None else x.shape[1]
            xb = x[b : b + 1, :n]
            lb = labels[b, :n] if labels is not None else None
            vb = vis[b]
            stage = next((s for s in stages[b] if s.layer_idx == layer_idx), None) if vb is not None else None
            if stage is not None:
                rows = (
                    compress.label_query_rows(lb)
                    if lb is not None
                    else torch.tensor([n - 1], device=x.device)
                )
                if stage.type == "attention" and len(rows) == 0:
                    # Nothing supervised to rank by: the original leaves the sample unchanged; we also skip its
                    # later stages (their counts would no longer match the block).
                    vb = None
                else:
                    xb, vb, step = self._drop(xb, stage, vb, rows, cos[:n], sin[:n])
                    if lb is not None:
                        lb = compress.drop_visual_tokens(lb, vb.start, step.cur, step.kept_rel, dim=0)
            rows_x.append(xb[0])
            rows_labels.append(lb)
            lengths.append(xb.shape[1])
            new_vis.append(vb)
        width = max(lengths)
        out = x.new_zeros(x.shape[0], width, x.shape[2])
        new_mask = torch.zeros(x.shape[0], width, dtype=torch.bool, device=x.device)
        new_labels = None if labels is None else labels.new_full((x.shape[0], width), IGNORE_INDEX)
        for b, n in enumerate(lengths):
            out[b, :n] = rows_x[b]
            new_mask[b, :n] = True
            if new_labels is not None:
                new_labels[b, :n] = rows_labels[b]
        return out, new_mask, new_labels, new_vis


def is_right_padded(mask: torch.Tensor) -> bool:
    """Whether each row of a [B, L] bool mask of real tokens is real tokens, then padding (none after a pad)."""
    return not bool((mask[:, 1:] & ~mask[:, :-1]).any())


def padded_causal_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bool [B, 1, L, L]: causal and only real (non-padding) keys; padded query rows still see key 0."""
    length = mask.shape[1]
    causal = causal_mask(length, 0, mask.device)
    return (causal[None] & mask[:, None, :])[:, None]
