"""The training loop: build the model a recipe describes, freeze what it says, and run plain PyTorch.

`train(recipe)` is the entry point. One optimizer step = ``accumulation`` micro-batches per rank, each a
`SampleBatch` from the lazy dataset, forwarded as ``model(samples, compression=...)`` under autocast, the
loss divided by ``accumulation`` and back-propagated (gradient sync only on the last micro-batch); then
clipping, AdamW, the warmup + cosine schedule. Checkpoints (`checkpoint.py`) capture everything needed to
continue on exactly the same loss trajectory.

`dry_run(recipe)` builds the same model on the meta device and reports parameters per part, optimizer groups,
the batch arithmetic, a rough memory budget per device and the data counts — offline.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import CompressionConfig, VideoChatFlashConfig
from ..errors import CheckpointError, ConfigError
from ..inference.prompt import TextTokenizer
from . import checkpoint as ckpt
from . import lora as lora_mod
from .data import (
    MediaProcessor,
    MicroBatchSampler,
    SampleBatch,
    Skip,
    SupervisedDataset,
    VideoSampling,
    collate_samples,
    load_mixture,
    read_mixture,
)
from .distributed import (
    DistEnv,
    accumulation_context,
    all_reduce,
    block_lists,
    clip_grad_norm,
    estimate_memory,
    init_distributed,
    wrap_model,
)
from .feature_cache import FrozenTowerCache
from .recipes import TUNABLE_PARTS, Recipe, model_config_dict, resolve_path

log = logging.getLogger(__name__)

LORA_PART = "lora"
AUTOCAST_DTYPES = {"bf16": torch.bfloat16}


# -------------------------------------------------------------------------------------- model parts
def _clean_name(name: str) -> str:
    for wrapper in ("_orig_mod.", "module.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module."):
        name = name.replace(wrapper, "")
    return name


def part_of(name: str) -> str:
    """The tunable part (`mm_vision_tower`, `mm_mlp_adapter`, `mm_language_model`) a parameter belongs to."""
    from ..model.loading import hf_key, model_part

    name = _clean_name(name)
    if lora_mod.is_lora_parameter(name):
        name = name.rsplit(".", 1)[0] + ".weight"
    try:
        return model_part(hf_key(name))
    except KeyError:
        return "mm_language_model"  # the original: everything not tower/projector


def lora_config_of(recipe: Recipe) -> lora_mod.LoraConfig | None:
    spec = recipe.lora
    if not spec.enabled:
        return None
    targets = list(spec.target_modules) + (list(spec.vision_target_modules) if spec.vision else [])
    prefixes = ["llm."] + (["vision."] if spec.vision else [])
    return lora_mod.LoraConfig(spec.rank, spec.alpha, spec.dropout, targets, prefixes)


def configure_trainable(model: nn.Module, recipe: Recipe) -> lora_mod.LoraConfig | None:
    """Freeze everything outside ``train.tunable_parts``; with LoRA, adapt and freeze the adapted parts' bases."""
    parts = set(recipe.train.tunable_parts)
    for name, param in model.named_parameters():
        param.requires_grad_(part_of(name) in parts)
    config = lora_config_of(recipe)
    if config is not None:
        lora_mod.apply_lora(model, config)
        for name, param in model.named_parameters():
            if lora_mod.is_lora_parameter(name):
                param.requires_grad_(True)
            elif any(name.startswith(p) for p in config.prefixes):
                param.requires_grad_(False)
    return config


def attach_vision_cache(model: nn.Module, recipe: Recipe) -> None:
    """Give the model a `FrozenTowerCache` when the recipe asks for one; only valid with the tower frozen."""
    gib = recipe.train.frozen_vision_cache_gb
    if not gib:
        return
    if gib < 0:
        raise ConfigError(f"train.frozen_vision_cache_gb must be >= 0, got {gib}")
    if any(p.requires_grad for p in model.vision.parameters()):
        raise ConfigError(
            "train.frozen_vision_cache_gb needs a frozen vision tower (mm_vision_tower not in train.tunable_parts, "
            "no LoRA on the tower)"
        )
    model.vision_cache = FrozenTowerCache(int(gib * 2**30))


