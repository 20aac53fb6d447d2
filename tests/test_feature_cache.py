"""Reusing a frozen tower's outputs: exact, bounded, and refused when the tower trains."""

from __future__ import annotations

import pytest
import torch

from tests.test_train_support import (
    make_dataset,
    one_thread,  # noqa: F401  (autouse fixture)
    read_losses,
    tiny_recipe,
)
from videochat_flash.errors import ConfigError
from videochat_flash.train.distributed import DistEnv
from videochat_flash.train.feature_cache import FrozenTowerCache
from videochat_flash.train.recipes import recipe_from_dict
from videochat_flash.train.trainer import Trainer, train


class CountingTower(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.flatten(1).sum(-1, keepdim=True).repeat(1, 4)


def test_cache_runs_the_tower_once_per_distinct_input():
    tower, cache = CountingTower(), FrozenTowerCache(max_bytes=1 << 20)
    a, b = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    first = cache(tower, a)
    assert torch.equal(cache(tower, a.clone()), first) and tower.calls == 1  # same bytes, same entry
    assert torch.equal(cache(tower, b), tower(b)) and tower.calls == 3
    a_changed = a.clone()
    a_changed[0, 0, 0, 0] += 1e-3  # any changed pixel is a different input
    cache(tower, a_changed)
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 3


def test_cache_evicts_least_recently_used_entries_beyond_its_bound():
    tower = CountingTower()
    entry = 2 * 4 * 4  # bytes of one [2, 4] float32 output
    cache = FrozenTowerCache(max_bytes=2 * entry)
    x = [torch.full((2, 1), float(i)) for i in range(3)]
    cache(tower, x[0]), cache(tower, x[1]), cache(tower, x[0]), cache(tower, x[2])  # x[1] is the oldest now
    assert len(cache) == 2 and cache.bytes == 2 * entry
    calls = tower.calls
    cache(tower, x[0])
    assert tower.calls == calls  # kept
    cache(tower, x[1])
    assert tower.calls == calls + 1  # evicted, computed again
    with pytest.raises(ValueError, match="positive"):
        FrozenTowerCache(0)


def _frozen_tower_recipe(tmp, mixture, out, cache_gb):
    return tiny_recipe(
        tmp,
        mixture,
        train={
            "output_dir": str(out),
            "tunable_parts": ["mm_mlp_adapter", "mm_language_model"],
            "epochs": 3,
            "max_steps": 9,
            "frozen_vision_cache_gb": cache_gb,
        },
    )


def test_training_with_the_cache_matches_training_without_it(tmp_path):
    """Same losses step for step (the tower's outputs are reused, not approximated); later epochs hit the cache."""
    mixture = make_dataset(tmp_path / "data", videos=3, images=1, texts=1)
    plain = train(recipe_from_dict(_frozen_tower_recipe(tmp_path, mixture, tmp_path / "plain", 0)))
    cached = train(recipe_from_dict(_frozen_tower_recipe(tmp_path, mixture, tmp_path / "cached", 0.01)))
    assert read_losses(plain.output_dir / "train_log.jsonl") == read_losses(cached.output_dir / "train_log.jsonl")
    done = [r for r in _log(cached.output_dir) if r.get("event") == "end"]
    assert done and done[0]["vision_cache"]["hits"] > 0


def _log(out):
    import json

    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_cache_is_refused_while_the_tower_trains(tmp_path):
    mixture = make_dataset(tmp_path / "data", videos=1, images=0, texts=0)
    recipe = _frozen_tower_recipe(tmp_path, mixture, tmp_path / "out", 0.01)
    recipe["train"]["tunable_parts"] = ["mm_vision_tower", "mm_mlp_adapter"]
    with pytest.raises(ConfigError, match="frozen vision tower"):
        Trainer(recipe_from_dict(recipe), DistEnv())
