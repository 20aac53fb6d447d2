"""Shared helpers for the benchmark scripts: the command line, Markdown tables, real-shape configs, fast random
init of big models, memory probes. Benchmarks are never run in CI and nothing here is imported by the package.
"""

from __future__ import annotations

import os
import platform
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

README = Path(__file__).with_name("README.md")
README_HEADER = (
    "# Benchmarks\n\n"
    "Scripts that print a table and the command that produced it. Never run in CI; numbers depend on the\n"
    "machine. Each section below was appended by the script's author with the output of one run.\n"
)

# The released shapes (REFERENCE §1.2, §1.4) as `videochat_flash.eval.flops` defines them; UMT-L is the same
# tower in every released model, only its frame size differs.
RELEASED = {"2b": "2b-448", "7b": "7b-448"}


# ------------------------------------------------------------------------------------------------ output
def command_line() -> str:
    """The exact command that is running, as a user would type it."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"machine: {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads, "
        f"{torch.backends.cpu.get_cpu_capability()}), {available_memory_bytes() / 2**30:.1f} GiB available, "
        f"load average {load:.1f}"
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A Markdown table; ``align`` is one char per column ('l' or 'r'), default: first left, rest right."""
    align = align or "l" + "r" * (len(headers) - 1)
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def append_readme(title: str, body: str, path: Path = README) -> None:
    """Append a section to benchmarks/README.md (created with a short header if absent). Never rewrites."""
    new = not path.exists()
    with open(path, "a", encoding="utf-8") as f:
        if new:
            f.write(README_HEADER)
        f.write(f"\n## {title}\n\n{body.rstrip()}\n")


# ------------------------------------------------------------------------------------------------ timing
def timed(fn: Callable[[], object], reps: int = 1, warmup: Callable[[], object] | None = None) -> list[float]:
    """Seconds of ``reps`` calls of ``fn`` (after one call of ``warmup`` if given)."""
    if warmup is not None:
        warmup()
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def best(values: Sequence[float]) -> float:
    """The fastest repetition: on a shared machine the least disturbed one (used for every timing)."""
    return min(values)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# ------------------------------------------------------------------------------------------------ memory
def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (0 when unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process's address space (VmHWM).

    Not ``getrusage().ru_maxrss``: Linux carries that over fork and exec, so a child started by a parent
    holding a big model would report the parent's peak. Falls back to it where /proc is missing.
    """
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Reset the peak (VmHWM) to the current RSS (Linux ≥ 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def current_rss_bytes() -> int:
    kib = _status_kib("VmRSS")
    return 0 if kib is None else kib * 1024


# ------------------------------------------------------------------------------------------------ models
def real_config_dict(model: str, image_size: int = 448) -> dict:
    """config.json content with the released shapes (``model`` "2b" or "7b") at 224 or 448 px."""
    from videochat_flash.eval.flops import BUILTIN_MODELS

    if model not in RELEASED:
        raise ValueError(f"unknown model {model!r} (choose {', '.join(RELEASED)})")
    if image_size not in (224, 448):
        raise ValueError(f"image size must be 224 or 448, got {image_size}")
    data = dict(BUILTIN_MODELS[RELEASED[model]])
    data["mm_vision_tower"] = "umt-hd-large" if image_size == 448 else "umt-large"
    return data


def param_bytes(model: str, dtype: torch.dtype) -> int:
    """Weight bytes of the real-shape model, from the shapes alone."""
    from videochat_flash.config import VideoChatFlashConfig
    from videochat_flash.eval.flops import param_counts

    count = param_counts(VideoChatFlashConfig.from_dict(real_config_dict(model)))["total"]
    return count * torch.empty((), dtype=dtype).element_size()


@torch.no_grad()
def fill_random_(module: torch.nn.Module, seed: int = 0, block: int = 1_000_003) -> None:
    """Fast O(1)-activation random init of materialised (``to_empty``) weights.

    Matrices get N(0, 1/fan_in) values tiled from one pre-drawn block (a memcpy per parameter instead of a
    random draw per element: seconds, not minutes, for 7B), norm weights 1, other vectors small values.
    The periodic pattern does not matter for timing.
    """
    g = torch.Generator().manual_seed(seed)
    base32 = torch.randn(block, generator=g)
    bases: dict[tuple[torch.dtype, float], torch.Tensor] = {}
    for name, p in module.named_parameters():
        flat = p.view(-1)
        if p.ndim >= 2:
            scale = p[0].numel() ** -0.5
            key = (p.dtype, scale)
            if key not in bases:  # few distinct fan-ins: one pre-scaled block each, then one pass per weight
                bases[key] = (base32 * scale).to(p.dtype)
            base = bases[key]
            for start in range(0, flat.numel(), block):
                chunk = flat[start : start + block]
                chunk.copy_(base[: chunk.numel()])
        elif "norm" in name and name.endswith("weight"):
            flat.fill_(1.0)
        else:
            flat.copy_((base32[: flat.numel()] * 0.02).to(p.dtype))


def random_model(config_dict: dict, dtype: torch.dtype, tokenizer=None, seed: int = 0):
    """A `VideoChatFlash` with random weights, built on meta, cast, materialised in ``dtype`` and filled.

    Casting on meta first means a bf16 7B model never exists in float32 (which would not fit in RAM).
    """
    from videochat_flash.config import VideoChatFlashConfig
    from videochat_flash.model.videochat import VideoChatFlash

    config = VideoChatFlashConfig.from_dict(config_dict)
    model = VideoChatFlash.from_config(config, tokenizer, device="meta", dtype=dtype)
    model = model.to_empty(device="cpu")
    model.reset_buffers()
    fill_random_(model, seed)
    model.name_or_path = f"random-{config.llm.hidden_size}d-seed{seed}"
    return model.eval()
