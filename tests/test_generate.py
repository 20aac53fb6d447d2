"""Decode loop and logits processing: config merge semantics, processors vs transformers, stopping, seeds."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import REFERENCE, require_fixtures
from videochat_flash.config import Qwen2Config
from videochat_flash.errors import ConfigError
from videochat_flash.inference.generate import (
    GenerationConfig,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    generate,
    process_logits,
)
from videochat_flash.model.kv_cache import KVCache
from videochat_flash.model.qwen2 import PrefillResult, PrefillTrace, Qwen2ForCausalLM

# Qwen2.5-1.5B-Instruct's generation_config.json (the released 2B model probably ships this, REFERENCE §2).
QWEN_FILE = {
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.1,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "transformers_version": "4.37.0",
}


# ---------------------------------------------------------------------- config
def test_from_file_and_chat_style_merge(tmp_path):
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps(QWEN_FILE))
    base = GenerationConfig.from_file(path)
    assert (base.do_sample, base.temperature, base.top_p, base.top_k, base.repetition_penalty) == (
        True,
        0.7,
        0.8,
        20,
        1.1,
    )
    assert base.eos_token_ids == (151645, 151643)
    # model.chat's dict overrides only what it names: repetition_penalty and top_k from the file stay.
    demo = base.merged(
        {"do_sample": True, "temperature": 0.1, "max_new_tokens": 256, "top_p": 0.1, "num_beams": 1}
    )
    assert (demo.temperature, demo.top_p, demo.max_new_tokens) == (0.1, 0.1, 256)
    assert (demo.top_k, demo.repetition_penalty) == (20, 1.1)
    # lmms-eval style: greedy, top_p None switches nucleus filtering off.
    ev = base.merged({"max_new_tokens": 16, "temperature": 0, "do_sample": False, "top_p": None})
    assert ev.greedy and ev.top_p == 1.0 and ev.repetition_penalty == 1.1
    assert base == GenerationConfig.from_file(path)  # merged returns copies


def test_from_file_missing_keys_take_transformers_defaults():
    path = require_fixtures(REFERENCE / "case_a_res224_nocompress" / "generation_config.json")
    cfg = GenerationConfig.from_file(path)
    assert cfg.eos_token_ids == (1023,)
    assert (cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k, cfg.repetition_penalty) == (
        False,
        1.0,
        1.0,
        50,
        1.0,
    )


def test_merge_rejects_unknown_keys_and_beams():
    with pytest.raises(ConfigError, match="num_beams"):
        GenerationConfig().merged({"num_beams": 4})
    with pytest.raises(ConfigError, match="unknown generation option 'top_a'"):
        GenerationConfig().merged({"top_a": 0.5})
    assert GenerationConfig().merged({"eos_token_id": 7}).eos_token_ids == (7,)


def test_to_json_round_trip(tmp_path):
    cfg = GenerationConfig(do_sample=True, temperature=0.3, top_k=5, eos_token_ids=(9, 8), max_new_tokens=12)
    path = tmp_path / "generation_config.json"
    path.write_text(cfg.to_json())
    assert GenerationConfig.from_file(path) == cfg


# ---------------------------------------------------------------------- processors
def test_repetition_penalty_by_hand():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    out = apply_repetition_penalty(logits, [0, 1, 1], 2.0)  # repeats count once
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]
    assert torch.equal(apply_repetition_penalty(logits, [], 2.0), logits)


def test_top_k_and_top_p_by_hand():
    logits = torch.tensor([1.0, 3.0, 2.0, 3.0, 0.0])
    assert apply_top_k(logits, 2).tolist() == [float("-inf"), 3.0, float("-inf"), 3.0, float("-inf")]
    assert apply_top_k(logits, 3).tolist() == [float("-inf"), 3.0, 2.0, 3.0, float("-inf")]
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    out = apply_top_p(probs.log(), 0.75)  # 0.5 + 0.3 reach 0.75; the 0.15 and 0.05 tail goes
    assert torch.isinf(out).tolist() == [False, False, True, True]
    assert torch.isinf(apply_top_p(probs.log(), 0.01)).tolist() == [False, True, True, True]


def test_processing_matches_transformers_order():
    transformers = pytest.importorskip("transformers")
    from transformers.generation import logits_process as lp

    torch.manual_seed(0)
    logits = torch.randn(1, 50) * 3
    history = [3, 7, 7, 11, 42]
    cfg = GenerationConfig(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.1)
    ids = torch.tensor([history])
    want = logits.clone()
    for proc in (
        lp.RepetitionPenaltyLogitsProcessor(1.1),
        lp.TemperatureLogitsWarper(0.7),
        lp.TopKLogitsWarper(20),
        lp.TopPLogitsWarper(0.8),
    ):
        want = proc(ids, want)
    got = process_logits(logits[0], history, cfg)
    assert torch.equal(torch.isinf(got), torch.isinf(want[0]))
    finite = ~torch.isinf(got)
    assert torch.allclose(got[finite], want[0][finite])
    assert transformers is not None


def test_greedy_still_applies_repetition_penalty():
    logits = torch.tensor([5.0, 4.9, 0.0])
    cfg = GenerationConfig(repetition_penalty=1.1, top_k=1, temperature=0.5)
    out = process_logits(logits, [0], cfg)
    assert int(out.argmax()) == 1  # 5.0 / 1.1 < 4.9; top_k / temperature are not applied when greedy
    assert not torch.isinf(out).any() and out[1] == 4.9


# ---------------------------------------------------------------------- the loop
class ScriptedLLM:
    """Emits a fixed token sequence (one-hot logits) so stopping rules can be tested without a model."""

    def __init__(self, script: list[int], vocab: int = 10):
        self.script, self.vocab, self.decode_calls = script, vocab, 0

    def new_cache(self, reserve: int = 0) -> KVCache:
        return KVCache(1, reserve=reserve)

    def _logits(self, step: int) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor(self.script[step]), self.vocab).float() * 10

    def prefill(self, inputs_embeds, cache, **kwargs) -> PrefillResult:
        return PrefillResult(self._logits(0), PrefillTrace())

    def decode(self, token, cache):
        self.decode_calls += 1
        return self._logits(self.decode_calls)


def test_stops_on_any_eos_and_streams():
    llm = ScriptedLLM([4, 5, 9, 6, 6])
    seen = []
    out = generate(
        llm,
        torch.zeros(1, 3, 4),
        GenerationConfig(max_new_tokens=5, eos_token_ids=(8, 9)),
        on_token=seen.append,
    )
    assert out.token_ids == seen == [4, 5, 9] and out.stop_reason == "eos"
    assert llm.decode_calls == 2  # no model call after the stop token


def test_stops_at_max_new_tokens_without_extra_step():
    llm = ScriptedLLM([1, 2, 3, 4, 5])
    out = generate(llm, torch.zeros(1, 3, 4), GenerationConfig(max_new_tokens=3, eos_token_ids=(9,)))
    assert out.token_ids == [1, 2, 3] and out.stop_reason == "max_new_tokens" and llm.decode_calls == 2


def tiny_llm() -> Qwen2ForCausalLM:
    cfg = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10000.0,
    )
    torch.manual_seed(0)
    llm = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        llm.model.embed_tokens.weight.normal_()
    return llm


def test_sampling_is_reproducible_with_a_seed():
    llm = tiny_llm()
    x = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(1))
    cfg = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=1.5, seed=123)
    a = generate(llm, x, cfg).token_ids
    b = generate(llm, x, cfg).token_ids
    c = generate(
        llm, x, GenerationConfig(max_new_tokens=12, do_sample=True, temperature=1.5, seed=7)
    ).token_ids
    assert a == b and a != c


def test_temperature_zero_is_greedy():
    llm = tiny_llm()
    x = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(2))
    greedy = generate(llm, x, GenerationConfig(max_new_tokens=6)).token_ids
    zero = generate(llm, x, GenerationConfig(max_new_tokens=6, do_sample=True, temperature=0.0)).token_ids
    assert greedy == zero