def parameter_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{part: (total, trainable)}; LoRA tensors are their own part."""
    counts = {p: [0, 0] for p in (*TUNABLE_PARTS, LORA_PART)}
    for name, param in model.named_parameters():
        part = LORA_PART if lora_mod.is_lora_parameter(name) else part_of(name)
        counts[part][0] += param.numel()
        counts[part][1] += param.numel() if param.requires_grad else 0
    return {k: (v[0], v[1]) for k, v in counts.items() if v[0]}


# ------------------------------------------------------------------------------------- optimizer
def part_learning_rates(recipe: Recipe) -> dict[str, float]:
    optim = recipe.optim
    return {
        "mm_vision_tower": optim.vision_tower_lr if optim.vision_tower_lr is not None else optim.lr,
        "mm_mlp_adapter": optim.projector_lr if optim.projector_lr is not None else optim.lr,
        "mm_language_model": optim.lr,
    }


def optimizer_groups(model: nn.Module, recipe: Recipe) -> list[dict]:
    """AdamW groups per (part, decay): biases and other 1-D tensors (norms) get no weight decay."""
    lrs = part_learning_rates(recipe)
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = param.ndim >= 2
        groups.setdefault((part_of(name), decay), []).append(param)
    out = []
    for part in TUNABLE_PARTS:
        for decay in (True, False):
            params = groups.get((part, decay))
            if params:
                out.append(
                    dict(
                        params=params,
                        lr=lrs[part],
                        weight_decay=recipe.optim.weight_decay if decay else 0.0,
                        name=f"{part}/{'decay' if decay else 'no_decay'}",
                    )
                )
    if not out:
        raise ConfigError("no trainable parameters (check train.tunable_parts and lora)")
    return out


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    optim = recipe.optim
    return torch.optim.AdamW(optimizer_groups(model, recipe), betas=tuple(optim.betas), eps=optim.eps)


def warmup_steps(recipe: Recipe, total_steps: int) -> int:
    return math.ceil(recipe.optim.warmup_ratio * total_steps)


@dataclass
class WarmupSchedule:
    """LR multiplier: linear warmup from 0, then cosine / linear decay to 0 (or constant)."""

    total: int
    warmup: int
    kind: str = "cosine"

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        if self.kind == "constant":
            return 1.0
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        if self.kind == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, total_steps: int):
    schedule = WarmupSchedule(total_steps, warmup_steps(recipe, total_steps), recipe.optim.scheduler)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


# ----------------------------------------------------------------------------------- model building
@dataclass
class ModelSources:
    """Where the recipe's initial weights come from (resolved paths; None = not used)."""

    init_dir: Path | None = None
    llm_dir: Path | None = None
    vision_weights: Path | None = None
    projector_weights: Path | None = None
    tokenizer_dir: Path | None = None


def model_sources(recipe: Recipe, require: bool = True) -> ModelSources:
    """Resolve the recipe's weight paths; ``require=False`` (dry run) drops the ones that do not exist."""
    spec = recipe.model
    out = ModelSources()
    if spec.init_from:
        try:
            out.init_dir = ckpt.resolve_model_dir(resolve_path(spec.init_from))
        except CheckpointError:
            if require:
                raise
    for attr, value in (
        ("vision_weights", spec.vision_weights),
        ("projector_weights", spec.projector_weights),
    ):
        path = Path(resolve_path(value)) if value else None
        if path is not None and not path.exists():
            if require:
                raise CheckpointError(f"model.{attr} not found: {path}")
            path = None
        setattr(out, attr, path)
    llm = Path(resolve_path(spec.llm_path)) if spec.llm_path else None
    if llm is not None and not (llm / "config.json").is_file():
        if require and out.init_dir is None:
            raise CheckpointError(f"model.llm_path is not an HF model folder (no config.json): {llm}")
        llm = None
    out.llm_dir = llm
    candidates = [resolve_path(spec.tokenizer)] if spec.tokenizer else []
    candidates += [out.init_dir, out.llm_dir]
    for cand in candidates:
        if cand is not None and (Path(cand) / "tokenizer.json").is_file():
            out.tokenizer_dir = Path(cand)
            break
    if require and out.tokenizer_dir is None:
        raise CheckpointError(
            "no tokenizer.json found (set model.tokenizer, model.llm_path or model.init_from)"
        )
    return out


