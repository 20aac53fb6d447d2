"""Analytical FLOPs and memory of VideoChat-Flash inference, stage by stage, for any model shape.

    est = estimate(model_config("7b-448"), frames=1024)            # a released shape, no weights needed
    est = estimate(model_config("path/to/checkpoint"), 1024, compression=CompressionConfig.published())
    print(format_estimate(est))

Stages (REFERENCE §0, §6, §7): UMT encoder per 4-frame clip -> ToMe merge to 64 tokens -> projector MLP ->
LLM prefill over ``text + 16·frames`` tokens (optionally shrinking the visual block after given layers) ->
decode, one token at a time against the per-layer KV cache.

Counting convention: FLOPs = 2 × multiply-accumulates of the matrix products — linear layers, the patch
convolution, attention's QKᵀ and AV, the ToMe similarity matrix and the attention-ranking scores. That is what
``torch.utils.flop_counter.FlopCounterMode`` reports, and the test suite checks these formulas against it on
tiny models. Not counted (all linear in the token count and small next to the matmuls): normalisation,
activations, softmax, RoPE, ToMe's weighted averaging, residual adds. Attention is counted dense (every
query against every key of the layer, as FlopCounterMode counts ``scaled_dot_product_attention`` even with
``is_causal=True``); a causal kernel (flash attention) does about half of that attention work.

Memory is an estimate, not a measurement: weights = parameter count × dtype size; KV cache per layer =
``2 · kv_heads · head_dim · tokens_cached_by_that_layer · dtype size`` (with video-level compression later
layers cache fewer tokens, §7.3); peak activations = the largest set of tensors alive at once in a fused-
attention implementation (encoder clip batch or LLM prefill MLP), see `activation_bytes`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import CompressionConfig, Qwen2Config, UMTConfig, VideoChatFlashConfig
from ..model.compress import plan_stages
from ..model.tome import merge_schedule

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# ---------------------------------------------------------------------- released shapes
def _released(hidden: int, ffn: int, heads: int, kv_heads: int, vocab: int, tower: str) -> dict:
    """config.json fields of a released checkpoint (REFERENCE §1.2, §1.4, §2) — shapes only."""
    return {
        "architectures": ["VideoChatFlashQwenForCausalLM"],
        "model_type": "videochat_flash_qwen",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": 28,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,  # lm_head.weight is stored (§1.6)
        "mm_vision_tower": tower,
        "mm_hidden_size": 1024,
        "mm_vision_select_layer": -2,
        "mm_projector_type": "tome16_mlp_hd64",
        "mm_local_num_frames": 4,
        "mm_patch_merge_type": "spatial_nopad",
        "mm_newline_position": "nothing",
        "image_aspect_ratio": "anyres_nopad",
        "mm_llm_compress": False,
        "tokenizer_model_max_length": 32768,
    }


#: The released checkpoints' shapes: 2B = Qwen2.5-1.5B + UMT-L@448, 7B = Qwen2-7B + UMT-L@224 / @448.
BUILTIN_MODELS: dict[str, dict] = {
    "2b-448": _released(1536, 8960, 12, 2, 151936, "umt-hd-large"),
    "7b-224": _released(3584, 18944, 28, 4, 152064, "umt-large"),
    "7b-448": _released(3584, 18944, 28, 4, 152064, "umt-hd-large"),
}
_ALIASES = {
    "videochat-flash-qwen2_5-2b_res448": "2b-448",
    "videochat-flash-qwen2-7b_res224": "7b-224",
    "videochat-flash-qwen2-7b_res448": "7b-448",
    "2b": "2b-448",
    "2b_res448": "2b-448",
    "7b_res224": "7b-224",
    "7b_res448": "7b-448",
}


def builtin_name(name: str) -> str | None:
    """The built-in shape a name refers to ("2b-448", "OpenGVLab/VideoChat-Flash-Qwen2-7B_res448", ...), or None."""
    key = str(name).strip().lower().rsplit("/", 1)[-1]
    if key in BUILTIN_MODELS:
        return key
    return _ALIASES.get(key)


def model_config(model: str | Path) -> tuple[str, VideoChatFlashConfig]:
    """``(name, config)`` of a built-in shape or of a checkpoint directory (only config.json is read)."""
    from ..errors import CheckpointError
    from ..model.loading import CONFIG_FILE

    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise CheckpointError(f"{path} is not a checkpoint directory: {CONFIG_FILE} is missing")
        return path.name or str(path), VideoChatFlashConfig.from_json_file(path / CONFIG_FILE)
    name = builtin_name(str(model))
    if name is None:
        raise CheckpointError(
            f"unknown model {model!r}: pass a checkpoint directory or one of {', '.join(BUILTIN_MODELS)}"
        )
    return name, VideoChatFlashConfig.from_dict(BUILTIN_MODELS[name])


# ---------------------------------------------------------------------- FLOPs per stage
def encoder_clip_flops(v: UMTConfig, frames: int | None = None) -> dict[str, int]:
    """UMT encoder on one clip of ``frames`` frames (default: the clip length): patch conv, linears, attention."""
    frames = v.num_frames if frames is None else frames
    n = frames * v.tokens_per_frame
    c = v.hidden_size
    hidden = int(c * v.mlp_ratio)
    patch = 2 * n * c * v.in_channels * v.patch_size**2
    linear = 2 * n * (3 * c * c + c * c + 2 * c * hidden) * v.num_blocks  # qkv, proj, fc1, fc2
    attention = 4 * n * n * c * v.num_blocks  # QKᵀ and AV over all heads (head_dim · heads = c)
    return {
        "tokens": n,
        "patch_embed": patch,
        "linear": linear,
        "attention": attention,
        "total": patch + linear + attention,
    }


def tome_flops(tokens: int, target: int, width: int, heads: int) -> int:
    """ToMe similarity matrices of one clip merged from ``tokens`` to ``target`` (|A|·|B|·width/heads per step)."""
    metric = width // heads
    total = 0
    for r in merge_schedule(tokens, target):
        total += 2 * ((tokens + 1) // 2) * (tokens // 2) * metric
        tokens -= min(r, tokens // 2)
    return total


def projector_flops(in_dim: int, out_dim: int, tokens: int) -> int:
    """The 2-layer MLP on ``tokens`` merged tokens."""
    return 2 * tokens * (in_dim * out_dim + out_dim * out_dim)


def llm_linear_flops(c: Qwen2Config, tokens: int) -> int:
    """q/k/v/o projections and the SwiGLU MLP of one decoder layer on ``tokens`` tokens."""
    d, q, kv = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    return 2 * tokens * (d * q + 2 * d * kv + q * d + 3 * d * c.intermediate_size)


def llm_attention_flops(c: Qwen2Config, queries: int, keys: int) -> int:
    """QKᵀ and AV of one decoder layer (dense count)."""
    return 4 * c.num_attention_heads * c.head_dim * queries * keys


@dataclass
class PrefillCost:
    """LLM prefill of one prompt: sequence length seen by every layer and the FLOPs by kind."""

    lengths: list[int]  # tokens entering each decoder layer
    linear: int
    attention: int
    ranking: int  # attention-stage scoring: next layer's q/k on the whole sequence + one query row
    lm_head: int  # logits of the last position only
    stages: list[dict] = field(default_factory=list)  # per drop: layer, type, visual before -> after

    @property
    def total(self) -> int:
        return self.linear + self.attention + self.ranking + self.lm_head

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def prefill_cost(
    c: Qwen2Config, text_tokens: int, visual_tokens: int, compression: CompressionConfig | None = None
) -> PrefillCost:
    """Prefill FLOPs of ``text_tokens + visual_tokens`` tokens, with the drops of ``compression`` if enabled."""
    stages = plan_stages(compression, visual_tokens, c.num_hidden_layers)
    by_layer = {s.layer_idx: s for s in stages}
    q_dim, kv_dim = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    length = text_tokens + visual_tokens
    lengths, linear, attention, ranking, info = [], 0, 0, 0, []
    for i in range(c.num_hidden_layers):
        lengths.append(length)
        linear += llm_linear_flops(c, length)
        attention += llm_attention_flops(c, length, length)
        stage = by_layer.get(i)
        if stage is not None:
            if stage.type == "attention":
                ranking += 2 * length * c.hidden_size * (q_dim + kv_dim)  # q_proj, k_proj of layer i + 1
                ranking += 2 * c.num_attention_heads * c.head_dim * length  # one query row against all keys
            info.append(
                {"layer": i + 1, "type": stage.type, "visual_before": stage.cur, "visual_after": stage.keep}
            )
            length -= stage.cur - stage.keep
    lm_head = 2 * c.hidden_size * c.vocab_size
    return PrefillCost(lengths, linear, attention, ranking, lm_head, info)


def decode_flops(c: Qwen2Config, cached: list[int]) -> int:
    """One decoding step when layer i already caches ``cached[i]`` tokens (the new token attends to them + itself)."""
    per_layer = sum(llm_linear_flops(c, 1) + llm_attention_flops(c, 1, n + 1) for n in cached)
    return per_layer + 2 * c.hidden_size * c.vocab_size


def decode_total_flops(c: Qwen2Config, cached: list[int], new_tokens: int) -> int:
    """``new_tokens`` decoding steps starting from per-layer cache lengths ``cached`` (closed form)."""
    if new_tokens <= 0:
        return 0
    steps = new_tokens
    linear = (llm_linear_flops(c, 1) * c.num_hidden_layers + 2 * c.hidden_size * c.vocab_size) * steps
    # step t (0-based) attends to n + t + 1 keys in a layer caching n tokens
    keys = sum(steps * (n + 1) + steps * (steps - 1) // 2 for n in cached)
    return linear + 4 * c.num_attention_heads * c.head_dim * keys


# ---------------------------------------------------------------------- memory
def param_counts(cfg: VideoChatFlashConfig) -> dict[str, int]:
    """Parameters by part, from the shapes (matches `sum(p.numel())` of the built model)."""
    v, p, c = cfg.vision, cfg.projector, cfg.llm
    w, hid = v.hidden_size, int(v.hidden_size * v.mlp_ratio)
    block = 2 * w + 3 * w * w + 2 * w + (w * w + w) + 2 * w + (w * hid + hid) + (hid * w + w)
    vision = (w * v.in_channels * v.patch_size**2 + w) + block * v.num_blocks + 2 * w
    projector = p.in_dim * p.out_dim + p.out_dim + p.out_dim * p.out_dim + p.out_dim
    d, q, kv = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    layer = (d * q + q) + 2 * (d * kv + kv) + q * d + 3 * d * c.intermediate_size + 2 * d
    embed = c.vocab_size * d
    out = {
        "vision": vision,
        "projector": projector,
        "llm_embed": embed,
        "llm_layers": layer * c.num_hidden_layers + d,
        "lm_head": 0 if c.tie_word_embeddings else embed,
    }
    out["total"] = sum(out.values())
    return out


def kv_cache_bytes(c: Qwen2Config, cached: list[int], dtype_bytes: int) -> list[int]:
    """Bytes of keys + values held by every layer for the given per-layer token counts."""
    per_token = 2 * c.num_key_value_heads * c.head_dim * dtype_bytes
    return [n * per_token for n in cached]


def activation_bytes(
    cfg: VideoChatFlashConfig, prompt_tokens: int, dtype_bytes: int, clip_batch: int = 8
) -> dict:
    """Largest transient tensors (fused attention assumed; the math path adds heads·L² scores per layer).

    * encoder: one batch of ``clip_batch`` clips — hidden, norm, qkv, attention output (6·C) and the MLP's
      hidden pre/post activation (2·4C) per token;
    * LLM prefill: residual + normed input (2·D) and gate, up and their product (3·F) per token, or in the
      attention phase q, k, v, the GQA-repeated k/v and the output (≈ 2·D + 4·q_dim + 2·kv_dim) per token.
    """
    v, c = cfg.vision, cfg.llm
    n = v.num_frames * v.tokens_per_frame
    hid = int(v.hidden_size * v.mlp_ratio)
    encoder = clip_batch * n * (6 * v.hidden_size + 2 * hid) * dtype_bytes
    encoder_scores = clip_batch * v.num_heads * n * n * dtype_bytes
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    mlp = prompt_tokens * (2 * c.hidden_size + 3 * c.intermediate_size) * dtype_bytes
    attn = prompt_tokens * (2 * c.hidden_size + 4 * q + 2 * kv) * dtype_bytes
    llm_scores = c.num_attention_heads * prompt_tokens * prompt_tokens * dtype_bytes
    return {
        "encoder": encoder,
        "llm_prefill": max(mlp, attn),
        "peak": max(encoder, mlp, attn),
        "unfused_attention_scores": max(encoder_scores, llm_scores),
    }


# ---------------------------------------------------------------------- everything together
def estimate(
    cfg: VideoChatFlashConfig,
    frames: int,
    *,
    compression: CompressionConfig | None = None,
    text_tokens: int = 64,
    new_tokens: int = 256,
    dtype: str = "bfloat16",
    clip_batch: int = 8,
    name: str = "",
) -> dict:
    """FLOPs and memory of answering one question about ``frames`` frames.

    The prefill is reported without video-level compression and with ``compression`` (default: the
    published demo setting, uniform0_attention [4, 18] [1, 0.75, 0.25]). ``frames`` is rounded up to whole
    clips (the loader repeats the last frame). ``text_tokens``: prompt tokens besides the visual block
    (system, roles, time message, question — about 60 for a short question). ``new_tokens``: answer length.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r} (choose {', '.join(DTYPE_BYTES)})")
    nbytes = DTYPE_BYTES[dtype]
    v, p, c = cfg.vision, cfg.projector, cfg.llm
    per_clip_frames = cfg.frames_per_clip
    clips = -(-frames // per_clip_frames)
    frames = clips * per_clip_frames
    clip_tokens = p.tokens_per_frame * per_clip_frames
    visual = clips * clip_tokens
    compression = compression if compression is not None else CompressionConfig.published()
    if not compression.enabled:
        compression = CompressionConfig(True, compression.type, compression.layers, compression.ratios)

    enc = encoder_clip_flops(v)
    tome = tome_flops(enc["tokens"], clip_tokens, v.hidden_size, p.merge_heads)
    proj = projector_flops(p.in_dim, p.out_dim, clip_tokens)
    plain = prefill_cost(c, text_tokens, visual)
    squeezed = prefill_cost(c, text_tokens, visual, compression)
    decode_plain = decode_flops(c, plain.lengths)
    # A layer caches what it processed (§7.3): its prefill input length.
    decode_squeezed = decode_flops(c, squeezed.lengths)
    gen_plain = decode_total_flops(c, plain.lengths, new_tokens)
    gen_squeezed = decode_total_flops(c, squeezed.lengths, new_tokens)
    vision_total = clips * (enc["total"] + tome + proj)

    weights = {k: n * nbytes for k, n in param_counts(cfg).items()}
    kv_plain = kv_cache_bytes(c, [n + new_tokens for n in plain.lengths], nbytes)
    kv_squeezed = kv_cache_bytes(c, [n + new_tokens for n in squeezed.lengths], nbytes)
    acts = activation_bytes(cfg, text_tokens + visual, nbytes, clip_batch)
    visual_bytes = visual * c.hidden_size * nbytes
    notes = []
    limit = cfg.tokenizer_model_max_length
    if limit and text_tokens + visual > limit:
        notes.append(
            f"prompt of {text_tokens + visual} tokens exceeds tokenizer_model_max_length {limit}: the chat path "
            f"truncates it (about {max(0, (limit - text_tokens) // p.tokens_per_frame)} frames fit)"
        )
    if text_tokens + visual > c.max_position_embeddings and not c.rope_scaling:
        notes.append(
            f"beyond max_position_embeddings {c.max_position_embeddings}: NIAH runs this with YaRN (§10)"
        )
    return {
        "model": name,
        "frames": frames,
        "clips": clips,
        "dtype": dtype,
        "image_size": v.image_size,
        "tokens": {
            "encoder_per_clip": enc["tokens"],
            "visual": visual,
            "text": text_tokens,
            "prompt": text_tokens + visual,
            "per_frame_encoder": v.tokens_per_frame,
            "per_frame_llm": p.tokens_per_frame,
        },
        "compression": {
            "type": compression.type,
            "layers": list(compression.layers),
            "ratios": list(compression.ratios),
        },
        "flops": {
            "encoder_per_clip": enc,
            "tome_per_clip": tome,
            "projector_per_clip": proj,
            "vision_total": vision_total,
            "prefill": plain.to_dict(),
            "prefill_compressed": squeezed.to_dict(),
            "decode_first_token": decode_plain,
            "decode_first_token_compressed": decode_squeezed,
            "decode_total": gen_plain,
            "decode_total_compressed": gen_squeezed,
            "new_tokens": new_tokens,
            "total": vision_total + plain.total + gen_plain,
            "total_compressed": vision_total + squeezed.total + gen_squeezed,
        },
        "memory": {
            "weights": weights,
            "visual_tokens": visual_bytes,
            "kv_cache": {"per_layer": kv_plain, "total": sum(kv_plain)},
            "kv_cache_compressed": {"per_layer": kv_squeezed, "total": sum(kv_squeezed)},
            "activations": acts,
            "peak": weights["total"] + visual_bytes + sum(kv_plain) + acts["peak"],
            "peak_compressed": weights["total"] + visual_bytes + sum(kv_squeezed) + acts["peak"],
        },
        "notes": notes,
    }


# ---------------------------------------------------------------------- text output
def human(n: float, unit: str = "") -> str:
    """1.23 T / 456 G style numbers (decimal prefixes for FLOPs)."""
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {prefix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def gib(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB"


def format_estimate(est: dict) -> str:
    f, m, t = est["flops"], est["memory"], est["tokens"]
    comp = est["compression"]
    setting = f"{comp['type']} layers={comp['layers']} ratios={comp['ratios']}"
    enc = f["encoder_per_clip"]
    rows = [
        f"model {est['model'] or '?'} @ {est['image_size']} px, {est['frames']} frames ({est['clips']} clips), "
        f"{est['dtype']}",
        f"tokens: {t['per_frame_encoder']} patches/frame in the encoder -> {t['per_frame_llm']}/frame in the LLM; "
        f"prompt = {t['text']} text + {t['visual']} visual = {t['prompt']}",
        "",
        "FLOPs (2 x MACs of matrix products; attention counted dense)",
        f"  encoder per clip      {human(enc['total'], 'FLOP'):>14}  (patch {human(enc['patch_embed'])}, "
        f"linear {human(enc['linear'])}, attention {human(enc['attention'])})",
        f"  ToMe per clip         {human(f['tome_per_clip'], 'FLOP'):>14}",
        f"  projector per clip    {human(f['projector_per_clip'], 'FLOP'):>14}",
        f"  vision, all clips     {human(f['vision_total'], 'FLOP'):>14}",
        f"  LLM prefill           {human(f['prefill']['total'], 'FLOP'):>14}  (no video-level compression)",
        f"  LLM prefill, compr.   {human(f['prefill_compressed']['total'], 'FLOP'):>14}  ({setting})",
    ]
    for s in f["prefill_compressed"]["stages"]:
        rows.append(
            f"      after layer {s['layer']:>2} ({s['type']}): {s['visual_before']} -> {s['visual_after']} visual tokens"
        )
    rows += [
        f"  decode, first token   {human(f['decode_first_token'], 'FLOP'):>14}  "
        f"(compressed: {human(f['decode_first_token_compressed'], 'FLOP')})",
        f"  decode, {f['new_tokens']} tokens    {human(f['decode_total'], 'FLOP'):>14}  "
        f"(compressed: {human(f['decode_total_compressed'], 'FLOP')})",
        f"  total                 {human(f['total'], 'FLOP'):>14}  (compressed: {human(f['total_compressed'], 'FLOP')})",
        "",
        "memory (estimate)",
        f"  weights               {gib(m['weights']['total']):>14}  (vision {gib(m['weights']['vision'])}, "
        f"LLM {gib(m['weights']['llm_embed'] + m['weights']['llm_layers'] + m['weights']['lm_head'])})",
        f"  visual tokens         {gib(m['visual_tokens']):>14}",
        f"  KV cache              {gib(m['kv_cache']['total']):>14}  (compressed: {gib(m['kv_cache_compressed']['total'])})",
        f"  peak activations      {gib(m['activations']['peak']):>14}  (fused attention; unfused scores add "
        f"{gib(m['activations']['unfused_attention_scores'])})",
        f"  peak total            {gib(m['peak']):>14}  (compressed: {gib(m['peak_compressed'])})",
    ]
    rows += [f"note: {n}" for n in est["notes"]]
    return "\n".join(rows)


def to_json(est: dict) -> str:
    return json.dumps(est, indent=2)
