"""Dense per-patch labels of synthetic clips and the vision tower's pre-training on them (the demo's stage 0a)."""

import json

import numpy as np
import pytest
import torch

from videochat_flash.config import UMTConfig
from videochat_flash.data.dense import (
    COLOR_CLASSES,
    MOTION_CLASSES,
    ONSET_CLASSES,
    PATCH_HEADS,
    SHAPE_CLASSES,
    DenseClip,
    patch_labels,
    patch_owner,
    sample_dense_clips,
    simulate_yuv420,
)
from videochat_flash.data.shapes import PALETTE
from videochat_flash.model.umt import UMTEncoder
from videochat_flash.model.videochat import VideoChatFlash
from videochat_flash.train import checkpoint as ckpt
from videochat_flash.train.vision_pretrain import (
    MOTION_HEADS,
    DenseHeads,
    VisionPretrainConfig,
    dense_accuracy,
    dense_losses,
    fan_in_mlp_,
    make_batch,
    object_means,
    pretrain_vision,
    umt_state_dict,
    whiten_patch_embedding_,
)

TINY_TOWER = UMTConfig(hidden_size=32, num_layers=3, num_heads=2, patch_size=8, image_size=32)


def test_patch_owner_takes_the_largest_cover_above_the_threshold():
    owner = np.full((1, 16, 16), -1, dtype=np.int16)
    owner[0, :8, :8] = 0  # patch (0, 0) fully object 0
    owner[0, :2, 8:16] = 1  # patch (0, 1): 25 % object 1 -> kept
    owner[0, 8:9, 0:8] = 1  # patch (1, 0): 12.5 % object 1 -> background
    owner[0, 8:12, 8:16] = 0  # patch (1, 1): 50 % object 0 ...
    owner[0, 12:14, 8:16] = 1  # ... and 25 % object 1 -> object 0
    got = patch_owner(owner, image_size=16, patch=8)
    assert got.tolist() == [[[0, 1], [-1, 0]]]
    # resized like the frames: at twice the size every patch covers a quarter of the original one
    assert patch_owner(owner, image_size=32, patch=8)[0, 0].tolist() == [0, 0, 1, 1]


def test_patch_labels_name_what_covers_each_patch():
    owner = np.full((2, 16, 16), -1, dtype=np.int16)
    owner[:, :8, :8] = 0
    owner[1, 8:, 8:] = 1
    objects = [
        {
            "color": COLOR_CLASSES.index("red"),
            "shape": SHAPE_CLASSES.index("star"),
            "motion": MOTION_CLASSES.index("left"),
            "onset": ONSET_CLASSES.index("earlier"),
        },
        {
            "color": COLOR_CLASSES.index("blue"),
            "shape": SHAPE_CLASSES.index("circle"),
            "motion": MOTION_CLASSES.index("up"),
            "onset": ONSET_CLASSES.index("frame 1"),
        },
    ]
    clip = DenseClip(frames=np.zeros((2, 16, 16, 3), np.uint8), owner=owner, objects=objects, count=2)
    labels = patch_labels(clip, 16, 8)
    assert set(labels) == set(PATCH_HEADS)
    assert labels["color"][1].tolist() == [[1, 0], [0, 3]]
    assert labels["shape"][0].tolist() == [[SHAPE_CLASSES.index("star"), 0], [0, 0]]
    assert labels["onset"][1, 1, 1] == ONSET_CLASSES.index("frame 1")


def test_sampled_clips_are_seeded_and_labels_match_the_pixels():
    a = sample_dense_clips(np.random.default_rng(7), max_clips=3, needle_prob=0.5)
    b = sample_dense_clips(np.random.default_rng(7), max_clips=3, needle_prob=0.5)
    assert len(a) == len(b) >= 1
    for x, y in zip(a, b, strict=True):
        assert (
            np.array_equal(x.frames, y.frames) and np.array_equal(x.owner, y.owner) and x.objects == y.objects
        )
    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(20):
        for clip in sample_dense_clips(rng, max_clips=2, needle_prob=0.3):
            assert clip.count == len(np.unique(clip.owner[clip.owner >= 0]))
            for k, obj in enumerate(clip.objects):
                pixels = clip.frames[clip.owner == k]
                if len(pixels) < 20:
                    continue
                want = np.asarray(PALETTE[COLOR_CLASSES[obj["color"]]], dtype=float)
                # interior pixels keep their colour through the simulated chroma subsampling
                assert np.median(np.abs(pixels - want).sum(axis=1)) < 40
                checked += 1
    assert checked > 10