def build_config(recipe: Recipe, sources: ModelSources) -> VideoChatFlashConfig:
    previous = None
    if sources.init_dir is not None:
        previous = json.loads((sources.init_dir / "config.json").read_text())
    return VideoChatFlashConfig.from_dict(model_config_dict(recipe, previous))


def build_model(recipe: Recipe, sources: ModelSources, device: str = "cpu", resume_dir: Path | None = None):
    """The model with its initial weights: a resumed checkpoint, a previous stage, or base LLM + UMT + projector."""
    from ..inference.generate import GenerationConfig
    from ..model import loading
    from ..model.init import init_weights_
    from ..model.videochat import VideoChatFlash

    config = build_config(recipe, sources)
    tokenizer = TextTokenizer.from_dir(sources.tokenizer_dir) if sources.tokenizer_dir else None
    model = VideoChatFlash.from_config(config, tokenizer, device=device, dtype="float32")
    if device == "meta":
        return model
    for folder in (resume_dir, sources.init_dir, sources.llm_dir):
        gen = folder / loading.GENERATION_CONFIG if folder is not None else None
        if gen is not None and gen.is_file():
            model.generation_config = GenerationConfig.from_file(gen)
            break
    if resume_dir is not None:
        loading.load_state(model, loading.read_safetensors(resume_dir), source=str(resume_dir))
    elif sources.init_dir is not None:
        loading.load_state(model, loading.read_safetensors(sources.init_dir), source=str(sources.init_dir))
    else:
        init_weights_(model)  # parts without a pretrained source are trained from scratch
        if sources.llm_dir is not None:
            ckpt.load_base_llm(model, sources.llm_dir)
        if sources.vision_weights is not None:
            ckpt.load_umt(model, sources.vision_weights)
        if sources.projector_weights is not None:
            ckpt.load_projector(model, sources.projector_weights)
    return model


def set_gradient_checkpointing(model: nn.Module, enabled: bool) -> int:
    """Set ``gradient_checkpointing`` on every submodule that has the flag; returns how many."""
    count = 0
    for module in model.modules():
        if module is not model and hasattr(module, "gradient_checkpointing"):
            module.gradient_checkpointing = enabled
            count += 1
    return count


def compile_blocks(model: nn.Module) -> None:
    """``torch.compile`` each repeated block (LLM layers, vision blocks) in place."""
    for blocks in block_lists(model):
        for block in blocks:
            block.compile()


def compression_of(recipe: Recipe) -> CompressionConfig | None:
    spec = recipe.train.compression
    if not spec.enabled:
        return None
    return CompressionConfig(True, spec.type, tuple(spec.layers), tuple(spec.ratios))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------ data
def video_sampling(recipe: Recipe) -> VideoSampling:
    d = recipe.data
    return VideoSampling(
        d.frames_upbound, d.frames_lowbound, d.sample_type, d.local_num_frames, d.time_msg, d.decode_size
    )


def build_dataset(recipe: Recipe, model) -> SupervisedDataset:
    if not recipe.data.path:
        raise ConfigError("data.path is not set (a data mixture YAML)")
    items = load_mixture(read_mixture(resolve_path(recipe.data.path)))
    return SupervisedDataset(
        items,
        model.tokenizer,
        template=recipe.data.template,
        sampling=video_sampling(recipe),
        processor=MediaProcessor.for_model(model),
        max_length=recipe.data.max_length,
    )


