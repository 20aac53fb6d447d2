"""LoRA adapters on linear layers: apply, count, save separately, merge into the base weights.

`LoRALinear` subclasses ``nn.Linear`` and keeps the frozen base ``weight``/``bias`` under their original names,
so the model's own checkpoint mapping still sees plain linear layers; only ``lora_a``/``lora_b`` are added.
``y = x Wᵀ + b + (dropout(x) Aᵀ Bᵀ) · alpha / rank`` with A ~ kaiming-uniform and B = 0 (the adapter starts
as the identity change).

Adapters are saved as ``adapter_model.safetensors`` + ``adapter_config.json``; tensor names are the adapted
module's name (mapped through an optional ``key_map``, e.g. to the checkpoint's names) + ``.lora_a``/``.lora_b``.
`merge_lora` folds the adapters into the weights and turns the layers back into ``nn.Linear``;
`merge_adapter_into_state_dict` does the same on a saved checkpoint's tensors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class LoraConfig:
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    prefixes: list[str] = field(default_factory=lambda: ["llm."])  # which submodules may be adapted

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Linear):
    """A frozen linear layer plus a trainable low-rank update."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        rank: int,
        alpha: float,
        dropout: float,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.rank = rank
        self.scaling = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_lora()

    def reset_lora(self) -> None:
        if self.lora_a.device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
            nn.init.zeros_(self.lora_b)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, alpha: float, dropout: float) -> LoRALinear:
        new = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            rank,
            alpha,
            dropout,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        new.weight = linear.weight
        new.bias = linear.bias
        new.weight.requires_grad_(False)
        if new.bias is not None:
            new.bias.requires_grad_(False)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        update = nn.functional.linear(nn.functional.linear(self.lora_dropout(x), self.lora_a), self.lora_b)
        return out + update * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_b @ self.lora_a) * self.scaling

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` whose weight includes the update."""
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.delta_weight().to(self.weight.dtype))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear


def _targets(model: nn.Module, config: LoraConfig) -> list[str]:
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or isinstance(module, LoRALinear):
            continue
        if not any(name.startswith(p) for p in config.prefixes):
            continue
        if name.rsplit(".", 1)[-1] in config.target_modules:
            names.append(name)
    return names


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_lora(model: nn.Module, config: LoraConfig) -> list[str]:
    """Replace every targeted ``nn.Linear`` by a `LoRALinear`; returns the adapted module names."""
    names = _targets(model, config)
    if not names:
        raise CheckpointError(
            f"LoRA found no linear layers named {config.target_modules} under {config.prefixes}"
        )
    for name in names:
        linear = model.get_submodule(name)
        _set_submodule(model, name, LoRALinear.from_linear(linear, config.rank, config.alpha, config.dropout))
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameter_count(model: nn.Module) -> int:
    return sum(m.lora_a.numel() + m.lora_b.numel() for m in lora_modules(model).values())


def is_lora_parameter(name: str) -> bool:
    return name.endswith(".lora_a") or name.endswith(".lora_b")


def mark_only_lora_trainable(model: nn.Module) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(is_lora_parameter(name))


def adapter_state_dict(
    model: nn.Module, key_map: Callable[[str], str] | None = None
) -> dict[str, torch.Tensor]:
    """The adapter tensors of ``model`` under saved names (see `rename_adapter_keys`)."""
    tensors = {n: p.detach().cpu() for n, p in model.named_parameters() if is_lora_parameter(n)}
    return rename_adapter_keys(tensors, key_map)


def rename_adapter_keys(
    tensors: Mapping[str, torch.Tensor], key_map: Callable[[str], str] | None = None
) -> dict[str, torch.Tensor]:
    """``{module}.lora_a`` -> ``{mapped module}.lora_a``.

    ``key_map`` maps a parameter name (``...q_proj.weight``) to its checkpoint name; the ``.weight`` suffix is
    then replaced by the adapter suffix.
    """
    out = {}
    for name, tensor in tensors.items():
        module, _, suffix = name.rpartition(".")
        out[_module_key(module, key_map) + "." + suffix] = tensor.contiguous()
    return out


def _module_key(name: str, key_map: Callable[[str], str] | None) -> str:
    weight = key_map(name + ".weight") if key_map else name + ".weight"
    if not weight.endswith(".weight"):
        raise CheckpointError(f"key map turned {name}.weight into {weight}, which does not end in .weight")
    return weight[: -len(".weight")]


def write_adapter(
    tensors: Mapping[str, torch.Tensor],
    directory: str | Path,
    config: LoraConfig,
    extra: Mapping | None = None,
) -> Path:
    """``adapter_model.safetensors`` (tensors as named) + ``adapter_config.json``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(dict(tensors), str(directory / ADAPTER_WEIGHTS))
    meta = {**asdict(config), "scaling": config.scaling, **(extra or {})}
    (directory / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return directory


def save_adapter(
    model: nn.Module,
    directory: str | Path,
    config: LoraConfig,
    key_map: Callable[[str], str] | None = None,
    extra: Mapping | None = None,
) -> Path:
    return write_adapter(adapter_state_dict(model, key_map), directory, config, extra)


def read_adapter(directory: str | Path) -> tuple[dict[str, torch.Tensor], LoraConfig]:
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        meta = json.loads((directory / ADAPTER_CONFIG).read_text())
        tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    except FileNotFoundError as exc:
        raise CheckpointError(f"LoRA adapter file missing: {exc.filename}") from None
    names = {f for f in LoraConfig.__dataclass_fields__}
    return tensors, LoraConfig(**{k: v for k, v in meta.items() if k in names})


def load_adapter(
    model: nn.Module, directory: str | Path, key_map: Callable[[str], str] | None = None
) -> None:
    """Copy saved adapter tensors into a model that already has `LoRALinear` layers (same config)."""
    tensors, _ = read_adapter(directory)
    modules = lora_modules(model)
    expected = {_module_key(name, key_map): m for name, m in modules.items()}
    missing = [k for k in expected if k + ".lora_a" not in tensors]
    if missing or len(tensors) != 2 * len(expected):
        raise CheckpointError(
            f"LoRA adapter in {directory} does not match the model (missing e.g. {missing[:1]})"
        )
    with torch.no_grad():
        for key, module in expected.items():
            module.lora_a.copy_(tensors[key + ".lora_a"])
            module.lora_b.copy_(tensors[key + ".lora_b"])


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and restore plain ``nn.Linear`` layers (in place)."""
    for name, module in list(lora_modules(model).items()):
        linear = module.to_linear()
        linear.weight.requires_grad_(module.weight.requires_grad)
        _set_submodule(model, name, linear)
    return model


def merge_adapter_into_state_dict(
    state: dict[str, torch.Tensor], adapter: Mapping[str, torch.Tensor], scaling: float
) -> dict[str, torch.Tensor]:
    """``W += scaling · B A`` for every adapter pair, on checkpoint tensors (names as saved)."""
    out = dict(state)
    bases = sorted({k[: -len(".lora_a")] for k in adapter if k.endswith(".lora_a")})
    for base in bases:
        key = base + ".weight"
        if key not in out:
            raise CheckpointError(f"adapter tensor {base}.lora_a has no base weight {key} in the checkpoint")
        w = out[key]
        delta = adapter[base + ".lora_b"].double() @ adapter[base + ".lora_a"].double() * scaling
        out[key] = (w.double() + delta).to(w.dtype)
    return out