def test_simulated_yuv420_keeps_flat_colours_and_bleeds_edges():
    flat = np.full((1, 8, 8, 3), (230, 30, 30), dtype=np.uint8)
    assert np.abs(simulate_yuv420(flat).astype(int) - flat).max() <= 1
    edge = np.full((1, 8, 8, 3), 128, dtype=np.uint8)
    edge[:, :, 3:] = (40, 80, 255)  # a colour edge inside a 2x2 chroma block (column 3 | 4 ... 2 | 3)
    out = simulate_yuv420(edge).astype(int)
    assert np.abs(out[0, 0, 2] - 128).max() > 5  # chroma of column 3 leaked into column 2


def test_umt_file_loads_into_a_model_tower(tiny_model_dir, tmp_path):
    """`umt_state_dict` writes the released UMT names; the trainer's `load_umt` reads every tower weight back."""
    from videochat_flash.model.umt import UMTEncoder

    model = VideoChatFlash.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    tower = UMTEncoder(model.config.vision)
    for p in tower.parameters():
        p.data.normal_()
    state = umt_state_dict(tower)
    assert "encoder.norm.weight" in state and not any("vision_layernorm" in k for k in state)
    torch.save({"model": state}, tmp_path / "umt.pt")
    ckpt.load_umt(model, tmp_path / "umt.pt")
    for name, value in tower.state_dict().items():
        assert torch.equal(model.vision.state_dict()[name], value), name


def test_pretraining_teaches_the_tower_colour_and_writes_a_loadable_umt_file(tmp_path):
    torch.set_num_threads(1)
    cfg = VisionPretrainConfig(
        steps=120,
        batch_size=16,
        clips_per_scene=4,
        lr=3e-3,
        warmup_steps=5,
        frame_size=32,
        image_sizes=(32,),
        eval_clips=64,
        log_every=40,
        seed=1,
    )
    metrics = pretrain_vision(TINY_TOWER, tmp_path / "umt.pt", cfg, progress=False)
    assert metrics["heldout"]["32"]["color"] > 0.8  # chance is 0.2: the heads read the tower's tokens
    saved = json.loads((tmp_path / "umt.json").read_text())
    assert saved["heldout"] == metrics["heldout"] and len(saved["history"]) == 3
    raw = torch.load(tmp_path / "umt.pt", weights_only=True)["model"]
    assert "encoder.patch_embed.proj.weight" in raw and "encoder.norm.bias" in raw
    tensors = ckpt.umt_tensors(tmp_path / "umt.pt")
    assert all(k.startswith("model.vision_tower.vision_tower.encoder.") for k in tensors)


