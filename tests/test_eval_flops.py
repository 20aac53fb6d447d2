"""FLOPs / memory estimator: formulas vs torch's FlopCounterMode on tiny random models, parameter counts, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from videochat_flash.cli import main
from videochat_flash.config import CompressionConfig
from videochat_flash.errors import CheckpointError
from videochat_flash.eval import flops
from videochat_flash.model.factory import build_tiny_checkpoint
from videochat_flash.model.videochat import VideoChatFlash

# FlopCounterMode knows the CUDA attention kernels; on CPU scaled_dot_product_attention dispatches to this op.
_CPU_SDPA = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, out_shape=None, **kw: (
        sdpa_flop_count(q, k, v)
    )
}
COMPRESSIONS = {
    "off": None,
    "uniform+attention": CompressionConfig(True, "uniform0_attention", (1, 3), (1.0, 0.5, 0.25)),
    "attention": CompressionConfig(True, "attention", (2,), (1.0, 0.3)),
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    # 96 px / patch 16: 36 patches per frame, 144 per clip, ToMe 144 -> 72 -> 64; 4 LLM layers.
    return build_tiny_checkpoint(tmp_path_factory.mktemp("flops_ckpt"), seed=1, image_size=96, layers=4)


@pytest.fixture(scope="module")
def model(ckpt):
    return VideoChatFlash.from_pretrained(ckpt)


def counted(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=_CPU_SDPA) as counter, torch.inference_mode():
        fn()
    return counter.get_total_flops()


def close(measured: int, predicted: int, tol: float = 0.02) -> bool:
    return measured > 0 and abs(predicted - measured) <= tol * measured


def test_encoder_and_projector(model):
    cfg = model.config
    clips = 3
    pixels = torch.randn(clips, cfg.frames_per_clip, 3, cfg.image_size, cfg.image_size)
    enc = flops.encoder_clip_flops(cfg.vision)
    assert enc["tokens"] == 4 * 36
    assert close(counted(lambda: model.vision(pixels)), clips * enc["total"])
    features = model.vision(pixels).detach()
    p = cfg.projector
    assert flops.merge_schedule(144, 64) == [72, 8]
    tome = flops.tome_flops(144, 64, cfg.vision.hidden_size, p.merge_heads)
    mlp = flops.projector_flops(p.in_dim, p.out_dim, 64)
    assert close(counted(lambda: model.projector(features, 64)), clips * (tome + mlp))
    # the whole visual path of a 12-frame video
    frames = torch.randint(0, 255, (12, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8).numpy()
    assert close(counted(lambda: model.encode_frames(frames)), clips * (enc["total"] + tome + mlp))


@pytest.mark.parametrize("setting", list(COMPRESSIONS))
def test_llm_prefill_and_decode(model, setting):
    compression = COMPRESSIONS[setting]
    c = model.config.llm
    text, visual, start = 30, 256, 12
    x = torch.randn(1, text + visual, c.hidden_size)
    cache = model.llm.new_cache()
    measured = counted(lambda: model.llm.prefill(x, cache, visual=(start, visual), compression=compression))
    cost = flops.prefill_cost(c, text, visual, compression)
    assert close(measured, cost.total)
    assert cache.lengths == cost.lengths  # a layer caches what it processed
    if compression is not None:
        assert cost.lengths[-1] < cost.lengths[0] and cost.stages
        assert (cost.ranking > 0) == any(s["type"] == "attention" for s in cost.stages)
    else:
        assert cost.lengths == [text + visual] * c.num_hidden_layers and cost.ranking == 0
    kv = flops.kv_cache_bytes(c, cache.lengths, 4)
    per_token = 2 * c.num_key_value_heads * c.head_dim * 4
    assert kv == [n * per_token for n in cache.lengths]
    before = list(cache.lengths)
    assert close(counted(lambda: model.llm.decode(5, cache)), flops.decode_flops(c, before))
    steps = 3
    start_lengths = list(cache.lengths)
    measured = counted(lambda: [model.llm.decode(7, cache) for _ in range(steps)])
    assert close(measured, flops.decode_total_flops(c, start_lengths, steps))


def test_estimate_is_consistent(model):
    cfg = model.config
    est = flops.estimate(cfg, 30, compression=COMPRESSIONS["uniform+attention"], text_tokens=20, new_tokens=4)
    assert est["frames"] == 32 and est["clips"] == 8  # rounded up to whole clips
    assert est["tokens"]["visual"] == 32 * 16 and est["tokens"]["prompt"] == 20 + 512
    f = est["flops"]
    assert f["prefill"]["lengths"] == [532] * 4
    assert f["prefill_compressed"]["lengths"] == [532, 276, 276, 148]
    assert f["total_compressed"] < f["total"]
    m = est["memory"]
    assert m["kv_cache_compressed"]["total"] < m["kv_cache"]["total"]
    assert m["weights"]["total"] == sum(p.numel() for p in model.parameters()) * 2
    text = flops.format_estimate(est)
    assert "after layer  1 (uniform): 512 -> 256" in text and "after layer  3 (attention): 256 -> 128" in text


def test_param_counts(model):
    counts = flops.param_counts(model.config)
    assert counts["vision"] == sum(p.numel() for p in model.vision.parameters())
    assert counts["projector"] == sum(p.numel() for p in model.projector.parameters())
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    # REFERENCE §1.6: the released 2B checkpoint's parameter counts
    _, cfg = flops.model_config("2b-448")
    two_b = flops.param_counts(cfg)
    assert two_b["vision"] == 290_479_104 and two_b["projector"] == 3_935_232
    assert two_b["llm_embed"] + two_b["llm_layers"] + two_b["lm_head"] == 1_777_088_000
    assert two_b["total"] * 2 / 1e9 == pytest.approx(4.143, abs=1e-3)


def test_model_config_sources(ckpt):
    name, cfg = flops.model_config(ckpt)
    assert cfg.image_size == 96 and name == ckpt.name
    for alias, key in (
        ("7B-448", "7b-448"),
        ("OpenGVLab/VideoChat-Flash-Qwen2-7B_res224", "7b-224"),
        ("2b", "2b-448"),
    ):
        assert flops.model_config(alias)[0] == key
    _, seven = flops.model_config("7b-224")
    assert (seven.image_size, seven.llm.hidden_size, seven.vision.num_blocks) == (224, 3584, 23)
    with pytest.raises(CheckpointError, match="unknown model"):
        flops.model_config("13b")


def test_released_numbers():
    _, cfg = flops.model_config("7b-448")
    est = flops.estimate(cfg, 1024)
    assert est["tokens"]["per_frame_encoder"] == 784 and est["tokens"]["visual"] == 16384
    stages = est["flops"]["prefill_compressed"]["stages"]
    assert [(s["layer"], s["visual_before"], s["visual_after"]) for s in stages] == [
        (4, 16384, 12288),
        (18, 12288, 4096),
    ]
    # Qwen2-7B: 56 KiB of KV cache per token in 16-bit (REFERENCE §7.3 / kv_cache.py)
    assert est["memory"]["kv_cache"]["total"] == 28 * (16384 + 64 + 256) * 2 * 4 * 128 * 2
    long = flops.estimate(cfg, 10000)
    assert any("tokenizer_model_max_length" in n for n in long["notes"])


def test_flops_cli(capsys, ckpt):
    assert main(["flops", "--model", "7b-448", "--frames", "1024", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)
    assert est["model"] == "7b-448" and est["dtype"] == "bfloat16" and est["frames"] == 1024
    argv = [
        "flops",
        "--model",
        str(ckpt),
        "--frames",
        "64,128",
        "--compress-type",
        "uniform",
        "--compress-layers",
        "2",
    ]
    assert main([*argv, "--compress-ratios", "1,0.5", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert out.count("LLM prefill, compr.") == 2 and "float32" in out and "uniform layers=[2]" in out
    assert main(["flops", "--model", "nope", "--frames", "8"]) == 2
    assert "unknown model" in capsys.readouterr().err
