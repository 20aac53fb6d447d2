"""Reuse the vision tower's outputs while it is frozen.

A stage that trains only the connector and the LLM (the paper's stage 1, the demo's stage 0) feeds the same videos
through a tower whose weights never change, epoch after epoch, so the tower's output for a given clip batch is the
same every time. `FrozenTowerCache` keeps those outputs, keyed by the exact input pixels, and gives them back on the
next visit. Enabled per recipe (``train.frozen_vision_cache_gb``) and only with the tower frozen: the trainer
refuses it otherwise. Decoding and preprocessing still run (in the data workers); only the tower's forward is
saved. Bounded in bytes; the least recently used entries go first.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

import torch


def pixels_key(pixels: torch.Tensor) -> tuple:
    """Exact identity of an input tensor: shape, dtype and a digest of its bytes."""
    data = pixels.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(data.view(torch.uint8).numpy().tobytes(), digest_size=16).hexdigest()
    return tuple(data.shape), str(data.dtype), digest


class FrozenTowerCache:
    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._store: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def __call__(self, tower: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor) -> torch.Tensor:
        """``tower(pixels)``, computed once per distinct ``pixels`` while the entry stays in the cache.

        ``tower`` is any fixed function of the pixels (the frozen tower, with its device/dtype move).
        """
        key = pixels_key(pixels)
        out = self._store.get(key)
        if out is not None:
            self._store.move_to_end(key)
            self.hits += 1
            return out
        self.misses += 1
        with torch.no_grad():
            out = tower(pixels)
        size = out.numel() * out.element_size()
        if size <= self.max_bytes:
            self._store[key] = out
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, old = self._store.popitem(last=False)
                self.bytes -= old.numel() * old.element_size()
        return out

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self), "mib": round(self.bytes / 2**20, 1)}