# --------------------------------------------------------------------------------------- logging
class MetricLogger:
    """One line per log step to stdout, a JSONL file, and TensorBoard when it is installed (rank 0 only)."""

    def __init__(self, recipe: Recipe, env: DistEnv, output_dir: Path):
        self.enabled = env.is_main
        self.jsonl = None
        self.tb = None
        if not self.enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        if recipe.logging.jsonl:
            self.jsonl = open(output_dir / "train_log.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        if recipe.logging.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(output_dir / "tensorboard"))
            except ImportError:
                self.tb = None

    def log(self, record: dict, echo: bool = True, bar=None) -> None:
        if not self.enabled:
            return
        if echo:
            shown = " ".join(f"{k}={_fmt(v)}" for k, v in record.items() if not isinstance(v, (dict, list)))
            if bar is not None:
                bar.write(shown)  # keeps the progress bar intact
            else:
                print(shown, flush=True)
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
        if self.tb is not None and "step" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"train/{k}", v, record["step"])

    def close(self) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _progress(enabled: bool, total: int, initial: int = 0, desc: str = "train"):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------- trainer
@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    samples_skipped: int
    skipped: list[Skip] = field(default_factory=list)
    output_dir: Path | None = None
    final_dir: Path | None = None


class Trainer:
    """Holds the run's pieces; `run` executes the loop from the current state to the last step."""

    def __init__(self, recipe: Recipe, env: DistEnv, resume: str | Path | None = None):
        self.recipe, self.env = recipe, env
        self.output_dir = Path(resolve_path(recipe.train.output_dir))
        seed_everything(recipe.train.seed)
        if recipe.train.deterministic:
            torch.use_deterministic_algorithms(True)
        self.resume_dir = ckpt.find_resume_dir(resume) if resume else None
        self.model, self.lora_config = self._setup_model()
        p = recipe.parallel
        self.wrapped = wrap_model(
            self.model, p.strategy, env, p.shard_vision_blocks, p.find_unused_parameters
        )
        self.optimizer = build_optimizer(self.wrapped, recipe)
        self.dataset = build_dataset(recipe, self.model)
        self.accumulation = recipe.grad_accumulation(env.world_size)
        self.state = self._initial_state()
        self.sampler = self._setup_sampler()
        total = self.sampler.total_steps
        self.total_steps = total if recipe.train.max_steps is None else min(total, recipe.train.max_steps)
        self.scheduler = build_scheduler(self.optimizer, recipe, self.total_steps)
        if self.resume_dir is not None:  # last: this restores the RNG states too
            self.state = ckpt.load_training_state(
                self.wrapped, self.optimizer, self.scheduler, self.resume_dir, env
            )
        self.state.total_steps = self.total_steps
        self.compression = compression_of(recipe)
        self.skipped: dict[str, Skip] = {s["where"]: Skip(**s) for s in self.state.skipped}
        self.logger = MetricLogger(recipe, env, self.output_dir)

    def _setup_model(self) -> tuple[nn.Module, lora_mod.LoraConfig | None]:
        """Initial (or resumed) weights, trainable parts, LoRA, device, checkpointing, compile."""
        recipe = self.recipe
        model = build_model(recipe, model_sources(recipe), resume_dir=self.resume_dir)
        lora_config = configure_trainable(model, recipe)
        attach_vision_cache(model, recipe)
        if self.resume_dir is not None and lora_config is not None:
            lora_mod.load_adapter(model, self.resume_dir / ckpt.ADAPTER_DIR, key_map=ckpt.key_mapper())
        model.to(self.env.device)
        model.train()
        set_gradient_checkpointing(model, recipe.train.gradient_checkpointing)
        if recipe.train.compile:
            compile_blocks(model)
        return model, lora_config

    def _initial_state(self) -> ckpt.TrainState:
        if self.resume_dir is not None:
            state = ckpt.read_train_state(self.resume_dir)
            self._check_resumable(state)
            return state
        t = self.recipe.train
        return ckpt.TrainState(
            world_size=self.env.world_size,
            strategy=self.recipe.parallel.strategy,
            accumulation=self.accumulation,
            seed=t.seed,
        )

    def _setup_sampler(self) -> MicroBatchSampler:
        r, env = self.recipe, self.env
        return MicroBatchSampler(
            len(self.dataset),
            r.train.per_device_batch_size,
            self.accumulation,
            env.world_size,
            env.rank,
            seed=r.train.seed,
            epochs=r.train.epochs,
            shuffle=r.data.shuffle,
            modalities=self.dataset.modalities,
            group_by_modality=r.data.group_by_modality,
            start=self.state.micro_batches,
        )

    def _check_resumable(self, s: ckpt.TrainState) -> None:
        mine = (self.env.world_size, self.recipe.parallel.strategy, self.accumulation, self.recipe.train.seed)
        theirs = (s.world_size, s.strategy, s.accumulation, s.seed)
        if mine != theirs:
            raise CheckpointError(
                f"{self.resume_dir} was written with world_size/strategy/accumulation/seed = {theirs}; "
                f"this run has {mine}: resume with the same setup"
            )

    # ---------------------------------------------------------------------------------- loop
    def autocast(self):
        t = self.recipe.train
        device = self.env.device.type
        enabled = t.dtype in AUTOCAST_DTYPES and (device != "cpu" or t.autocast_on_cpu)
        return torch.autocast(device, dtype=AUTOCAST_DTYPES.get(t.dtype, torch.bfloat16), enabled=enabled)

    def data_iterator(self) -> Iterator[SampleBatch]:
        workers = self.recipe.data.num_workers
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            collate_fn=collate_samples,
            num_workers=workers,
            generator=torch.Generator().manual_seed(self.recipe.train.seed),  # keeps the global RNG untouched
            persistent_workers=False,
            prefetch_factor=2 if workers else None,
        )
        return iter(loader)

    def train_step(self, batches: Iterator[SampleBatch]) -> dict:
        start = time.perf_counter()
        losses, tokens, supervised, new_skips = [], 0, 0, []
        for k in range(self.accumulation):
            batch = next(batches)
            new_skips += [s for s in batch.skipped if s.where not in self.skipped]
            tokens += batch.num_tokens
            supervised += batch.num_supervised
            with accumulation_context(self.wrapped, sync=k == self.accumulation - 1):
                with self.autocast():
                    loss = self.wrapped(list(batch), compression=self.compression)
                (loss / self.accumulation).backward()
            losses.append(float(loss.detach().float()))
        grad_norm = clip_grad_norm(self.wrapped, self.recipe.optim.max_grad_norm)
        lrs = {g["name"]: g["lr"] for g in self.optimizer.param_groups}
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, tokens_all, supervised_all, skips_all = all_reduce(
            [sum(losses) / len(losses), tokens, supervised, len(new_skips)], self.env
        )
        if skips_all:
            self.record_skips(new_skips)
        elapsed = time.perf_counter() - start
        self.state.step += 1
        self.state.micro_batches += self.accumulation
        self.state.tokens_seen += int(tokens_all)
        loss_value = loss_sum / self.env.world_size
        self.state.losses.append(loss_value)
        return {
            "step": self.state.step,
            "loss": loss_value,
            "lr": next(iter(lrs.values())),
            "lrs": lrs,
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_all / elapsed if elapsed > 0 else 0.0,
            "supervised_tokens": int(supervised_all),
            "samples_skipped": self.state.samples_skipped,
            "step_time_s": elapsed,
        }

    def save(self) -> Path:
        return ckpt.save_checkpoint(
            self.wrapped,
            self.optimizer,
            self.scheduler,
            self.state,
            self.output_dir,
            self.env,
            self.recipe.train.keep_last,
            self.lora_config,
        )

    def run(self) -> TrainResult:
        t = self.recipe.train
        self.logger.log(
            {
                "event": "start",
                "recipe": self.recipe.name,
                "total_steps": self.total_steps,
                "start_step": self.state.step,
                "world_size": self.env.world_size,
                "accumulation": self.accumulation,
                "samples": len(self.dataset),
            },
            echo=False,
        )
        bar = _progress(
            self.env.is_main and self.recipe.logging.progress_bar, self.total_steps, self.state.step
        )
        batches = self.data_iterator() if self.state.step < self.total_steps else iter(())
        saved_at = self.state.step if self.resume_dir is not None else -1
        while self.state.step < self.total_steps:
            record = self.train_step(batches)
            if self.state.step % t.log_steps == 0 or self.state.step == self.total_steps:
                self.logger.log(record, bar=bar)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
            if t.save_steps and self.state.step % t.save_steps == 0:
                self.save()
                saved_at = self.state.step
        if bar is not None:
            bar.close()
        if saved_at != self.state.step:
            self.save()
        final = ckpt.save_final_model(self.wrapped, self.output_dir, self.env, self.lora_config)
        skipped = self.report_skipped()
        self.log_end()
        self.logger.close()
        return TrainResult(
            self.state.step,
            list(self.state.losses),
            self.state.samples_skipped,
            skipped,
            self.output_dir,
            final,
        )

    def log_end(self) -> None:
        record = {"event": "end", "step": self.state.step, "samples_skipped": self.state.samples_skipped}
        cache = self.model.vision_cache
        if cache is not None:
            record["vision_cache"] = cache.stats()
        self.logger.log(record, echo=False)

    def record_skips(self, new: list[Skip]) -> None:
        """Merge newly skipped records of every rank (distinct records, by file:line) into the run's set."""
        if self.env.distributed:
            import torch.distributed as dist

            gathered: list = [None] * self.env.world_size
            dist.all_gather_object(gathered, new)
            new = [s for part in gathered for s in part]
        for skip in new:
            if skip.where not in self.skipped:
                self.skipped[skip.where] = skip
                self.state.skipped.append(asdict(skip))
        self.state.samples_skipped = len(self.skipped)

    def report_skipped(self) -> list[Skip]:
        """Print the skipped records (rank 0) and write them to ``skipped_samples.jsonl``."""
        skipped = list(self.skipped.values())
        if self.env.is_main:
            print(f"samples skipped (missing or undecodable media): {len(skipped)}", flush=True)
            for s in skipped[:20]:
                print(f"  {s.where}: {s.path}: {s.reason}", flush=True)
            if len(skipped) > 20:
                print(f"  ... and {len(skipped) - 20} more (see skipped_samples.jsonl)", flush=True)
            with open(self.output_dir / "skipped_samples.jsonl", "w", encoding="utf-8") as f:
                for s in skipped:
                    f.write(json.dumps(asdict(s)) + "\n")
        return skipped


