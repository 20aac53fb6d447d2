"""LoRA: parameter counts, frozen bases, adapter files, merged weights equal adapter + base."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tests.test_train_support import (
    make_dataset,
    one_thread,  # noqa: F401  (autouse fixture)
    tiny_recipe,
)
from videochat_flash.train import lora as L


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.q_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, 2 * d, bias=False)
        self.o_proj = nn.Linear(2 * d, d)

    def forward(self, x):
        return self.o_proj(torch.cat([self.q_proj(x), x], -1) + self.v_proj(x))


class Toy(nn.Module):
    def __init__(self, d: int = 8):
        super().__init__()
        self.llm = nn.Sequential(Block(d), Block(d))
        self.vision = nn.Sequential(Block(d))

    def forward(self, x):
        return self.llm(self.vision(x))


def _randomize_adapters(model: nn.Module) -> None:
    with torch.no_grad():
        for m in L.lora_modules(model).values():
            m.lora_b.normal_(0, 0.5)


def test_lora_counts_freezing_and_identity_start():
    torch.manual_seed(0)
    model = Toy(8)
    x = torch.randn(5, 8)
    ref = model(x)
    cfg = L.LoraConfig(rank=2, alpha=4.0, target_modules=["q_proj", "v_proj"], prefixes=["llm."])
    names = L.apply_lora(model, cfg)
    assert names == ["llm.0.q_proj", "llm.0.v_proj", "llm.1.q_proj", "llm.1.v_proj"]
    assert not isinstance(model.vision[0].q_proj, L.LoRALinear)
    # r·(in + out) per adapted layer: q 8->8, v 8->16
    assert L.lora_parameter_count(model) == 2 * (2 * (8 + 8) + 2 * (8 + 16))
    L.mark_only_lora_trainable(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith((".lora_a", ".lora_b")) for n in trainable)
    assert "llm.0.q_proj.weight" in dict(model.named_parameters())  # base names unchanged
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)  # B = 0: no change at start


def test_merged_model_equals_adapter_plus_base(tmp_path):
    torch.manual_seed(1)
    model = Toy(8)
    cfg = L.LoraConfig(
        rank=3,
        alpha=6.0,
        dropout=0.2,
        target_modules=["q_proj", "v_proj", "o_proj"],
        prefixes=["llm.", "vision."],
    )
    L.apply_lora(model, cfg)
    _randomize_adapters(model)
    model.eval()  # dropout off
    x = torch.randn(7, 8)
    with_adapter = model(x)
    L.save_adapter(model, tmp_path / "adapter", cfg)
    meta = json.loads((tmp_path / "adapter" / L.ADAPTER_CONFIG).read_text())
    assert meta["rank"] == 3 and meta["scaling"] == 2.0
    base_state = {k: v.clone() for k, v in model.state_dict().items() if not L.is_lora_parameter(k)}
    tensors, _ = L.read_adapter(tmp_path / "adapter")
    merged_state = L.merge_adapter_into_state_dict(base_state, tensors, cfg.scaling)
    L.merge_lora(model)
    assert not L.lora_modules(model) and type(model.llm[0].q_proj) is nn.Linear
    torch.testing.assert_close(model(x), with_adapter, rtol=1e-5, atol=1e-5)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, merged_state[k], rtol=1e-6, atol=1e-6)


def test_adapter_round_trip(tmp_path):
    torch.manual_seed(2)
    cfg = L.LoraConfig(rank=2, target_modules=["q_proj"])
    a, b = Toy(8), Toy(8)
    b.load_state_dict(a.state_dict())
    L.apply_lora(a, cfg)
    L.apply_lora(b, cfg)
    _randomize_adapters(a)
    L.save_adapter(a, tmp_path, cfg, key_map=lambda n: "model." + n)
    assert "model.llm.0.q_proj.lora_a" in L.read_adapter(tmp_path)[0]
    L.load_adapter(b, tmp_path, key_map=lambda n: "model." + n)
    x = torch.randn(3, 8)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_lora_training_on_the_tiny_model(tmp_path):
    from safetensors.torch import load_file

    from videochat_flash.model.videochat import VideoChatFlash
    from videochat_flash.train.checkpoint import merge_lora_checkpoint
    from videochat_flash.train.data import collate_samples
    from videochat_flash.train.distributed import DistEnv
    from videochat_flash.train.recipes import recipe_from_dict
    from videochat_flash.train.trainer import Trainer, parameter_counts

    mixture = make_dataset(tmp_path / "data", videos=2, images=1, texts=1)
    spec = tiny_recipe(
        tmp_path,
        mixture,
        lora={"enabled": True, "rank": 4, "alpha": 8.0, "dropout": 0.0},
        train={"tunable_parts": ["mm_mlp_adapter", "mm_language_model"], "max_steps": 2},
        optim={"lr": 5e-2, "warmup_ratio": 0.0},
    )
    trainer = Trainer(recipe_from_dict(spec), DistEnv())
    model = trainer.model
    cfg = model.config.llm
    d, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
    per_layer = 4 * ((d + d) + (d + kv) + (d + kv) + (d + d)) + 4 * (3 * (d + cfg.intermediate_size))
    counts = parameter_counts(model)
    assert counts["lora"] == (per_layer * cfg.num_hidden_layers,) * 2
    assert counts["mm_language_model"][1] == 0  # LLM base frozen under LoRA
    assert counts["mm_mlp_adapter"][0] == counts["mm_mlp_adapter"][1]  # projector still fully trained
    assert counts["mm_vision_tower"][1] == 0
    result = trainer.run()
    assert result.steps == 2
    final = result.final_dir
    saved = load_file(str(final / "model.safetensors"))
    assert not any("lora" in k for k in saved)
    adapter = load_file(str(final / "adapter" / L.ADAPTER_WEIGHTS))
    assert (
        "model.layers.0.self_attn.q_proj.lora_a" in adapter and len(adapter) == 2 * 7 * cfg.num_hidden_layers
    )

    # the trained adapter + base, the in-memory merge and the merged checkpoint file all give the same loss
    model.eval()
    batch = collate_samples([trainer.dataset[i] for i in range(len(trainer.dataset))])
    with torch.no_grad():
        reference = model(list(batch))
        merged_dir = merge_lora_checkpoint(final, tmp_path / "merged")
        from_file = VideoChatFlash.from_pretrained(merged_dir)(list(batch))
        L.merge_lora(model)
        in_memory = model(list(batch))
    assert not torch.equal(
        adapter["model.layers.0.self_attn.q_proj.lora_b"],
        torch.zeros_like(adapter["model.layers.0.self_attn.q_proj.lora_b"]),
    )
    torch.testing.assert_close(in_memory, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_file, reference, rtol=1e-5, atol=1e-5)


def test_every_adapter_gets_gradients_including_the_encoder(tmp_path):
    """An adapter whose module weight is used outside its forward would get no gradient: none may be bypassed."""
    from videochat_flash.train.distributed import DistEnv
    from videochat_flash.train.recipes import recipe_from_dict
    from videochat_flash.train.trainer import Trainer

    mixture = make_dataset(tmp_path / "data", videos=2, images=0, texts=0)
    spec = tiny_recipe(
        tmp_path,
        mixture,
        lora={"enabled": True, "rank": 2, "vision": True},
        train={"tunable_parts": ["mm_mlp_adapter"]},
    )
    trainer = Trainer(recipe_from_dict(spec), DistEnv())
    trainer.wrapped(list(next(trainer.data_iterator()))).backward()
    adapters = {n: p for n, p in trainer.model.named_parameters() if L.is_lora_parameter(n)}
    assert any(n.startswith("vision.") for n in adapters) and any(n.startswith("llm.") for n in adapters)
    assert any(".attn.qkv." in n for n in adapters)  # the UMT qkv goes through its module, so adapters apply
    for name, p in adapters.items():
        if name.endswith(".lora_b"):  # B starts at 0, so only B has a gradient at the first step
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_lora_needs_targets():
    with pytest.raises(Exception, match="no linear layers"):
        L.apply_lora(Toy(4), L.LoraConfig(target_modules=["nothing"]))
