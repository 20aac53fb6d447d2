"""An explicit per-layer key/value cache whose layers may hold different lengths.

With video-level compression (REFERENCE §7.3) every layer caches only the tokens it processed: layers before
a drop hold the long sequence, later layers the shorter one. So each layer has its own storage and length,
and a layer's length is also the position of the next token it sees (§7.4).

Memory: a layer's storage is ``2 · B · kv_heads · capacity · head_dim · itemsize`` bytes. It is allocated on
the layer's first write with room for the written tokens plus ``reserve`` more (pass the number of tokens you
will decode so decoding never reallocates); a write that does not fit grows the storage to the needed length
plus ``reserve`` (one copy). Example, Qwen2-7B in bf16 (28 layers, 4 kv heads, head dim 128): 56 KiB per
token over all layers, so a 16k-token prompt takes ~0.9 GiB; compression shrinks the later layers' share.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, *, reserve: int = 256):
        self.num_layers = num_layers
        self.reserve = reserve
        self.keys: list[torch.Tensor | None] = [None] * num_layers  # [B, kv_heads, capacity, head_dim]
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.lengths: list[int] = [0] * num_layers

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values [B, kv_heads, T, head_dim] after the layer's cached ones; return all of them."""
        start, new = self.lengths[layer], k.shape[2]
        end = start + new
        store_k, store_v = self.keys[layer], self.values[layer]
        if (
            store_k is None
            or store_k.shape[2] < end
            or store_k.dtype != k.dtype
            or store_k.device != k.device
        ):
            store_k, store_v = self._allocate(layer, k, end)
        store_k[:, :, start:end] = k
        store_v[:, :, start:end] = v
        self.lengths[layer] = end
        return store_k[:, :, :end], store_v[:, :, :end]

    def _allocate(self, layer: int, like: torch.Tensor, needed: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, _, d = like.shape
        shape = (b, h, needed + self.reserve, d)
        k = torch.empty(shape, dtype=like.dtype, device=like.device)
        v = torch.empty(shape, dtype=like.dtype, device=like.device)
        old = self.lengths[layer]
        if old:  # growing: keep what is cached
            k[:, :, :old] = self.keys[layer][:, :, :old]
            v[:, :, :old] = self.values[layer][:, :, :old]
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def reset(self) -> None:
        """Forget the cached tokens; the storage is kept for reuse."""
        self.lengths = [0] * self.num_layers

    def clone(self) -> KVCache:
        """An independent copy of the cached tokens (e.g. to branch several answers off one prefilled prompt)."""
        out = KVCache(self.num_layers, reserve=self.reserve)
        for i, n in enumerate(self.lengths):
            if self.keys[i] is not None and n:
                out.keys[i] = self.keys[i][:, :, : n + self.reserve].clone()
                out.values[i] = self.values[i][:, :, : n + self.reserve].clone()
                out.lengths[i] = n
        return out

    @property
    def capacity(self) -> list[int]:
        return [0 if k is None else k.shape[2] for k in self.keys]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)

    def __repr__(self) -> str:
        return f"KVCache(lengths={self.lengths}, capacity={self.capacity})"