def test_recipe_section_is_validated(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("vision_pretrain:\n  steps: 7\n  image_sizes: [64, 96]\n")
    cfg = VisionPretrainConfig.from_yaml(path, seed=3)
    assert (cfg.steps, cfg.image_sizes, cfg.seed) == (7, (64, 96), 3)
    path.write_text("vision_pretrain:\n  stepz: 7\n")
    with pytest.raises(ValueError, match="stepz"):
        VisionPretrainConfig.from_yaml(path)


def test_object_means_average_each_objects_patches():
    tokens = torch.arange(12, dtype=torch.float32).view(1, 6, 2)
    owner = torch.tensor([[-1, 0, 0, 1, -1, 1]])
    got = object_means(tokens, owner)
    assert torch.allclose(got[0, 0], tokens[0, 1:3].mean(0)) and torch.allclose(
        got[0, 1], tokens[0, [3, 5]].mean(0)
    )


def test_batch_labels_cover_patches_and_visible_objects():
    clips = sample_dense_clips(np.random.default_rng(3), max_clips=4, needle_prob=0.5)
    pixels, labels = make_batch(clips, 32, 8)
    b, t = len(clips), clips[0].frames.shape[0]
    assert pixels.shape == (b, t, 3, 32, 32)
    assert labels["color"].shape == labels["owner"].shape == (b, t * 16)
    for i, clip in enumerate(clips):
        owned = set(labels["owner"][i][labels["owner"][i] >= 0].tolist())
        labelled = {k for k in range(labels["object_shape"].shape[1]) if labels["object_shape"][i, k] >= 0}
        assert owned == labelled  # an object gets object labels iff it owns a patch of the clip
        for k in owned:
            assert labels["object_color"][i, k] == clip.objects[k]["color"]
    heads = DenseHeads(8)
    logits = heads(torch.randn(b, t * 16, 8), labels["owner"])
    losses = dense_losses(logits, labels)
    assert {"color", "object_shape", "count"} <= set(losses) and all(
        torch.isfinite(v) for v in losses.values()
    )
    acc = dense_accuracy(logits, labels)
    assert acc["object_color"][1] == sum(int((labels["object_color"][i] >= 0).sum()) for i in range(b))


def test_the_demo_vision_recipe_loads():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "recipes" / "demo" / "stage0_vision.yaml"
    cfg = VisionPretrainConfig.from_yaml(path)
    assert cfg.steps > 0 and 64 in cfg.image_sizes and 96 in cfg.image_sizes


def test_whitened_patch_embedding_decorrelates_patches_and_centres_them():
    rng = np.random.default_rng(0)
    clips = [c for _ in range(6) for c in sample_dense_clips(rng, 32, 4, 0.0, 4)]
    pixels, _ = make_batch(clips, 32, TINY_TOWER.patch_size)
    encoder = UMTEncoder(TINY_TOWER)
    whiten_patch_embedding_(encoder, pixels, gain=2.0)
    with torch.no_grad():
        tokens = encoder.patch_embed(pixels).flatten(0, 1).double()  # [N, C]: before the position table
    assert tokens.mean(dim=0).abs().max() < 1e-3
    cov = torch.cov(tokens.T, correction=0)
    # variance gain**2 on every channel, no correlation between channels (the sample's own PCA basis)
    torch.testing.assert_close(
        cov, 4.0 * torch.eye(TINY_TOWER.hidden_size, dtype=torch.float64), atol=1e-3, rtol=0
    )


def test_fan_in_mlp_init_scales_with_width_and_is_seeded():
    a, b = UMTEncoder(TINY_TOWER), UMTEncoder(TINY_TOWER)
    fan_in_mlp_(a, seed=3)
    fan_in_mlp_(b, seed=3)
    for block_a, block_b in zip(a.blocks, b.blocks, strict=True):
        w = block_a.mlp.fc1.weight.detach()
        torch.testing.assert_close(w, block_b.mlp.fc1.weight.detach())
        assert abs(float(w.std()) - TINY_TOWER.hidden_size**-0.5) < 0.02


def test_patch_init_picks_the_whitened_or_the_plain_patch_embedding(tmp_path):
    with pytest.raises(ValueError, match="patch_init"):
        VisionPretrainConfig(patch_init="zeros")
    torch.set_num_threads(1)
    stds = {}
    for init in ("pca", "random"):
        cfg = VisionPretrainConfig(
            steps=1, batch_size=4, lr=1e-6, frame_size=32, image_sizes=(32,), eval_clips=4, init_clips=16,
            patch_init=init, seed=1,
        )  # fmt: skip
        pretrain_vision(TINY_TOWER, tmp_path / f"{init}.pt", cfg, progress=False)
        raw = torch.load(tmp_path / f"{init}.pt", weights_only=True)["model"]
        stds[init] = float(raw["encoder.patch_embed.proj.weight"].std())
    # whitening gives each output channel unit variance x gain over pixels of std ~1: weights far above 0.02
    assert stds["random"] < 0.03 < 0.1 < stds["pca"]


def test_motion_warmup_trains_the_motion_heads_alone_first(tmp_path):
    torch.set_num_threads(1)
    cfg = VisionPretrainConfig(
        steps=4,
        batch_size=4,
        frame_size=32,
        image_sizes=(32,),
        eval_clips=4,
        log_every=1,
        motion_warmup_steps=2,
        patch_init="random",
    )
    history = pretrain_vision(TINY_TOWER, tmp_path / "umt.pt", cfg, progress=False)["history"]
    losses = [set(row) - {"step", "seconds"} for row in history]
    assert losses[0] == losses[1] == set(MOTION_HEADS)
    assert {"color", "object_shape", "count"} <= losses[2] == losses[3]


def test_motion_mix_keeps_a_share_of_motion_scenes_after_the_warmup(tmp_path, monkeypatch):
    from videochat_flash.train import vision_pretrain

    torch.set_num_threads(1)
    taken = []
    original = vision_pretrain.ClipStream.take

    def record(self, n):
        if n:
            taken.append(("motion" if self.motion_only else "pools", n))
        return original(self, n)

    monkeypatch.setattr(vision_pretrain.ClipStream, "take", record)
    cfg = VisionPretrainConfig(
        steps=3,
        batch_size=4,
        frame_size=32,
        image_sizes=(32,),
        eval_clips=4,
        init_clips=4,
        motion_warmup_steps=1,
        motion_mix=0.5,
        patch_init="random",
    )
    pretrain_vision(TINY_TOWER, tmp_path / "umt.pt", cfg, progress=False)
    assert taken[:5] == [("motion", 4), ("pools", 2), ("motion", 2), ("pools", 2), ("motion", 2)]
    with pytest.raises(ValueError, match="motion_mix"):
        VisionPretrainConfig(motion_mix=1.0)