def train(recipe: Recipe, resume: str | Path | None = None, env: DistEnv | None = None) -> TrainResult:
    """Run a recipe to its last step (joins the torchrun process group when launched by torchrun)."""
    env = env or init_distributed(recipe.parallel.backend)
    return Trainer(recipe, env, resume).run()


# ---------------------------------------------------------------------------------------- dry run
GIB = 1024**3
TEXT_TOKENS_GUESS = 512  # text tokens per sample assumed by the memory estimate


def dry_run(recipe: Recipe) -> str:
    """A report of what the recipe would train, built on the meta device (no weights, no network)."""
    sources = model_sources(recipe, require=False)
    world = recipe.parallel.world_size
    lines = [f"recipe {recipe.name}: {recipe.description}".rstrip(": ")]
    try:
        model = build_model(recipe, sources, device="meta")
    except ConfigError as exc:
        if sources.init_dir is not None or recipe.model.llm is not None or recipe.model.llm_path:
            raise
        # e.g. a stage whose model is the previous stage's output, given at run time
        lines.append(
            f"model: not determinable offline ({exc}); set model.init_from to an existing checkpoint "
            "or model.llm to a built-in shape / inline config"
        )
        return "\n".join(lines + _batch_lines(recipe, world) + _data_lines(recipe, world))
    configure_trainable(model, recipe)
    set_gradient_checkpointing(model, recipe.train.gradient_checkpointing)
    config: VideoChatFlashConfig = model.config
    lines += _init_lines(recipe, sources, config)
    lines += _parameter_lines(model)
    lines += _optimizer_lines(model, recipe)
    lines += _batch_lines(recipe, world)
    lines += _memory_lines(model, recipe, world)
    lines += _data_lines(recipe, world)
    return "\n".join(lines)


