"""The demo's connector distillation onto attribute codes (`train.connector_codes`) and the ToMe trace replay
it labels merged tokens with."""

import numpy as np
import pytest
import torch

from videochat_flash.data.dense import PATCH_HEADS
from videochat_flash.model.tome import replay_merges, tome_merge
from videochat_flash.model.videochat import VideoChatFlash
from videochat_flash.train import checkpoint as ckpt
from videochat_flash.train.connector_codes import (
    ConnectorCodesConfig,
    EncodedClips,
    attribute_tables,
    code_metrics,
    distil_connector_,
    encode_clips,
    save_connector,
    token_classes,
    token_codes,
    token_owners,
)
from videochat_flash.train.demo import DEMO_RECIPES
from videochat_flash.train.vision_pretrain import ClipStream


def test_replaying_a_trace_on_features_and_sizes_gives_the_merge_itself():
    torch.manual_seed(0)
    x = torch.randn(3, 64, 8)
    merged, trace = tome_merge(x, 12, num_heads=2, return_trace=True)
    summed = replay_merges(torch.cat([x, torch.ones(3, 64, 1)], dim=-1), trace, 64, 12)
    assert torch.allclose(summed[..., :8] / summed[..., 8:], merged, atol=1e-6)
    assert torch.equal(summed[..., 8], summed[..., 8].round())  # sizes are whole patch counts
    assert summed[..., 8].sum(1).tolist() == [64.0] * 3


def test_token_owner_is_the_majority_object_or_background():
    torch.manual_seed(1)
    owner = torch.full((1, 16), -1)
    owner[0, :6] = 0  # object 0 owns 6 patches, object 1 owns 2
    owner[0, 6:8] = 1
    features = torch.randn(1, 16, 4)
    features[0, :6] = 5.0  # identical features: object 0's patches merge together first
    _, trace = tome_merge(features, 4, num_heads=1, return_trace=True)
    counts = replay_merges(torch.nn.functional.one_hot(owner + 1, 3).float(), trace, 16, 4)
    who = token_owners(owner, trace, 4, min_share=0.5)
    share, major = (counts / counts.sum(-1, keepdim=True)).max(-1)
    expected = torch.where(share >= 0.5, major, torch.zeros_like(major))
    assert torch.equal(who, expected) and (who == 1).any()  # object 0 (label 1) owns a token of its own


def test_codes_sum_the_owners_class_vectors_and_background_has_none():
    tables = attribute_tables(("color", "shape"), dim=6, seed=0)
    assert all(torch.equal(t[0], torch.zeros(6)) for t in tables.values())
    assert [len(t) for t in tables.values()] == [len(PATCH_HEADS["color"]), len(PATCH_HEADS["shape"])]
    assert torch.equal(tables["color"], attribute_tables(("color", "shape"), 6, 0)["color"])  # seeded
    labels = {"object_color": torch.tensor([[2, 4]]), "object_shape": torch.tensor([[1, -100]])}
    who = torch.tensor([[0, 1, 2, 2]])
    classes = token_classes(who, labels, ("color", "shape"))
    assert classes["shape"].tolist() == [[0, 1, 0, 0]]  # background, labelled, unlabelled x2
    codes = token_codes(classes, tables)
    assert torch.equal(codes[0, 0], torch.zeros(6))
    assert torch.allclose(codes[0, 1], tables["color"][2] + tables["shape"][1])
    assert torch.allclose(codes[0, 2], tables["color"][4])  # an unlabelled attribute adds nothing


def test_code_accuracy_counts_only_tokens_whose_code_holds_the_attribute():
    tables = attribute_tables(("color", "motion"), dim=64, seed=0)
    # three object tokens (one moving, two standing still) and one background token
    classes = {"color": torch.tensor([1, 2, 3, 0]), "motion": torch.tensor([2, 0, 0, 0])}
    codes = token_codes(classes, tables)
    held = EncodedClips(torch.zeros(4, 1), codes, classes["color"], classes)
    metrics = code_metrics(lambda x: codes, held, tables)
    assert metrics == {"relative_mse": 0.0, "color_accuracy": 1.0, "motion_accuracy": 1.0}
    wrong = codes.clone()
    wrong[0] = tables["color"][1] + tables["motion"][3]  # right colour, wrong direction on the moving token
    metrics = code_metrics(lambda x: wrong, held, tables)
    assert (metrics["color_accuracy"], metrics["motion_accuracy"]) == (1.0, 0.0)


def test_distillation_fits_the_codes_and_the_saved_connector_loads(tiny_model_dir, tmp_path):
    torch.set_num_threads(1)
    model = VideoChatFlash.from_pretrained(tiny_model_dir).float().eval()
    cfg = ConnectorCodesConfig(
        steps=150, clips=96, heldout_clips=16, batch_tokens=256, heads=("color",), seed=2
    )
    tables = attribute_tables(cfg.heads, model.projector.cfg.out_dim, cfg.seed)
    frames = model.config.vision.num_frames
    held = encode_clips(model, ClipStream(cfg.seed + 10_000, cfg, frames).take(16), tables, cfg.min_share)
    before = code_metrics(model.projector.mlp, held, tables)["relative_mse"]
    metrics = distil_connector_(model, cfg, progress=False)
    assert metrics["heldout"]["relative_mse"] < 0.5 * before
    assert metrics["object_token_share"] > 0 and set(metrics["heldout"]) == {"relative_mse", "color_accuracy"}
    save_connector(model, tmp_path / "codes.safetensors", metrics)
    fresh = VideoChatFlash.from_pretrained(tiny_model_dir).float()
    ckpt.load_projector(fresh, tmp_path / "codes.safetensors")
    for name, value in model.projector.state_dict().items():
        assert torch.equal(fresh.projector.state_dict()[name], value), name
    for name, value in model.vision.state_dict().items():  # the tower was only read
        assert torch.equal(fresh.vision.state_dict()[name], value), name
    # reproducible by seed, whatever the connector held before
    for p in fresh.projector.parameters():
        p.data.normal_()
    assert distil_connector_(fresh, cfg, progress=False)["heldout"] == metrics["heldout"]
    for name, value in model.projector.state_dict().items():
        assert torch.equal(fresh.projector.state_dict()[name], value), name


def test_the_demo_codes_recipe_loads_and_bad_fields_are_named(tmp_path):
    cfg = ConnectorCodesConfig.from_yaml(DEMO_RECIPES / "stage0_codes.yaml", seed=5)
    assert cfg.heads == ("color", "shape", "motion", "onset") and cfg.seed == 5
    path = tmp_path / "r.yaml"
    path.write_text("connector_codes:\n  stepz: 3\n")
    with pytest.raises(ValueError, match="stepz"):
        ConnectorCodesConfig.from_yaml(path)
    with pytest.raises(ValueError, match="size"):
        ConnectorCodesConfig(heads=("color", "size"))


def test_clips_are_seeded():
    cfg = ConnectorCodesConfig(frame_size=32)
    a, b = ClipStream(1, cfg, 4).take(5), ClipStream(1, cfg, 4).take(5)
    assert len(a) == 5 and all(np.array_equal(x.frames, y.frames) for x, y in zip(a, b, strict=True))
