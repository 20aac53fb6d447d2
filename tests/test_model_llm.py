"""Qwen2 LLM: golden parity with the original (fixture cases A, B, C), transformers parity, invariants.

Tolerances: float32 tensors of the fixtures are compared at |Δ| <= 1e-4 absolute (values are O(1); observed
~2e-6). Discrete results (kept indices, generated ids) must match exactly. transformers parity is checked at
1e-4 (observed 0.0: same operations in the same order).
"""

from __future__ import annotations

import json
from functools import cache

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REFERENCE, require_fixtures
from videochat_flash.config import CompressionConfig, Qwen2Config, VideoChatFlashConfig
from videochat_flash.errors import ConfigError
from videochat_flash.inference.generate import GenerationConfig, generate
from videochat_flash.model import compress
from videochat_flash.model.kv_cache import KVCache
from videochat_flash.model.qwen2 import Qwen2ForCausalLM, is_right_padded

CASES = ["case_a_res224_nocompress", "case_b_res448_compress", "case_c_image"]
ATOL = 1e-4


# ---------------------------------------------------------------------- helpers
def llm_keys(state: dict) -> dict:
    """The LLM part of a full VideoChat-Flash state dict (HF key names)."""
    return {
        k: v
        for k, v in state.items()
        if (k.startswith("model.") and not k.startswith(("model.vision_tower.", "model.mm_projector.")))
        or k.startswith("lm_head.")
    }


@cache
def load_case(name: str):
    case = require_fixtures(REFERENCE / name)
    config = VideoChatFlashConfig.from_json_file(case / "config.json")
    llm = Qwen2ForCausalLM(config.llm).eval()
    llm.load_state_dict(llm_keys(load_file(str(case / "model.safetensors"))), strict=True)
    golden = load_file(str(case / "golden.safetensors"))
    info = json.loads((case / "golden.json").read_text())
    start, end = info["sequence"]["visual_block"]
    return config, llm, golden, info, (start, end - start)


def layer_rows(trace) -> list[tuple[int, int, int]]:
    return [(t.seq_len, t.pos_first, t.pos_last) for t in trace.layers]


def golden_rows(per_layer) -> list[tuple[int, int, int]]:
    return [(r["seq_len"], r["pos_first"], r["pos_last"]) for r in per_layer]


def tiny_config(**overrides) -> Qwen2Config:
    base = dict(
        vocab_size=96,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10000.0,
        max_position_embeddings=512,
    )
    base.update(overrides)
    return Qwen2Config(**base)


