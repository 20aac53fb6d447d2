"""Vision side against the reference goldens (cases A, B, C of ../shared/fixtures/reference).

Tolerances: float32 tensors |Δ| ≤ 1e-4 absolute (the fixtures' suggestion; values are O(1) and we observe
≤ 3e-6); position tables ≤ 1e-6; preprocessing bit-exact; ToMe indices, grid shapes and token order exact.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from videochat_flash.config import ProjectorConfig, UMTConfig, VideoChatFlashConfig
from videochat_flash.model.preprocess import (
    arrange_image_tokens,
    image_tiles,
    pad_to_square,
    preprocess_frames,
    select_best_resolution,
)
from videochat_flash.model.projector import ToMeProjector, clip_tokens
from videochat_flash.model.tome import bipartite_merge, merge_schedule, tome_merge
from videochat_flash.model.umt import UMTEncoder, image_position_table, video_position_table

from .conftest import REFERENCE, require_fixtures

ATOL = 1e-4  # float32 model tensors vs the reference
TABLE_ATOL = 1e-6  # position tables (float64 sinusoid, observed bit-equal)

CASES = {"a": "case_a_res224_nocompress", "b": "case_b_res448_compress", "c": "case_c_image"}
VISION_PREFIX = "model.vision_tower.vision_tower.encoder."
PROJECTOR_PREFIX = "model.mm_projector."


@dataclass(frozen=True)
class Case:
    cfg: VideoChatFlashConfig
    golden: dict[str, torch.Tensor]
    meta: dict
    weights: dict[str, torch.Tensor]


@functools.cache
def _load_case(path: Path) -> Case:
    return Case(
        cfg=VideoChatFlashConfig.from_json_file(path / "config.json"),
        golden=load_file(path / "golden.safetensors"),
        meta=json.loads((path / "golden.json").read_text()),
        weights=load_file(path / "model.safetensors"),
    )


def case(key: str) -> Case:
    return _load_case(require_fixtures(REFERENCE / CASES[key]))


def _strip(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def encoder_for(c: Case) -> UMTEncoder:
    encoder = UMTEncoder(c.cfg.vision)
    encoder.load_state_dict(_strip(c.weights, VISION_PREFIX), strict=True)
    return encoder.eval()


def projector_for(c: Case) -> ToMeProjector:
    projector = ToMeProjector(c.cfg.projector)
    projector.load_state_dict(_strip(c.weights, PROJECTOR_PREFIX), strict=True)
    return projector.eval()


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


def per_frame_stats(x: torch.Tensor) -> torch.Tensor:
    """[mean, unbiased std, min, max] over all but the first dim, in float64 (as the fixtures)."""
    x = x.double().flatten(1)
    return torch.stack([x.mean(1), x.std(1), x.amin(1), x.amax(1)], dim=1)


def clip_features(c: Case, key: str) -> torch.Tensor:
    """The stored ViT output regrouped as projector input: [clips, 4*L, C] (video) or [tiles, L, C] (image)."""
    if key == "b":
        return c.golden["vision_features_clip0"].reshape(1, -1, c.cfg.vision.hidden_size)
    features = c.golden["vision_features"]
    if key == "c":
        return features
    return features.reshape(-1, c.cfg.frames_per_clip * features.shape[1], features.shape[2])


# ---------------------------------------------------------------------- position tables
@pytest.mark.parametrize("key", ["a", "b", "c"])
def test_position_tables(key):
    c = case(key)
    assert max_err(video_position_table(c.cfg.vision), c.golden["vit_pos_embed"]) <= TABLE_ATOL
    assert max_err(image_position_table(c.cfg.vision), c.golden["vit_img_pos_embed"]) <= TABLE_ATOL


def test_position_tables_are_not_in_state_dict():
    keys = set(UMTEncoder(UMTConfig(hidden_size=16, num_layers=3, num_heads=2, image_size=32)).state_dict())
    assert not any("pos_embed" in k for k in keys)
    assert "blocks.1.attn.q_bias" in keys and "blocks.2.norm1.weight" not in keys  # select_layer -2: 2 blocks


def test_released_sizes_match_checkpoint_parameter_counts():
    """REFERENCE §1.6: UMT-L with 23 blocks holds 290,479,104 parameters; the 2B projector 3,935,232."""
    with torch.device("meta"):
        encoder = UMTEncoder(UMTConfig(image_size=448))
        projector = ToMeProjector(ProjectorConfig(out_dim=1536))
    state = encoder.state_dict()
    assert sum(v.numel() for v in state.values()) == 290_479_104
    assert (
        state["patch_embed.proj.weight"].shape == (1024, 3, 1, 16, 16)
        and "blocks.23.norm1.weight" not in state
    )
    assert sorted(projector.state_dict()) == ["mlp.0.bias", "mlp.0.weight", "mlp.2.bias", "mlp.2.weight"]
    assert sum(v.numel() for v in projector.state_dict().values()) == 3_935_232


def test_temporal_interpolation_of_position_table():
    cfg = UMTConfig(hidden_size=16, num_layers=3, num_heads=2, num_frames=8)
    table = video_position_table(cfg)
    base = video_position_table(UMTConfig(hidden_size=16, num_layers=3, num_heads=2, num_frames=4))
    assert table.shape == (1, 8 * 196, 16)
    # align_corners=False: the first and last output frames clamp onto the first and last base frames.
    assert torch.allclose(table[:, :196], base[:, :196]) and torch.allclose(table[:, -196:], base[:, -196:])


# ---------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("key", ["a", "b"])
def test_preprocess_frames_bit_exact(key):
    c = case(key)
    pixels = preprocess_frames(c.golden["video_frames_uint8"], c.cfg.image_size)
    expected = c.meta["preprocessing"]
    assert list(pixels.shape) == expected["pixel_values_full_shape"] and pixels.dtype == torch.float32
    assert hashlib.sha256(pixels.numpy().tobytes()).hexdigest() == expected["pixel_values_full_sha256_f32"]
    assert torch.equal(pixels[:1], c.golden["pixel_values_sel"])
    stats = per_frame_stats(pixels.flatten(0, 1)).view(-1, 3, 4)  # per frame and channel
    assert max_err(stats, c.golden["pixel_values_stats"]) <= 1e-6


def test_preprocess_frames_accepts_torch_and_lists():
    frames = np.random.default_rng(0).integers(0, 256, (2, 20, 30, 3), dtype=np.uint8)
    a = preprocess_frames(frames, 16)
    assert torch.equal(a, preprocess_frames(torch.from_numpy(frames), 16))
    assert torch.equal(a, preprocess_frames(list(frames), 16))
    with pytest.raises(ValueError):
        preprocess_frames(frames.astype(np.float32), 16)


def test_image_tiles_case_c():
    c = case("c")
    pixels, grid = image_tiles(c.golden["image_uint8"].numpy(), c.cfg.image_size, c.cfg.image_grid_pinpoints)
    anyres = c.meta["anyres"]
    assert grid == (anyres["grid_h"], anyres["grid_w"])
    assert torch.equal(pixels, c.golden["pixel_values"])
    assert (
        hashlib.sha256(pixels.numpy().tobytes()).hexdigest()
        == c.meta["preprocessing"]["pixel_values_full_sha256_f32"]
    )
    best = select_best_resolution(tuple(anyres["image_size_wh"]), c.cfg.image_grid_pinpoints)
    assert best == tuple(anyres["best_resolution_wh"])
    # A PIL image in gives the same tiles.
    pil_pixels, _ = image_tiles(
        Image.fromarray(c.golden["image_uint8"].numpy()), 224, c.cfg.image_grid_pinpoints
    )
    assert torch.equal(pil_pixels, pixels)


def test_select_best_resolution_rules():
    pinpoints = [(i * 224, j * 224) for i in range(1, 7) for j in range(1, 7)]
    assert select_best_resolution((224, 224), pinpoints) == (224, 224)  # exact fit, least waste, first
    # 1000x500 fits whole into 1120x672 and 1344x672; the first wastes less.
    assert select_best_resolution((1000, 500), pinpoints) == (1120, 672)
    # Full resolution kept by several candidates: the least wasted area wins.
    assert select_best_resolution((300, 100), pinpoints) == (448, 224)
    # Huge images: the biggest candidate keeps the most pixels.
    assert select_best_resolution((5000, 5000), pinpoints) == (1344, 1344)


def test_pad_to_square():
    image = np.full((10, 4, 3), 7, dtype=np.uint8)
    padded = np.asarray(pad_to_square(image))
    assert padded.shape == (10, 10, 3)
    assert (padded[:, 3:7] == 7).all() and (padded[:, :3] == (123, 116, 103)).all()
    assert (padded[:, 7:] == (123, 116, 103)).all()
    square = np.zeros((5, 5, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(pad_to_square(square)), square)


# ---------------------------------------------------------------------- ViT
def _vit_input(c: Case, key: str) -> torch.Tensor:
    size = c.cfg.image_size
    if key == "c":
        return c.golden["pixel_values"][:, None]  # every tile is a 1-frame clip
    frames = c.golden["video_frames_uint8"]
    if key == "b":
        frames = frames[: c.cfg.frames_per_clip]  # first clip only, to keep the test fast
    return preprocess_frames(frames, size).view(-1, c.cfg.frames_per_clip, 3, size, size)


@pytest.mark.parametrize("key", ["a", "b", "c"])
def test_vit_matches_reference(key):
    c = case(key)
    with torch.no_grad():
        features = encoder_for(c)(_vit_input(c, key))
    assert max_err(features, clip_features(c, key)) <= ATOL
    per_frame = features.reshape(-1, c.cfg.vision.tokens_per_frame, c.cfg.vision.hidden_size)
    stats = c.golden["vision_features_stats"][: per_frame.shape[0]]
    assert max_err(per_frame_stats(per_frame), stats) <= ATOL


def test_vit_rejects_wrong_frame_count():
    encoder = UMTEncoder(UMTConfig(hidden_size=16, num_layers=3, num_heads=2, image_size=32))
    with pytest.raises(ValueError):
        encoder(torch.zeros(1, 3, 3, 32, 32))


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    cfg = UMTConfig(hidden_size=16, num_layers=4, num_heads=2, image_size=32, num_frames=2)
    encoder = UMTEncoder(cfg).train()
    pixels = torch.randn(2, 2, 3, 32, 32)

    def grads(checkpointing: bool) -> list[torch.Tensor]:
        encoder.zero_grad()
        encoder.gradient_checkpointing = checkpointing
        encoder(pixels).square().sum().backward()
        return [p.grad.clone() for p in encoder.parameters()]

    for plain, ckpt in zip(grads(False), grads(True), strict=True):
        assert torch.allclose(plain, ckpt, atol=1e-6)


# ---------------------------------------------------------------------- ToMe + projector
def test_merge_schedule():
    assert merge_schedule(784, 64) == [392, 196, 98, 34]
    assert merge_schedule(196, 64) == [98, 34]
    assert merge_schedule(3136, 64) == [1568, 784, 392, 196, 98, 34]
    assert merge_schedule(64, 64) == []
    with pytest.raises(ValueError):
        merge_schedule(32, 64)
    assert clip_tokens(4) == 64


@pytest.mark.parametrize("key", ["a", "b", "c"])
def test_tome_trace_and_projector(key):
    c = case(key)
    features = clip_features(c, key)
    merged, trace = tome_merge(features, 64, c.cfg.projector.merge_heads, return_trace=True)
    calls = [k for k in range(10) if f"tome_call{k}_node_idx" in c.golden]
    assert len(trace) == len(calls) == len(merge_schedule(features.shape[1], 64))
    rows = features.shape[0]
    for k, (node_idx, edge_idx) in enumerate(trace):
        assert torch.equal(node_idx, c.golden[f"tome_call{k}_node_idx"][:rows]), f"node_idx step {k}"
        assert torch.equal(edge_idx, c.golden[f"tome_call{k}_edge_idx"][:rows]), f"edge_idx step {k}"
    projector = projector_for(c)
    with torch.no_grad():
        out = projector(features, 64)
        assert torch.equal(out, projector.mlp(merged))
    assert max_err(out, c.golden["projector_out"][:rows]) <= ATOL


def test_arrange_image_tokens_case_c():
    c = case("c")
    grid = (c.meta["anyres"]["grid_h"], c.meta["anyres"]["grid_w"])
    assert torch.equal(arrange_image_tokens(c.golden["projector_out"], grid), c.golden["visual_tokens"])


def test_arrange_image_tokens_order():
    tokens = torch.arange(3 * 4).view(3, 4, 1)  # base + 1x2 grid of 2x2-token tiles
    assert arrange_image_tokens(tokens, (1, 2)).flatten().tolist() == [0, 1, 2, 3, 4, 5, 8, 9, 6, 7, 10, 11]
    assert torch.equal(arrange_image_tokens(tokens[:1], (1, 1)), tokens[0])


def test_tome_is_size_weighted_and_differentiable():
    torch.manual_seed(0)
    x = torch.randn(2, 50, 8, requires_grad=True)
    out, size = x, None
    for r in merge_schedule(50, 7):
        out, size, _, _ = bipartite_merge(out, size, r, num_heads=2)
    assert out.shape == (2, 7, 8) and torch.equal(size.sum(1).flatten(), torch.full((2,), 50.0))
    # Size-weighted averaging preserves the feature sum.
    assert torch.allclose((out * size).sum(1), x.sum(1), atol=1e-4)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ---------------------------------------------------------------------- bfloat16
def test_bfloat16_close_to_float32():
    """bf16 keeps ~3 significant digits; bounds are 2-4x what we observe (ViT max 0.04, mean 0.005)."""
    for key in ("a", "c"):
        c = case(key)
        pixels = _vit_input(c, key)[:1]
        reference = clip_features(c, key)[:1]
        encoder = encoder_for(c).to(torch.bfloat16)
        with torch.no_grad():
            features = encoder(pixels.to(torch.bfloat16))
        assert features.dtype == torch.bfloat16
        err = (features.float() - reference).abs()
        assert err.max() <= 0.1 and err.mean() <= 0.01, (key, err.max(), err.mean())

        # ToMe in bf16: matching decisions may flip on bf16 ties, but merging stays a size-weighted average.
        x, size = features, None
        for r in merge_schedule(features.shape[1], 64):
            x, size, _, _ = bipartite_merge(x, size, r, c.cfg.projector.merge_heads)
        assert x.dtype == torch.bfloat16 and size.float().sum() == features.shape[1]
        total = (x.float() * size.float()).sum(1)
        assert (total - features.float().sum(1)).abs().max() <= 1e-2 * features.float().sum(1).abs().max()

        # The MLP in bf16 on the reference's own merged tokens.
        projector = projector_for(c).to(torch.bfloat16)
        merged = tome_merge(reference, 64, c.cfg.projector.merge_heads)
        with torch.no_grad():
            out = projector.mlp(merged.to(torch.bfloat16)).float()
        assert (out - c.golden["projector_out"][:1]).abs().max() <= 0.05  # observed 0.013