def _init_lines(recipe: Recipe, sources: ModelSources, config: VideoChatFlashConfig) -> list[str]:
    m = recipe.model
    llm = m.llm if isinstance(m.llm, str) else ("inline config" if isinstance(m.llm, dict) else m.llm_path)
    lines = [
        f"model: LLM {llm} (hidden {config.llm.hidden_size}, {config.llm.num_hidden_layers} layers, vocab "
        f"{config.llm.vocab_size}) + {m.vision_tower} at {config.image_size} px, template {recipe.data.template}, "
        f"max length {recipe.data.max_length}",
        "initial weights:",
    ]

    def state(path, found):
        return (
            "not set"
            if not path
            else f"{path} ({'found' if found else 'not found: random init in a dry run'})"
        )

    if m.init_from:
        lines.append(f"  previous stage: {state(m.init_from, sources.init_dir is not None)}")
    else:
        lines.append(f"  base LLM: {state(m.llm_path, sources.llm_dir is not None)}")
        lines.append(f"  UMT encoder: {state(m.vision_weights, sources.vision_weights is not None)}")
        lines.append(f"  projector: {state(m.projector_weights, sources.projector_weights is not None)}")
    if m.config:
        lines.append(f"  config edits: {json.dumps(m.config)}")
    return lines


def _parameter_lines(model: nn.Module) -> list[str]:
    lines = ["parameters:", f"  {'part':<20}{'total':>16}{'trainable':>16}"]
    total = trainable = 0
    for part, (n, t) in parameter_counts(model).items():
        lines.append(f"  {part:<20}{n:>16,}{t:>16,}")
        total, trainable = total + n, trainable + t
    lines.append(f"  {'all':<20}{total:>16,}{trainable:>16,}")
    return lines


