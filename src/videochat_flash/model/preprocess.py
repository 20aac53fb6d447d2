"""Pixels for the UMT tower: frame normalisation (REFERENCE §3.1) and anyres image tiling (§3.3).

The numbers must equal the original processor's bit for bit: PIL bicubic resize to S x S, then
``float32(uint8 * (1/255))`` computed in float64, then ``(x - mean) / std`` in float32. After the resize every
output value depends only on (channel, uint8 value), so normalisation is one 256-entry lookup per channel.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..config import IMAGE_MEAN, IMAGE_STD

# Background used by the "pad" aspect mode: the ImageNet mean as truncated 8-bit RGB, (123, 116, 103).
PAD_COLOR = tuple(int(m * 255) for m in IMAGE_MEAN)


# ---------------------------------------------------------------------- frames
@functools.cache
def _normalize_lut() -> np.ndarray:
    """`[3, 256]` float32: the processed value of every uint8 level in every channel."""
    scaled = (np.arange(256, dtype=np.uint8) * (1 / 255)).astype(np.float32)  # float64 product, then float32
    mean = np.asarray(IMAGE_MEAN, dtype=np.float32)[:, None]
    std = np.asarray(IMAGE_STD, dtype=np.float32)[:, None]
    return (scaled[None, :] - mean) / std  # float32 arithmetic, as the original normalise step


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    """PIL bicubic (antialiased) resize of one H x W x 3 uint8 frame to size x size, aspect ignored."""
    if frame.shape[:2] == (size, size):
        return frame  # PIL would return an identical copy
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BICUBIC))


def _as_uint8_frames(frames) -> np.ndarray:
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    elif not isinstance(frames, np.ndarray):
        frames = np.stack([np.asarray(f) for f in frames])
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB frames [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    return frames


def preprocess_frames(frames, size: int) -> torch.Tensor:
    """uint8 RGB frames `[T, H, W, 3]` (numpy, torch or a sequence of arrays) -> float32 `[T, 3, S, S]`."""
    frames = _as_uint8_frames(frames)
    resized = np.stack([_resize(f, size) for f in frames]) if frames.shape[1:3] != (size, size) else frames
    lut = _normalize_lut()
    planes = np.ascontiguousarray(resized.transpose(0, 3, 1, 2))  # channels-first uint8: cheap to copy
    out = np.empty(planes.shape, dtype=np.float32)
    for c in range(3):
        out[:, c] = lut[c][planes[:, c]]
    return torch.from_numpy(out)


# ---------------------------------------------------------------------- images
def _to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"expected a PIL image or uint8 RGB array [H, W, 3], got {image.dtype} {image.shape}"
        )
    return Image.fromarray(image)


def select_best_resolution(
    original_wh: tuple[int, int], pinpoints: Sequence[tuple[int, int]]
) -> tuple[int, int]:
    """The (W, H) pinpoint that keeps the most of the image's resolution, then wastes the least (LLaVA-NeXT rule)."""
    width, height = original_wh
    best, best_effective, best_wasted = None, 0, float("inf")
    for cand_w, cand_h in pinpoints:
        scale = min(cand_w / width, cand_h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = cand_w * cand_h - effective
        # Strict comparisons: on a full tie the earliest pinpoint wins.
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (cand_w, cand_h), effective, wasted
    if best is None:
        raise ValueError("no image grid pinpoints to choose from")
    return best


def image_tiles(
    image, size: int, pinpoints: Sequence[tuple[int, int]]
) -> tuple[torch.Tensor, tuple[int, int]]:
    """anyres_nopad: `([1 + P, 3, S, S] float32, (rows, cols))`, base tile first, grid tiles row-major.

    The image is stretched (no padding) to the best pinpoint and cut into S x S tiles; the base tile is the
    whole image stretched to S x S. Both resizes use Pillow's bicubic filter.
    """
    pil = _to_pil(image)
    grid_w, grid_h = select_best_resolution(pil.size, pinpoints)
    big = pil.resize((grid_w, grid_h), Image.Resampling.BICUBIC)
    tiles = [pil.resize((size, size), Image.Resampling.BICUBIC)]
    tiles += [
        big.crop((left, top, left + size, top + size))
        for top in range(0, grid_h, size)
        for left in range(0, grid_w, size)
    ]
    pixels = preprocess_frames(np.stack([np.asarray(t) for t in tiles]), size)
    return pixels, (grid_h // size, grid_w // size)


def pad_to_square(image) -> Image.Image:
    """The "pad" aspect mode: centre the image on a square canvas filled with the mean colour."""
    pil = _to_pil(image)
    width, height = pil.size
    if width == height:
        return pil
    side = max(width, height)
    canvas = Image.new("RGB", (side, side), PAD_COLOR)
    canvas.paste(pil, ((side - width) // 2, (side - height) // 2))
    return canvas


def arrange_image_tokens(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`[1 + P, n*n, D]` per-tile tokens -> `[(1 + P) * n*n, D]` in the `spatial_nopad` order (REFERENCE §3.3.7).

    Base tile first; then each grid tile's tokens are read as an n x n block and emitted tile-row by tile-row,
    token-row by token-row, so rows of neighbouring tiles interleave. ToMe output is not spatially ordered;
    the original applies this relabelling anyway and we reproduce it.
    """
    rows, cols = grid
    num_tiles, per_tile, dim = tokens.shape
    if num_tiles == 1:
        return tokens[0]
    if num_tiles != 1 + rows * cols:
        raise ValueError(f"{num_tiles} tiles do not match a base tile plus a {rows} x {cols} grid")
    side = int(round(per_tile**0.5))
    if side * side != per_tile:
        raise ValueError(f"{per_tile} tokens per tile is not a square")
    grid_tokens = tokens[1:].view(rows, cols, side, side, dim).permute(0, 2, 1, 3, 4).reshape(-1, dim)
    return torch.cat([tokens[0], grid_tokens])