def random_llm(cfg: Qwen2Config, seed: int = 0) -> Qwen2ForCausalLM:
    """O(1) activations everywhere (default inits are too small to reveal mistakes)."""
    torch.manual_seed(seed)
    llm = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in llm.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.dim() == 1:
                p.copy_(0.05 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.normal_()
            else:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
    return llm


# ---------------------------------------------------------------------- golden parity
@pytest.mark.parametrize("name", CASES)
def test_prefill_matches_reference(name):
    config, llm, golden, info, visual = load_case(name)
    res = llm.prefill(
        golden["inputs_embeds"],
        llm.new_cache(),
        visual=visual,
        compression=config.compression,
        output_hidden_states=True,
    )
    assert (res.logits - golden["prefill_last_logits"]).abs().max() <= ATOL
    last_rows = torch.stack([h[0, -1] for h in res.hidden_states])
    assert (last_rows - golden["prefill_hidden_last_pos"]).abs().max() <= ATOL
    assert layer_rows(res.trace) == golden_rows(info["prefill"]["per_layer"])
    assert layer_rows(res.trace) == golden_rows(info["generation"]["prefill_layers"])
    # A and C carry compression keys with mm_llm_compress false: nothing may be dropped.
    assert len(res.trace.stages) == len(info["compression"]["stages"])


def test_case_b_compression_matches_reference():
    config, llm, golden, info, visual = load_case("case_b_res448_compress")
    assert config.compression.enabled
    res = llm.prefill(
        golden["inputs_embeds"],
        llm.new_cache(),
        visual=visual,
        compression=config.compression,
        output_hidden_states=True,
    )
    for i, h in enumerate(res.hidden_states):
        want = golden[f"prefill_hidden_states_{i}"]
        assert h.shape[1:] == want.shape
        assert (h[0] - want).abs().max() <= ATOL, i
    for stage, want in zip(res.trace.stages, info["compression"]["stages"], strict=True):
        assert (stage.type, stage.layer_idx, stage.cur, stage.keep) == (
            want["type"],
            want["after_decoder_layer_index"],
            want["visual_tokens_in"],
            want["visual_tokens_kept"],
        )
        assert torch.equal(stage.kept_rel, golden[f"compress_stage{stage.index}_kept_rel"])
        assert torch.equal(stage.kept_orig, golden[f"compress_stage{stage.index}_kept_orig"])
    scores = res.trace.stages[1].scores
    # The score gap at the top-k cut is 2.8e-6, so scores must be much closer than that (observed ~2e-9).
    assert (scores - golden["compress_stage1_attn_scores"]).abs().max() <= 1e-7
    assert res.trace.stages[0].scores is None


@pytest.mark.parametrize("name", CASES)
def test_generation_matches_reference(name):
    config, llm, golden, info, visual = load_case(name)
    gen = info["generation"]
    cfg = GenerationConfig(max_new_tokens=8, eos_token_ids=(config.eos_token_id,))
    out = generate(
        llm, golden["inputs_embeds"], cfg, visual=visual, compression=config.compression, keep_logits=True
    )
    assert out.token_ids == golden["generated_ids"].tolist() == gen["generated_ids"]
    assert out.stop_reason == gen["stop_reason"] == "max_new_tokens"
    assert (out.step_logits - golden["generate_step_logits"]).abs().max() <= ATOL

    # Step by step: the position every layer uses and the cache lengths it sees (§7.4).
    cache = llm.new_cache(reserve=8)
    llm.prefill(golden["inputs_embeds"], cache, visual=visual, compression=config.compression)
    for step, token in enumerate(out.token_ids[:-1]):
        assert cache.lengths == gen["decode_cache_len_before_per_layer"][step]
        positions: list[int] = []
        llm.decode(token, cache, positions=positions)
        assert positions == gen["decode_position_ids_per_layer"][step]
    assert cache.lengths == gen["final_cache_len_per_layer"]


# ---------------------------------------------------------------------- transformers parity
def hf_pair(tie: bool = False, rope_scaling: dict | None = None, seed: int = 0):
    transformers = pytest.importorskip("transformers")
    cfg = tiny_config(tie_word_embeddings=tie, rope_scaling=rope_scaling)
    ours = random_llm(cfg, seed)
    hf_cfg = transformers.Qwen2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=tie,
        rope_scaling=None if rope_scaling is None else dict(rope_scaling),
        attn_implementation="sdpa",
    )
    hf = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    state = {hf_key: v for hf_key, v in ours.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if tie else set())
    if tie:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    return ours, hf


YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}
# The NIAH edit (§10): factor 4 with original_max_position_embeddings == max_position_embeddings.
YARN_NIAH = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}
YARN_FULL = {
    "type": "yarn",
    "factor": 8.0,
    "original_max_position_embeddings": 64,
    "beta_fast": 16,
    "beta_slow": 2,
    "mscale": 1.0,
    "mscale_all_dim": 0.5,
}


