"""The decode loop: prefill once, then one token at a time until an end-of-turn id or the token budget.

Logits are processed the way transformers' ``generate`` does it (REFERENCE §8): the repetition penalty first
(it always applies, also when decoding greedily), then — only when sampling — temperature, top-k, top-p.
Generation starts from embeddings, so the penalty only ever sees the tokens generated so far (§2).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from ..config import CompressionConfig
from ..errors import ConfigError, read_json_object
from ..model.kv_cache import KVCache

# transformers' GenerationConfig defaults, used for keys a generation_config.json leaves out.
HF_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0}
# Keys a caller may pass (e.g. model.chat's dict) that do not change our single-sequence decoding.
_INERT_KEYS = {"use_cache", "pad_token_id", "bos_token_id", "output_scores", "return_dict_in_generate"}


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 1024
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    eos_token_ids: tuple[int, ...] = ()  # empty = never stop early (the caller fills in <|im_end|>)
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    @classmethod
    def from_file(cls, path: str | Path) -> GenerationConfig:
        """Read a HF ``generation_config.json``; missing keys take transformers' defaults (top_k 50!)."""
        data = read_json_object(path, "generation config")
        known = {k: v for k, v in data.items() if k in _FILE_KEYS}
        return cls().merged({**HF_DEFAULTS, **known})

    def merged(self, overrides: dict) -> GenerationConfig:
        """A copy with only the keys named in ``overrides`` changed (as HF ``generate(**kwargs)`` does).

        So ``model.chat(generation_config={"do_sample": True, "temperature": 0.1, "top_p": 0.1})`` keeps
        the file's repetition_penalty and top_k. ``None`` values switch a processor off (top_p/top_k/
        temperature/repetition_penalty), as in HF. Unknown keys and beam search are errors.
        """
        changes = {}
        for key, value in overrides.items():
            if key in _INERT_KEYS:
                continue
            if key == "num_beams":
                if value not in (None, 1):
                    raise ConfigError(f"generation option num_beams={value} is not supported (only 1)")
                continue
            if key in ("eos_token_id", "eos_token_ids"):
                key = "eos_token_ids"
                value = _eos_tuple(value)
            elif key not in _FIELDS:
                raise ConfigError(f"unknown generation option {key!r} (known: {', '.join(sorted(_FIELDS))})")
            elif value is None:
                value = _OFF[key] if key in _OFF else getattr(GenerationConfig, key, None)
            changes[key] = value
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """HF ``generation_config.json`` keys (``seed`` is ours and left out)."""
        out = asdict(self)
        out.pop("seed")
        eos = list(out.pop("eos_token_ids"))
        if eos:
            out["eos_token_id"] = eos[0] if len(eos) == 1 else eos
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _eos_tuple(value) -> tuple[int, ...]:
    """HF writes eos_token_id as an int or a list; None means none."""
    if value is None:
        return ()
    return (int(value),) if isinstance(value, int) else tuple(int(v) for v in value)


_FIELDS = {f.name for f in fields(GenerationConfig)}
_FILE_KEYS = (_FIELDS - {"eos_token_ids", "seed"}) | {"eos_token_id"}
_OFF = {"top_p": 1.0, "top_k": 0, "temperature": 1.0, "repetition_penalty": 1.0}


@dataclass
class GenerateResult:
    token_ids: list[int]  # new tokens only; ends with the eos id when stop_reason == "eos"
    stop_reason: str  # "eos" | "max_new_tokens"
    step_logits: torch.Tensor | None = None  # [steps, V] raw (unprocessed) logits, when asked for
    text: str = ""  # filled in by callers that own a tokenizer
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0  # all decode steps together
    trace: object | None = field(default=None, repr=False)  # the prefill trace (PrefillTrace)


# ---------------------------------------------------------------------- logits processors
def apply_repetition_penalty(logits: torch.Tensor, previous: list[int], penalty: float) -> torch.Tensor:
    """Make already generated tokens less likely: positive logits / penalty, negative ones × penalty."""
    if penalty == 1.0 or not previous:
        return logits
    idx = torch.tensor(previous, device=logits.device)
    seen = logits.gather(-1, idx)
    return logits.scatter(-1, idx, torch.where(seen < 0, seen * penalty, seen / penalty))


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits (ties at the k-th value are all kept), others -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: drop the least likely tokens whose total probability is at most 1 - p.

    Sorted ascending, a token goes if the cumulative probability up to and including it is <= 1 - p; the most
    likely token always stays.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - p)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def process_logits(logits: torch.Tensor, generated: list[int], cfg: GenerationConfig) -> torch.Tensor:
    """transformers' order: repetition penalty, then (sampling only) temperature, top-k, top-p."""
    logits = apply_repetition_penalty(logits.float(), generated, cfg.repetition_penalty)
    if cfg.greedy:
        return logits
    if cfg.temperature != 1.0:
        logits = logits / cfg.temperature
    return apply_top_p(apply_top_k(logits, cfg.top_k), cfg.top_p)


def choose_token(logits: torch.Tensor, cfg: GenerationConfig, generator: torch.Generator | None) -> int:
    if cfg.greedy:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


# ---------------------------------------------------------------------- the loop
@torch.no_grad()
def generate(
    llm,
    inputs_embeds: torch.Tensor,
    cfg: GenerationConfig,
    *,
    visual: tuple[int, int] | None = None,
    compression: CompressionConfig | None = None,
    query_index: int | None = None,
    cache: KVCache | None = None,
    on_token: Callable[[int], None] | None = None,
    keep_logits: bool = False,
) -> GenerateResult:
    """Answer the prompt ``inputs_embeds`` [1, L, D] with ``llm`` (a `Qwen2ForCausalLM`).

    Greedy when ``cfg.do_sample`` is false or the temperature is 0; otherwise samples with a generator seeded
    from ``cfg.seed`` (reproducible) or the global RNG when the seed is None. ``on_token`` is called with each
    new id as soon as it is chosen (streaming). The model is not run after the last token.
    """
    if cache is None:
        cache = llm.new_cache(reserve=cfg.max_new_tokens)
    generator = None
    if not cfg.greedy and cfg.seed is not None:
        generator = torch.Generator(device=inputs_embeds.device).manual_seed(cfg.seed)
    t0 = time.perf_counter()
    result = llm.prefill(
        inputs_embeds, cache, visual=visual, compression=compression, query_index=query_index
    )
    logits, trace = result.logits, result.trace
    _sync(logits)
    t1 = time.perf_counter()
    eos = set(cfg.eos_token_ids)
    tokens: list[int] = []
    kept: list[torch.Tensor] = []
    stop = "max_new_tokens"
    while len(tokens) < cfg.max_new_tokens:
        if keep_logits:
            kept.append(logits)
        token = choose_token(process_logits(logits, tokens, cfg), cfg, generator)
        tokens.append(token)
        if on_token is not None:
            on_token(token)
        if token in eos:
            stop = "eos"
            break
        if len(tokens) == cfg.max_new_tokens:
            break
        logits = llm.decode(token, cache)
    step_logits = torch.stack(kept) if kept else None
    _sync(logits)
    done = GenerateResult(tokens, stop, step_logits, trace=trace)
    done.prefill_seconds, done.decode_seconds = t1 - t0, time.perf_counter() - t1
    return done


def _sync(t: torch.Tensor) -> None:
    """Wait for queued GPU work so the timings mean something."""
    if t.is_cuda:
        torch.cuda.synchronize(t.device)