def _optimizer_lines(model: nn.Module, recipe: Recipe) -> list[str]:
    o = recipe.optim
    lines = [
        f"optimizer: AdamW betas {tuple(o.betas)} eps {o.eps}; schedule {o.scheduler} with warmup ratio "
        f"{o.warmup_ratio}; grad clip {o.max_grad_norm}"
    ]
    for g in optimizer_groups(model, recipe):
        count = sum(p.numel() for p in g["params"])
        lines.append(
            f"  group {g['name']:<30} lr {g['lr']:<10g} weight_decay {g['weight_decay']:<6g} params {count:,}"
        )
    return lines


def _batch_lines(recipe: Recipe, world: int) -> list[str]:
    t = recipe.train
    try:
        accum = recipe.grad_accumulation(world)
        batch = f"{t.per_device_batch_size} per device x {accum} accumulation x {world} devices = {t.global_batch_size}"
    except ConfigError as exc:
        batch = str(exc)
    d = recipe.data
    return [
        f"batch: {batch}",
        f"frames: {d.frames_lowbound}-{d.frames_upbound} ({d.sample_type}, clips of {d.local_num_frames}, "
        f"time message {d.time_msg})",
        f"precision: {'bf16 autocast' if t.dtype == 'bf16' else 'fp32'}, gradient checkpointing {'on' if t.gradient_checkpointing else 'off'}, "
        f"compile {'on' if t.compile else 'off'}; parallel {recipe.parallel.strategy} over {world} devices",
    ]