@pytest.mark.parametrize(
    "tie,scaling",
    [(False, None), (True, None), (False, YARN), (False, YARN_NIAH), (False, YARN_FULL)],
    ids=["plain", "tied", "yarn", "yarn-niah", "yarn-mscale"],
)
def test_logits_match_transformers(tie, scaling):
    ours, hf = hf_pair(tie, scaling)
    assert ("lm_head.weight" in ours.state_dict()) is not tie
    ids = torch.randint(0, 96, (1, 200), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits[0]
    got, _, _ = ours(ours.embed(ids))
    assert (got[0] - want).abs().max() <= ATOL
    if scaling is not None:  # YaRN really is active (positions past the original context differ)
        plain = Qwen2ForCausalLM(tiny_config(tie_word_embeddings=tie)).eval()
        plain.load_state_dict(ours.state_dict())
        assert (plain(ours.embed(ids))[0][0] - want).abs().max() > 1e-2


def test_ignore_rope_scaling_gives_plain_rope():
    yarn = tiny_config(rope_scaling=YARN, ignore_rope_scaling=True)
    ours = random_llm(yarn)
    plain = Qwen2ForCausalLM(tiny_config()).eval()
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(1, 150, 64)
    assert torch.equal(ours(x)[0], plain(x)[0])


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_greedy_with_cache_matches_transformers(tie):
    ours, hf = hf_pair(tie, YARN if not tie else None, seed=3)
    ids = torch.randint(0, 96, (1, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = hf.generate(
            ids,
            max_new_tokens=16,
            min_new_tokens=16,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )[0, ids.shape[1] :].tolist()
    got = generate(ours, ours.embed(ids), GenerationConfig(max_new_tokens=16)).token_ids
    assert got == want and len(got) == 16


def test_training_loss_matches_transformers_with_padding():
    ours, hf = hf_pair()
    ids = torch.randint(0, 96, (2, 30), generator=torch.Generator().manual_seed(4))
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 21:] = False  # right padding
    labels = ids.clone()
    labels[:, :8] = -100
    labels[~mask] = -100
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask.long(), labels=labels)
    logits, loss, out_labels = ours(ours.embed(ids), attention_mask=mask, labels=labels)
    assert torch.equal(out_labels, labels)
    assert (logits[mask] - want.logits[mask]).abs().max() <= ATOL
    assert abs(loss.item() - want.loss.item()) <= 1e-5


def test_right_padded_batch_gives_each_sample_its_unpadded_logits():
    """`forward` runs right-padded batches on SDPA's causal kernel, without a padding mask: real tokens must
    still get exactly what they get alone."""
    llm = random_llm(tiny_config())
    x = torch.randn(3, 24, 64, generator=torch.Generator().manual_seed(5))
    lengths = (24, 17, 9)
    mask = torch.arange(24)[None] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        batched, _, _ = llm(x, attention_mask=mask)
        for b, n in enumerate(lengths):
            alone, _, _ = llm(x[b : b + 1, :n])
            assert (batched[b, :n] - alone[0]).abs().max() <= 1e-5, b


def test_is_right_padded():
    assert is_right_padded(torch.tensor([[True, True, False], [True, False, False]]))
    assert is_right_padded(torch.ones(2, 4, dtype=torch.bool))
    assert not is_right_padded(torch.tensor([[False, True, True]]))  # left padding: the full mask is built
    assert not is_right_padded(torch.tensor([[True, False, True]]))


# ---------------------------------------------------------------------- invariants
def test_uniform_keep_indices_equal_torch_integer_linspace():
    pairs = [(cur, keep) for cur in range(1, 101) for keep in range(1, cur + 1)]
    pairs += [(cur, keep) for cur in (512, 1000, 4096, 8191, 16384) for keep in range(1, cur + 1, 97)]
    pairs += [(512, 384), (384, 128), (100, 75), (16384, 12288)]
    for cur, keep in pairs:
        want = torch.linspace(0, cur - 1, keep, dtype=torch.int64)
        assert torch.equal(compress.uniform_keep_indices(cur, keep), want), (cur, keep)
    ex = compress.uniform_keep_indices(100, 75).tolist()
    assert ex[:7] == [0, 1, 2, 4, 5, 6, 8] and ex[-3:] == [96, 97, 99]


def test_ratios_all_one_equal_no_compression():
    llm = random_llm(tiny_config())
    x = torch.randn(1, 60, 64)
    plain = llm.prefill(x, llm.new_cache(), visual=(5, 40))
    for kind in ("attention", "uniform", "uniform0_attention"):
        comp = CompressionConfig(enabled=True, type=kind, layers=(1, 2), ratios=(1.0, 1.0, 1.0))
        res = llm.prefill(x, llm.new_cache(), visual=(5, 40), compression=comp)
        assert torch.equal(res.logits, plain.logits), kind
        assert [t.seq_len for t in res.trace.layers] == [60, 60, 60]
        assert all(torch.equal(s.kept_rel, torch.arange(40)) for s in res.trace.stages)


def test_cached_decoding_equals_full_recompute():
    llm = random_llm(tiny_config())
    ids = torch.randint(0, 96, (1, 20), generator=torch.Generator().manual_seed(5))
    out = generate(llm, llm.embed(ids), GenerationConfig(max_new_tokens=10), keep_logits=True)
    full = torch.cat([ids, torch.tensor([out.token_ids])], dim=1)
    logits, _, _ = llm(llm.embed(full))
    want = logits[0, ids.shape[1] - 1 : -1]
    assert (out.step_logits - want).abs().max() <= 1e-5


def test_chunked_prefill_equals_one_shot():
    llm = random_llm(tiny_config())
    x = torch.randn(1, 40, 64)
    one = llm.prefill(x, llm.new_cache()).logits
    cache = llm.new_cache(reserve=0)
    llm.prefill(x[:, :25], cache)
    two = llm.prefill(x[:, 25:], cache)
    assert (one - two.logits).abs().max() <= 1e-5
    assert [t.pos_first for t in two.trace.layers] == [25, 25, 25]


def test_decode_accepts_ids_and_embeddings():
    llm = random_llm(tiny_config())
    x = torch.randn(1, 12, 64)
    results = []
    for token in (7, torch.tensor(7), torch.tensor([[7]]), llm.embed(torch.tensor([[7]]))):
        cache = llm.new_cache()
        llm.prefill(x, cache)
        results.append(llm.decode(token, cache))
    assert all(torch.equal(r, results[0]) for r in results)


def test_bfloat16_close_to_float32():
    config, llm32, golden, _, visual = load_case("case_a_res224_nocompress")
    llm16 = Qwen2ForCausalLM(config.llm).eval()
    llm16.load_state_dict(llm32.state_dict())
    llm16 = llm16.to(torch.bfloat16)
    x = golden["inputs_embeds"]
    want = llm32.prefill(x, llm32.new_cache()).logits
    got = llm16.prefill(x.bfloat16(), llm16.new_cache()).logits
    assert got.dtype == torch.float32
    # bf16 keeps ~3 significant digits; over 6 layers the logits (std ~1, max ~4) drift by <= 0.045
    # (observed over cases A-C); the bound leaves 3x headroom.
    assert (got - want).abs().max() <= 0.15
    # Compression runs in bf16 too.
    comp = CompressionConfig(enabled=True, type="uniform0_attention", layers=(2, 4), ratios=(1.0, 0.75, 0.25))
    res16 = llm16.prefill(x.bfloat16(), llm16.new_cache(), visual=visual, compression=comp)
    res32 = llm32.prefill(x, llm32.new_cache(), visual=visual, compression=comp)
    assert [s.keep for s in res16.trace.stages] == [192, 64]
    # bf16 attention scores are coarse (many exact ties), so a few kept tokens may differ from float32.
    kept16, kept32 = (set(r.trace.stages[1].kept_orig.tolist()) for r in (res16, res32))
    assert len(kept16 & kept32) >= 0.9 * len(kept32)
    assert (res16.logits - res32.logits).abs().max() <= 0.15


def test_attention_stage_at_last_layer_is_an_error():
    llm = random_llm(tiny_config())
    bad = CompressionConfig(enabled=True, type="attention", layers=(3,), ratios=(1.0, 0.5))
    with pytest.raises(ConfigError, match="last LLM layer"):
        llm.prefill(torch.randn(1, 30, 64), llm.new_cache(), visual=(2, 20), compression=bad)
    ok = CompressionConfig(enabled=True, type="uniform", layers=(3, 9), ratios=(1.0, 0.5, 0.25))
    res = llm.prefill(torch.randn(1, 30, 64), llm.new_cache(), visual=(2, 20), compression=ok)
    assert [s.layer_idx for s in res.trace.stages] == [2]  # rank layer 9 is never reached


def test_query_index_inside_visual_block_is_an_error():
    llm = random_llm(tiny_config())
    comp = CompressionConfig(enabled=True, type="attention", layers=(1,), ratios=(1.0, 0.5))
    with pytest.raises(ValueError, match="inside the visual block"):
        llm.prefill(torch.randn(1, 30, 64), llm.new_cache(), visual=(2, 20), compression=comp, query_index=10)


def test_training_forward_compression_matches_prefill():
    """Without labels the training path ranks by the last real token, exactly like prefill."""
    llm = random_llm(tiny_config())
    comp = CompressionConfig(enabled=True, type="uniform0_attention", layers=(1, 2), ratios=(1.0, 0.5, 0.25))
    x = torch.randn(1, 50, 64)
    pre = llm.prefill(x, llm.new_cache(), visual=(4, 40), compression=comp)
    logits, loss, labels = llm(x, visual=[(4, 40)], compression=comp)
    assert loss is None and labels is None
    assert logits.shape[1] == 50 - 30
    assert (logits[0, -1] - pre.logits).abs().max() <= 1e-5


def test_training_compression_cuts_labels_and_pads_batch():
    llm = random_llm(tiny_config())
    comp = CompressionConfig(enabled=True, type="uniform0_attention", layers=(1, 2), ratios=(1.0, 0.5, 0.25))
    x = torch.randn(2, 50, 64)
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[1, 44:] = False
    labels = torch.full((2, 50), -100)
    labels[:, 46:50] = torch.arange(4)  # supervised answer of sample 0
    labels[1, 40:44] = torch.arange(4)  # sample 1 (shorter)
    labels[1, 44:] = -100
    logits, loss, out = llm(x, attention_mask=mask, labels=labels, visual=[(4, 40), None], compression=comp)
    # Sample 0 lost 30 visual tokens; sample 1 (text only) kept all 44 real tokens, so the width is 44.
    assert logits.shape[:2] == (2, 44)
    assert out[0, :20].tolist() == [-100] * 16 + [0, 1, 2, 3] and (out[0, 20:] == -100).all()
    assert out[1].tolist() == labels[1, :44].tolist()
    assert torch.isfinite(loss)
    x.requires_grad_(True)
    llm(x, attention_mask=mask, labels=labels, visual=[(4, 40), None], compression=comp)[1].backward()
    assert torch.isfinite(x.grad).all() and x.grad[0, 4:44].abs().sum() > 0  # dropped tokens fed layer 0


def test_label_query_rows():
    labels = torch.tensor([-100, 5, -100, -100, 7, 8, -100, 9])
    assert compress.label_query_rows(labels).tolist() == [0, 3, 6]
    assert compress.label_query_rows(torch.full((5,), -100)).tolist() == []


def test_gradient_checkpointing_gives_same_loss_and_grads():
    llm = random_llm(tiny_config())
    llm.train()
    x = torch.randn(1, 20, 64)
    labels = torch.randint(0, 96, (1, 20))

    def run():
        llm.zero_grad()
        _, loss, _ = llm(x, labels=labels)
        loss.backward()
        return loss.detach(), llm.model.layers[0].self_attn.q_proj.weight.grad.clone()

    plain = run()
    llm.gradient_checkpointing = True
    ckpt = run()
    assert torch.allclose(plain[0], ckpt[0]) and torch.allclose(plain[1], ckpt[1], atol=1e-6)


def test_kv_cache_grows_clones_and_resets():
    cache = KVCache(2, reserve=2)
    k = torch.randn(1, 2, 3, 4)
    cache.append(0, k, k + 1)
    assert cache.lengths == [3, 0] and cache.capacity == [5, 0]
    k2 = torch.randn(1, 2, 4, 4)
    keys, values = cache.append(0, k2, k2 + 1)  # does not fit: grows, keeps the first 3
    assert cache.capacity[0] == 9 and torch.equal(keys, torch.cat([k, k2], dim=2))
    assert torch.equal(values, torch.cat([k, k2], dim=2) + 1)
    twin = cache.clone()
    cache.append(0, k, k)
    assert twin.lengths == [7, 0] and cache.lengths == [10, 0]
    cache.reset()
    assert cache.lengths == [0, 0] and cache.nbytes() > 0


def test_decode_attention_leaves_cudnn_out_and_matches_sdpa(monkeypatch):
    """Decode steps on CUDA avoid cuDNN (a plan per new length: ~3x slower decode on an H200, see
    benchmarks/README.md); the wrapper computes exactly what SDPA does, with or without a backend restriction."""
    from torch.nn.attention import SDPBackend

    from videochat_flash.model import attention

    assert SDPBackend.CUDNN_ATTENTION not in attention.DECODE_BACKENDS
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 8, generator=g) for n in (3, 5, 5))
    mask = torch.rand(3, 5, generator=g) > 0.3
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    for backends in (attention.DECODE_BACKENDS, None):
        monkeypatch.setattr(attention, "DECODE_BACKENDS", backends)
        for decode in (False, True):
            assert torch.equal(attention.sdpa(q, k, v, attn_mask=mask, decode=decode), want)
    if torch.cuda.is_available():  # the restricted path itself (run on the lent GPU machine)
        qc, kc, vc = (t.cuda().bfloat16() for t in (q, k, v))
        got = attention.sdpa(qc, kc, vc, decode=True).float().cpu()
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        assert torch.allclose(got, ref, atol=2e-2)
