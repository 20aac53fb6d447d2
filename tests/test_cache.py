"""Visual-token cache: round trip, LRU eviction, corrupt/foreign entries recomputed, atomic writes."""

import os
import time

import torch

from videochat_flash.inference.cache import TokenCache, hash_file, make_key
from videochat_flash.inference.tokens import VideoTokens


def make_tokens(n_clips: int = 2, dim: int = 8, seed: int = 0) -> VideoTokens:
    g = torch.Generator().manual_seed(seed)
    frames = 4 * n_clips
    return VideoTokens(
        tokens=torch.randn(16 * frames, dim, generator=g),
        timestamps=[float(i) for i in range(frames)],
        indices=list(range(frames)),
        duration=float(frames),
        fps=1.0,
        time_message=f"\nThe video lasts for {frames:.2f} seconds, and {frames} frames are uniformly sampled from it. ",
        sampling={"max_frames": 512},
        model_id="m",
    )


def test_round_trip(tmp_path):
    cache = TokenCache(tmp_path)
    key = make_key("abc", "model", {"max_frames": 512})
    assert cache.get(key) is None and cache.misses == 1
    tokens = make_tokens()
    cache.put(key, tokens)
    got = cache.get(key)
    assert cache.hits == 1
    assert torch.equal(got.tokens, tokens.tokens)
    assert got.timestamps == tokens.timestamps and got.time_message == tokens.time_message
    assert not list(tmp_path.glob(".tmp-*"))  # no temp files left behind


def test_keys_differ_by_settings_and_model():
    base = make_key("v", "m", {"max_frames": 512})
    assert base != make_key("v", "m", {"max_frames": 256})
    assert base != make_key("v", "other", {"max_frames": 512})
    assert base != make_key("w", "m", {"max_frames": 512})
    assert base == make_key("v", "m", {"max_frames": 512})


def test_corrupt_entry_is_dropped(tmp_path):
    cache = TokenCache(tmp_path)
    key = make_key("v", "m", {})
    cache.put(key, make_tokens())
    path = tmp_path / f"{key}.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated file
    assert cache.get(key) is None
    assert not path.exists()


def test_foreign_entry_is_not_trusted(tmp_path):
    cache = TokenCache(tmp_path)
    key_a, key_b = make_key("a", "m", {}), make_key("b", "m", {})
    cache.put(key_a, make_tokens(seed=1))
    os.replace(
        tmp_path / f"{key_a}.safetensors", tmp_path / f"{key_b}.safetensors"
    )  # entry under a wrong name
    assert cache.get(key_b) is None


def test_lru_eviction(tmp_path):
    probe = TokenCache(tmp_path / "probe")
    probe.put("x", make_tokens())
    entry_size = probe.size_bytes()
    cache = TokenCache(tmp_path / "c", max_bytes=int(entry_size * 2.5))
    for name in ("a", "b"):
        cache.put(name, make_tokens())
        time.sleep(0.02)
    assert cache.get("a") is not None  # a is now the most recently used
    time.sleep(0.02)
    cache.put("c", make_tokens())
    assert cache.get("b") is None  # evicted: least recently used
    assert cache.get("a") is not None and cache.get("c") is not None
    assert cache.size_bytes() <= cache.max_bytes


def test_hash_file_is_content_based(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 10_000_000)
    b.write_bytes(b"x" * 10_000_000)
    assert hash_file(a) == hash_file(b)
    b.write_bytes(b"x" * 9_999_999 + b"y")
    assert hash_file(a) != hash_file(b)