def _memory_lines(model, recipe: Recipe, world: int) -> list[str]:
    config: VideoChatFlashConfig = model.config
    counts = parameter_counts(model)
    total = sum(n for n, _ in counts.values())
    trainable = sum(t for _, t in counts.values())
    largest = max(
        (sum(p.numel() for p in b.parameters()) for bl in block_lists(model) for b in bl), default=0
    )
    d = recipe.data
    tiles = 1 + max((w * h // config.image_size**2 for w, h in config.image_grid_pinpoints), default=0)
    if config.image_aspect_ratio != "anyres_nopad":
        tiles = 1
    frames = max(d.frames_upbound, d.local_num_frames)
    visual = max(frames * config.projector.tokens_per_frame, tiles * config.projector.tokens_per_image)
    seq = min(d.max_length, visual + TEXT_TOKENS_GUESS)
    vision_tokens = max(frames, tiles) * config.vision.tokens_per_frame
    vision_trainable = any(
        p.requires_grad for n, p in model.named_parameters() if part_of(n) == "mm_vision_tower"
    )
    est = estimate_memory(
        total,
        trainable,
        largest,
        recipe.parallel.strategy,
        world,
        seq,
        config.llm.hidden_size,
        config.llm.num_hidden_layers,
        config.llm.intermediate_size,
        config.llm.vocab_size,
        vision_tokens,
        config.vision.hidden_size,
        config.vision.num_blocks,
        recipe.train.per_device_batch_size,
        recipe.train.gradient_checkpointing,
        vision_trainable,
    )
    return [
        f"memory per device (rough, worst sample: ~{seq} LLM tokens = {visual} visual + {TEXT_TOKENS_GUESS} text, "
        f"{vision_tokens} vision-tower tokens; fp32 weights/grads/AdamW, bf16 activations):",
        f"  weights {est.weights / GIB:.2f} GiB, gradients {est.gradients / GIB:.2f} GiB, AdamW states "
        f"{est.optimizer / GIB:.2f} GiB, activations {est.activations / GIB:.2f} GiB, fp32 logits "
        f"{est.logits / GIB:.2f} GiB (x{recipe.train.per_device_batch_size} per-device batch)",
        f"  total ~ {est.total / GIB:.1f} GiB",
    ]


def _data_lines(recipe: Recipe, world: int) -> list[str]:
    if not recipe.data.path:
        return ["data: not set"]
    path = Path(resolve_path(recipe.data.path))
    if not path.is_file():
        return [f"data: {path} not found (no counts)"]
    lines = [f"data: {path}"]
    try:
        entries = read_mixture(path)
    except Exception as exc:  # a dry run reports, it does not stop
        return lines + [f"  unreadable: {exc}"]
    total = 0
    for entry in entries:
        try:
            items = load_mixture([entry])
        except Exception as exc:
            lines.append(f"  {entry.json_path}: {exc}")
            continue
        kinds = {"video": 0, "image": 0, "text": 0}
        for it in items:
            data = it.record.data if isinstance(it.record.data, dict) else {}
            kinds["video" if "video" in data else "image" if "image" in data else "text"] += 1
        total += len(items)
        lines.append(
            f"  {entry.json_path} [{entry.sampling_strategy}]: {len(items)} samples "
            f"(video {kinds['video']}, image {kinds['image']}, text {kinds['text']})"
        )
    steps = total // recipe.train.global_batch_size * recipe.train.epochs
    lines.append(f"  total {total} samples -> {steps} optimizer steps ({recipe.train.epochs} epoch(s))")
    return lines
