"""Build the project's own demo model with one command: data, tokenizer, the training stages, evaluation.

    videochat-flash demo --out models/videochat-flash-demo --seed 0

1. synthetic moving-shape videos + annotations (`videochat_flash.data.synth`), one mixture per stage;
2. a byte-level BPE tokenizer with the Qwen special tokens, trained on the annotation texts;
3. the recipes in ``recipes/demo/`` (the tower's dense pre-training, the connector's attribute codes, stage 0
   from scratch and its multiple-choice, direction and needle phases, then the paper's stages 1–4), each stage
   starting from the previous one's checkpoint, trained by the same trainer as the real recipes;
4. the final checkpoint copied to ``--out`` with an example video, evaluated on held-out seeds with and
   without video-level compression, and a model card (README.md) holding the table and the commands.

Everything is seeded; ``--scale`` shrinks data and steps for smoke tests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
DEMO_RECIPES = REPO_ROOT / "recipes" / "demo"
VISION_STAGE = "stage0_vision"  # dense pre-training of the tower alone, before the trainer's stages
CODES_STAGE = "stage0_codes"  # the connector distilled onto attribute codes (`connector_codes`), then frozen
# recipe in recipes/demo/ -> the data mixture it reads (`data.synth.STAGES`), in training order
STAGES = {
    "stage0_scratch": "stage0",
    "stage0_mc": "stage0_mc",
    "stage0_dir": "stage0_dir",
    "stage0_niah": "stage0_niah",
    "stage1_connector": "stage1",
    "stage2_short": "stage2",
    "stage3_short_long": "stage3",
    "stage4_highres": "stage4",
}
FIRST_STAGE = next(iter(STAGES))
DATA = dict(
    num_samples=1200,
    num_long=240,
    num_niah=640,
    num_single=1500,
    size=64,
    fps=1.0,  # one frame a second: `chat`'s sampling (min 64 frames) then sees what training saw
    short_seconds=(4, 16),
    long_seconds=(16, 48),
)
TIMINGS_FILE = "timings.json"  # seconds of the cacheable build steps (data, vision, codes, each finished stage)
# What marks each cacheable step as done (relative to the work dir); a rebuild skips the step when it exists and
# was made with this build's settings (`data_mismatches`, the tower's ``umt.json``, the codes' JSON and tower hash).
# A training stage is done when its ``final/`` exists; it is reused only with the same `stage_stamp` and while every
# step before it was reused.
STAGE_STAMP = "build_stamp.json"  # in a stage's folder: the `stage_stamp` it was trained with
CACHED_OUTPUTS = {
    "data": Path("data") / "manifest.json",
    "vision": Path(VISION_STAGE) / "umt.pt",
    "codes": Path(CODES_STAGE) / "mm_projector.safetensors",
}
EVAL_SINGLE = 20  # held-out one-big-shape videos (the curriculum pool), reported as single_* tasks
EVAL_CAPTIONS = 12  # held-out videos captioned ("Describe the video.") to check that captions end
CAPTION_TOKENS = 160  # a 5-shape training caption is ~80 tokens
SYSTEM_TEXTS = (
    "You are a helpful assistant.",
    "The video lasts for 12.00 seconds, and 12 frames are uniformly sampled from it.",
    # the chat template's role names, so that each is one token: the answer's first words then sit closer to the
    # question's last ones, which the answer copies (`data.tasks`)
    "system\nuser\nassistant\n",
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="models/videochat-flash-demo", help="where the final model goes")
    p.add_argument("--work", default="runs/demo", help="data, stage checkpoints and logs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiply data sizes and steps (e.g. 0.01 to smoke-test)"
    )
    p.add_argument("--eval-seed", type=int, default=1000, help="held-out seed of the evaluation set")
    p.add_argument("--eval-samples", type=int, default=60)
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument(
        "--eval-only",
        action="store_true",
        help="only evaluate --out and rewrite its model card (stages read from --work)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1, safe on a busy 2-core CPU; 2 is faster on an idle one)",
    )


def run(args: argparse.Namespace) -> int:
    if args.eval_only:
        finish_demo(
            Path(args.out),
            Path(args.work),
            seed=args.seed,
            scale=args.scale,
            eval_seed=args.eval_seed,
            eval_samples=args.eval_samples,
            threads=args.threads,
        )
        return 0
    build_demo(
        Path(args.out),
        Path(args.work),
        seed=args.seed,
        scale=args.scale,
        eval_seed=args.eval_seed,
        eval_samples=args.eval_samples,
        evaluate=not args.skip_eval,
        threads=args.threads,
    )
    return 0


def _log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def record_seconds(work: Path, step: str, seconds: float) -> None:
    """Remember how long a cached build step took (``work/timings.json``), so a later build that reuses its
    output still reports the full training time."""
    path = work / TIMINGS_FILE
    times = json.loads(path.read_text()) if path.is_file() else {}
    times[step] = round(seconds, 1)
    path.write_text(json.dumps(times, indent=1) + "\n")


def recorded_seconds(work: Path) -> dict[str, float]:
    path = work / TIMINGS_FILE
    times = json.loads(path.read_text()) if path.is_file() else {}
    vision = work / VISION_STAGE / "umt.json"
    if "vision" not in times and vision.is_file():  # builds before timings.json: the metrics hold the time
        times["vision"] = json.loads(vision.read_text())["seconds"]
    for stage in STAGES:  # stages finished before their time was recorded: estimate it from their log
        if stage not in times and finished_stage(work, stage) is not None:
            times[stage] = logged_seconds(read_step_records(work / stage / "train_log.jsonl"))
    return times


def finished_stage(work: Path, stage: str, recipe: dict | None = None) -> Path | None:
    """The stage's final model when an earlier run finished it (written atomically, so it is whole) and, given
    ``recipe`` (`stage_stamp`), trained it with that recipe. Runs from before stamps were written pass."""
    final = work / stage / "final"
    if not (final / "config.json").is_file():
        return None
    stamp = work / stage / STAGE_STAMP
    if recipe is not None and stamp.is_file() and json.loads(stamp.read_text()) != recipe:
        return None
    return final


def stage_stamp(stage: str, overrides: list[str]) -> dict:
    """What a stage's run depends on besides its inputs: its recipe file, the build's overrides and the data
    mixture they name (a mixture edited in `data.synth.STAGES` is rewritten over reused data, same path)."""
    stamp = {"recipe": (DEMO_RECIPES / f"{stage}.yaml").read_text(), "overrides": overrides}
    mixture = next((Path(o.split("=", 1)[1]) for o in overrides if o.startswith("data.path=")), None)
    if mixture is not None and mixture.is_file():
        stamp["mixture"] = mixture.read_text()
    return stamp


def read_step_records(log_file: Path) -> list[dict]:
    """The per-step records (those with a loss) of a trainer's ``train_log.jsonl``."""
    if not log_file.is_file():
        return []
    records = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]
    return [r for r in records if "step" in r and "loss" in r]


def logged_seconds(steps: list[dict]) -> float:
    """Training seconds from a log that records every n-th step's time (n = the first logged step)."""
    return round(sum(r.get("step_time_s", 0.0) for r in steps) * (steps[0]["step"] if steps else 1), 1)


def make_data(work: Path, seed: int, scale: float) -> tuple[Path, bool]:
    """The stages' data in ``work/data`` and whether an earlier run's copy was reused."""
    from ..data.synth import generate_dataset, refresh_mixtures

    data_dir = work / "data"
    # At tiny scales keep at least one global batch (8) of captions for the caption-only stage 1.
    floors = {"num_samples": 8, "num_long": 2, "num_niah": 2, "num_single": 8}
    sizes = {k: max(floors[k], int(v * scale)) if k in floors else v for k, v in DATA.items()}
    manifest_file = work / CACHED_OUTPUTS["data"]
    if manifest_file.is_file():
        manifest = json.loads(manifest_file.read_text())
        stale = missing_annotations(manifest) + data_mismatches(manifest, seed, sizes)
        if not stale:
            refresh_mixtures(data_dir)  # data from before a mixture was added still serves it
            _log(f"data exists: {data_dir}")
            return data_dir, True
        _log(f"data in {data_dir} differs ({', '.join(stale)}): generating it again")
        shutil.rmtree(data_dir)
    _log(f"generating synthetic data into {data_dir} ({sizes})")
    t0 = time.time()
    generate_dataset(data_dir, seed, stage="all", workers=1, **sizes)
    record_seconds(work, "data", time.time() - t0)
    return data_dir, False


def data_mismatches(manifest: dict, seed: int, sizes: dict) -> list[str]:
    """What a generated dataset (its manifest) has that this build would generate differently."""
    from ..data.synth import ANNOTATIONS_VERSION

    manifest = {"annotations_version": 1, **manifest}  # written before the field existed: the first wording
    wanted = {
        "seed": seed,
        "size": sizes["size"],
        "fps": sizes["fps"],
        "short_seconds": list(sizes["short_seconds"]),
        "long_seconds": list(sizes["long_seconds"]),
        "videos": {
            "single": sizes["num_single"],
            "short": sizes["num_samples"],
            "long": sizes["num_long"],
            "niah": sizes["num_niah"],
        },
        "style": scene_style(),
        "annotations_version": ANNOTATIONS_VERSION,
    }
    return [f"{key} {manifest.get(key)} != {value}" for key, value in wanted.items() if manifest.get(key) != value]


def scene_style() -> dict:
    """The generator's `SceneStyle` as a manifest or metrics JSON holds it (the cached data and tower must match)."""
    from dataclasses import asdict

    from ..data.shapes import STYLE

    return json.loads(json.dumps(asdict(STYLE)))


def missing_annotations(manifest: dict) -> list[str]:
    """Annotation files the demo's stages read that a generated dataset (its manifest) lacks."""
    from ..data.synth import STAGES as MIXTURES

    needed = {f"annotations/{pool}_{task}.jsonl" for s in STAGES.values() for pool, task in MIXTURES[s]}
    return sorted(needed - set(manifest.get("annotations", {})))


def make_tokenizer(work: Path, data_dir: Path):
    from ..model.factory import train_tokenizer

    tok_dir = work / "tokenizer"
    texts = list(SYSTEM_TEXTS)
    for ann in sorted((data_dir / "annotations").glob("*.jsonl")):
        for line in ann.read_text().splitlines():
            record = json.loads(line)
            texts.extend(turn.get("value", turn.get("content", "")) for turn in record["conversations"])
    tokenizer = train_tokenizer(texts, vocab_size=1024)
    tok_dir.mkdir(parents=True, exist_ok=True)
    for name, text in tokenizer.files().items():
        (tok_dir / name).write_text(text)
    _log(f"tokenizer: {tokenizer.vocab_size} tokens -> {tok_dir}")
    return tok_dir, tokenizer


def tower_config():
    """The demo's vision tower shape (`UMTConfig`), as its first stage's recipe sets it."""
    from .recipes import load_recipe
    from .trainer import ModelSources, build_config

    return build_config(load_recipe(DEMO_RECIPES / f"{FIRST_STAGE}.yaml"), ModelSources()).vision


def make_vision_weights(work: Path, seed: int, scale: float) -> tuple[Path, bool]:
    """Dense pre-training of the tower (`vision_pretrain`); its UMT ``.pt`` seeds stage 0's vision tower.
    Also says whether an earlier run's weights were reused."""
    from dataclasses import asdict, replace

    from .vision_pretrain import VisionPretrainConfig, pretrain_vision

    out = work / CACHED_OUTPUTS["vision"]
    tower = tower_config()
    base = VisionPretrainConfig.from_yaml(DEMO_RECIPES / f"{VISION_STAGE}.yaml")
    cfg = replace(
        base,
        steps=max(1, int(base.steps * scale)),
        eval_clips=max(base.batch_size, int(base.eval_clips * min(1.0, scale * 10))),
        seed=seed,
    )
    metrics_file = out.with_suffix(".json")  # `pretrain_vision` writes it beside the weights
    if out.is_file() and metrics_file.is_file():
        written = json.loads(metrics_file.read_text())
        wanted = json.loads(json.dumps([asdict(cfg), asdict(tower)]))  # as the file holds them: tuples as lists
        # a field added to the config since the tower was trained counts as its default (what the training did)
        defaults = json.loads(json.dumps(asdict(VisionPretrainConfig())))
        trained = written.get("config") or {}
        config = {**{k: v for k, v in defaults.items() if k not in trained}, **trained}
        if [config, written.get("tower"), written.get("style")] == [*wanted, scene_style()]:
            _log(f"vision weights exist: {out}")
            return out, True
        _log(f"vision weights in {out} were trained with another config or tower: training them again")
    _log(f"{VISION_STAGE}: {cfg.steps} steps of dense pre-training of the {tower.hidden_size}-wide tower")
    t0 = time.time()
    metrics = pretrain_vision(tower, out, cfg)
    record_seconds(work, "vision", time.time() - t0)
    _log(f"{VISION_STAGE}: done in {time.time() - t0:.0f} s, held-out {metrics['heldout']}")
    return out, False


def make_connector_weights(work: Path, seed: int, scale: float, vision_weights: Path) -> tuple[Path, bool]:
    """The connector distilled onto attribute codes over the pre-trained tower (`connector_codes`); stage 0
    loads it as ``model.projector_weights``. Also says whether an earlier run's weights were reused (same config,
    same tower weights)."""
    import hashlib
    from dataclasses import asdict, replace

    from .connector_codes import ConnectorCodesConfig, distil_connector_, save_connector
    from .recipes import load_recipe
    from .trainer import ModelSources, build_model

    out = work / CACHED_OUTPUTS["codes"]
    base = ConnectorCodesConfig.from_yaml(DEMO_RECIPES / f"{CODES_STAGE}.yaml")
    cfg = replace(
        base,
        steps=max(1, int(base.steps * scale)),
        clips=max(8, int(base.clips * scale)),
        heldout_clips=max(8, int(base.heldout_clips * min(1.0, scale * 10))),
        seed=seed,
    )
    tower_digest = hashlib.sha256(vision_weights.read_bytes()).hexdigest()
    metrics_file = out.with_suffix(".json")
    if out.is_file() and metrics_file.is_file():
        written = json.loads(metrics_file.read_text())
        wanted = json.loads(json.dumps(asdict(cfg)))  # as the file holds it: tuples as lists
        if written.get("config") == wanted and written.get("tower_sha256") == tower_digest:
            _log(f"connector codes exist: {out}")
            return out, True
        _log(f"connector codes in {out} were made with another config or tower: making them again")
    _log(f"{CODES_STAGE}: {cfg.steps} steps distilling the connector onto attribute codes {list(cfg.heads)}")
    t0 = time.time()
    recipe = load_recipe(DEMO_RECIPES / f"{FIRST_STAGE}.yaml", [f"model.vision_weights={vision_weights}"])
    model = build_model(recipe, ModelSources(vision_weights=vision_weights)).eval()
    metrics = distil_connector_(model, cfg)
    metrics["tower_sha256"] = tower_digest
    save_connector(model, out, metrics)
    record_seconds(work, "codes", time.time() - t0)
    _log(f"{CODES_STAGE}: done in {time.time() - t0:.0f} s, held-out {metrics['heldout']}")
    return out, False


def stage_overrides(
    stage: str,
    k: int,
    work: Path,
    data_dir: Path,
    tok_dir: Path,
    previous: Path | None,
    tokenizer,
    seed: int,
    scale: float,
    max_steps: int,
    vision_weights: Path | None = None,
    projector_weights: Path | None = None,
) -> list[str]:
    mixture = data_dir / f"{STAGES[stage]}.yaml"
    out = [
        f"data.path={mixture}",
        f"train.output_dir={work / stage}",
        f"train.seed={seed + k}",
        f"train.max_steps={max(1, int(max_steps * scale))}",
    ]
    if previous is None:
        out += [
            f"model.tokenizer={tok_dir}",
            f"model.llm.vocab_size={tokenizer.vocab_size}",
            f"model.llm.bos_token_id={tokenizer.pad_token_id}",
            f"model.llm.eos_token_id={tokenizer.eos_token_id}",
        ]
        if vision_weights is not None:
            out.append(f"model.vision_weights={vision_weights}")
        if projector_weights is not None:
            out.append(f"model.projector_weights={projector_weights}")
    else:
        out.append(f"model.init_from={previous}")
    return out


def build_demo(
    out: Path,
    work: Path,
    *,
    seed: int = 0,
    scale: float = 1.0,
    eval_seed: int = 1000,
    eval_samples: int = 60,
    evaluate: bool = True,
    threads: int = 1,
) -> Path:
    import torch

    from .recipes import load_recipe
    from .trainer import train

    torch.set_num_threads(threads)
    started = time.time()
    work.mkdir(parents=True, exist_ok=True)
    data_dir, data_reused = make_data(work, seed, scale)
    tok_dir, tokenizer = make_tokenizer(work, data_dir)
    vision_weights, vision_reused = make_vision_weights(work, seed, scale)
    codes, codes_reused = make_connector_weights(work, seed, scale, vision_weights)
    steps_done = (("data", data_reused), ("vision", vision_reused), ("codes", codes_reused))
    reused = [step for step, done in steps_done if done]
    previous: Path | None = None
    reuse_stages = all(done for _, done in steps_done)  # finished stages saw these same inputs
    for k, stage in enumerate(STAGES):  # k seeds the stage
        base = load_recipe(DEMO_RECIPES / f"{stage}.yaml")
        overrides = stage_overrides(
            stage,
            k,
            work,
            data_dir,
            tok_dir,
            previous,
            tokenizer,
            seed,
            scale,
            base.train.max_steps,
            vision_weights,
            codes,
        )
        stamp = stage_stamp(stage, overrides)
        final = finished_stage(work, stage, stamp) if reuse_stages else None
        if final is not None:
            _log(f"{stage}: finished by an earlier run of this command, reusing {final}")
            reused.append(stage)
            previous = final
            continue
        reuse_stages = False  # every later stage must start from this stage's new weights
        # An interrupted or outdated run's log and checkpoints would mix into this run's report (the log appends).
        shutil.rmtree(work / stage, ignore_errors=True)
        recipe = load_recipe(DEMO_RECIPES / f"{stage}.yaml", overrides)
        t0 = time.time()
        _log(f"{stage}: {recipe.train.max_steps} steps, parts {recipe.train.tunable_parts}")
        result = train(recipe)
        previous = result.final_dir
        record_seconds(work, stage, time.time() - t0)
        (work / stage / STAGE_STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
        _log(f"{stage}: done in {time.time() - t0:.0f} s")
    _install(previous, out, data_dir)
    times = recorded_seconds(work)
    unknown = [step for step in reused if step not in times]
    if unknown:
        _log(f"warning: reused {unknown} without a recorded time; the reported training time leaves them out")
    reused_seconds = {step: times[step] for step in reused if step in times}
    (work / "wall_seconds.txt").write_text(f"{time.time() - started + sum(reused_seconds.values()):.1f}\n")
    (work / "reused_seconds.json").write_text(json.dumps(reused_seconds) + "\n")
    return finish_demo(
        out,
        work,
        seed=seed,
        scale=scale,
        eval_seed=eval_seed,
        eval_samples=eval_samples,
        evaluate=evaluate,
        threads=threads,
    )


def vision_row(work: Path) -> dict | None:
    """The dense vision pre-training, read back from its metrics file (``umt.json``)."""
    metrics_file = work / VISION_STAGE / "umt.json"
    if not metrics_file.is_file():
        return None
    metrics = json.loads(metrics_file.read_text())
    cfg, last = metrics["config"], (metrics["history"] or [{}])[-1]
    return dict(
        stage=VISION_STAGE,
        steps=last.get("step", 0),
        final_loss=round(sum(v for k, v in last.items() if k not in ("step", "seconds")), 4),
        seconds=metrics["seconds"],
        skipped=0,
        parts=["mm_vision_tower"],
        lr=cfg["lr"],
        template="dense labels",
        frames=f"{metrics['tower']['num_frames']}",
        heldout=metrics["heldout"],
    )


def codes_row(work: Path) -> dict | None:
    """The connector distillation, read back from its metrics file."""
    metrics_file = work / CACHED_OUTPUTS["codes"].with_suffix(".json")
    if not metrics_file.is_file():
        return None
    metrics = json.loads(metrics_file.read_text())
    return dict(
        stage=CODES_STAGE,
        steps=metrics["config"]["steps"],
        final_loss=metrics["final_loss"],
        seconds=metrics["seconds"],
        skipped=0,
        parts=["mm_mlp_adapter"],
        lr=metrics["config"]["lr"],
        template="attribute codes",
        frames="4",
        heldout=metrics["heldout"],
    )


def stage_rows(work: Path) -> list[dict]:
    """What each stage did, read back from its training log (steps, loss, time, skips) and its recipe."""
    from .recipes import load_recipe

    rows = [row for row in [vision_row(work), codes_row(work)] if row is not None]
    for stage in STAGES:
        log_file = work / stage / "train_log.jsonl"
        if not log_file.is_file():
            continue
        steps = read_step_records(log_file)
        tail = [r["loss"] for r in steps[-4:]] or [float("nan")]
        recipe = load_recipe(DEMO_RECIPES / f"{stage}.yaml")
        skipped_file = work / stage / "skipped_samples.jsonl"
        rows.append(
            dict(
                stage=stage,
                steps=steps[-1]["step"] if steps else 0,
                final_loss=round(sum(tail) / len(tail), 4),
                seconds=logged_seconds(steps),
                skipped=len(skipped_file.read_text().splitlines()) if skipped_file.is_file() else 0,
                parts=list(recipe.train.tunable_parts),
                lr=recipe.optim.lr,
                template=recipe.data.template,
                frames=f"{recipe.data.frames_lowbound}-{recipe.data.frames_upbound}",
            )
        )
    return rows


def _data_summary(manifest: dict) -> dict:
    """Videos per pool and annotation records per file (what the stages sampled from)."""
    records = {Path(k).stem: v for k, v in manifest.get("annotations", {}).items()}
    return {"videos": manifest.get("videos", {}), "records": records, "seed": manifest.get("seed")}


def finish_demo(
    out: Path,
    work: Path,
    *,
    seed: int,
    scale: float,
    eval_seed: int = 1000,
    eval_samples: int = 60,
    evaluate: bool = True,
    threads: int = 1,
) -> Path:
    """Evaluate the installed model and write its training report and model card."""
    import torch

    torch.set_num_threads(threads)
    data_dir = work / "data"
    wall = work / "wall_seconds.txt"
    reused = work / "reused_seconds.json"
    report = {
        "seed": seed,
        "threads": threads,
        "scale": scale,
        "train_seconds": float(wall.read_text()) if wall.is_file() else None,
        "reused_seconds": json.loads(reused.read_text()) if reused.is_file() else {},
        "stages": stage_rows(work),
        "data": _data_summary(json.loads((data_dir / "manifest.json").read_text())),
    }
    if evaluate:
        report["eval"] = evaluate_demo(out, work, eval_seed, eval_samples, threads)
    (out / "training_report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_model_card(out, report)
    _log(f"demo model ready: {out}")
    return out


def _install(checkpoint: Path, out: Path, data_dir: Path) -> Path:
    """Copy the last stage's checkpoint (weights, config, tokenizer) and an example video to ``out``."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(
        checkpoint, out, ignore=shutil.ignore_patterns("trainer_state*", "optimizer*", "*.pt", "rng*")
    )
    example = _pick_example(data_dir)
    if example is not None:
        shutil.copyfile(example, out / "example.mp4")
    return out


def _pick_example(data_dir: Path) -> Path | None:
    """A short training video with several shapes, for the README's first command."""
    for ann in sorted((data_dir / "annotations").glob("short_caption*.jsonl")):
        for line in ann.read_text().splitlines():
            record = json.loads(line)
            if len(record.get("meta", {}).get("objects", [])) >= 2:
                return data_dir / record["video"]
    return None


def evaluate_demo(model_dir: Path, work: Path, eval_seed: int, num_samples: int, threads: int) -> dict:
    """Held-out evaluation (fresh seed) with and without video-level compression."""
    from ..config import CompressionConfig
    from ..data.synth import evaluate, evaluate_captions, make_eval_set
    from ..data.tasks import CAPTION_PROMPT
    from ..inference.cache import TokenCache
    from ..inference.session import chat
    from ..model.videochat import VideoChatFlash

    model = VideoChatFlash.from_pretrained(model_dir)
    longest = max(DATA["long_seconds"])
    eval_dir = work / f"eval_seed{eval_seed}"
    if not (eval_dir / "eval.jsonl").is_file():
        make_eval_set(
            eval_dir,
            eval_seed,
            num_samples,
            size=DATA["size"],
            fps=DATA["fps"],
            short_seconds=DATA["short_seconds"],
            long_seconds=DATA["long_seconds"],
            train_max_seconds=longest,
            num_single=EVAL_SINGLE,
        )
    cache = TokenCache(work / "token_cache")  # each eval video is encoded once for all its questions
    results = {}
    for label, compression in (
        ("full", CompressionConfig(enabled=False)),
        ("compressed", CompressionConfig.published(model.config.llm.num_hidden_layers)),
    ):

        def answer(record, video_path, compression=compression):
            return chat(
                model,
                video_path,
                record["prompt"],
                generation={"max_new_tokens": 24, "do_sample": False},
                compression=compression,
                cache=cache,
            )[0]

        t0 = time.time()
        results[label] = evaluate(eval_dir, answer, progress=True)
        results[label]["seconds"] = round(time.time() - t0, 1)
        _log(f"eval {label}: mc_accuracy {results[label].get('mc_accuracy')}")

    def caption(video_path):
        generation = {"max_new_tokens": CAPTION_TOKENS, "do_sample": False}
        return chat(model, video_path, CAPTION_PROMPT, generation=generation, cache=cache)[0]

    results["captions"] = evaluate_captions(eval_dir, caption, limit=EVAL_CAPTIONS)
    _log(f"eval captions: {results['captions']}")
    return results


def write_model_card(model_dir: Path, report: dict) -> None:
    from ..data.synth import COUNT_REPEAT, LONG_MC_REPEAT, NIAH_REPEAT

    threads = report.get("threads", 1)
    lines = [
        "# videochat-flash-demo",
        "",
        "A small VideoChat-Flash model trained **from scratch on synthetic moving-shape videos** by this project's own",
        "data generator and training pipeline, on a 2-core CPU. Same architecture family as the released models:",
        "a UMT-style ViT on 4-frame clips (64→96 px frames, 8 px patches), ToMe to 16 tokens per frame, a 2-layer MLP",
        "connector and a 4-layer Qwen2-style LLM with its own BPE tokenizer (Qwen special tokens). It exists so that",
        "the command line, the tests and the benchmarks have a real trained model offline. Its training data covers",
        "shapes, colours, counts, order, motion direction, when things appear and needles in haystacks — nothing else;",
        "the evaluation below says how much of it the model has actually learned.",
        "",
        "What it sees: 64 px videos at 1 frame per second (so `chat`'s sampling, at least 64 frames or all of them,",
        "matches training), five colours (red, green, blue, yellow, white) and five shapes on dark textured",
        "backgrounds; each object moves at its own speed (8–12% of the frame side a second) in one direction until",
        "it has covered its distance, then stands still (`data.shapes.STYLE`). Multiple-choice questions list the",
        "question type's whole answer vocabulary in a fixed order",
        "(e.g. always `(A) red (B) green (C) blue (D) yellow (E) white`), so a letter names an answer; the model is",
        "not trained to match shuffled options (its LLM did not learn that skill within the CPU hour). The options",
        "come first and the question last; answers give the value, then its letter (`Answer: green (B).`). A",
        "question about one object named by its other attribute is answered with that subject, the asked attribute",
        "right after it and the letter (`What color is the triangle?` -> `The triangle yellow (D).`; `Which shape is",
        "red?` -> `The red square (B).`): in a simulation of this LLM (`benchmarks/probe_routing.py`) it learns a",
        "lookup keyed by the token it is on at once and the copy from a few tokens back more slowly, while the letter",
        "asked in one step is right 34–62% of the time after as many steps (600). Training scenes are also asked about",
        "shapes and colours drawn from the whole vocabulary, in view or not (`The star is not in the video.`), so that",
        "the subject must come from the question, not from the video.",
        "",
        "How it is trained: weights start from N(0, 0.02) (`videochat_flash.model.init`). `stage0_vision` stands in",
        "for UMT's own pre-training: the tower alone, with linear heads naming each patch's colour, shape, motion and",
        "onset and each clip's object count, on synthetic clips rendered in memory (`videochat_flash.data.dense`);",
        "it gives the tower a direct signal, where training it only through a from-scratch LLM gave it almost none.",
        "Its patch embedding starts from the whitened principal components of sample patches and its MLP inputs at",
        "std 1/sqrt(width) (`videochat_flash.train.vision_pretrain`): shapes then start to be learned ~3x sooner.",
        "Its first 300 steps show only clips of 1-2 objects moving on every frame and train only the motion heads;",
        "an object standing still in a clip has no direction label. With the warm-up and the dark backgrounds the tower",
        'names 74% of held-out objects\' directions, against 32% before (`benchmarks/README.md`, "Faster movers on dark',
        'backgrounds").',
        "`stage0_codes` then distils the connector onto attribute codes: each merged token of the tower maps to the",
        "sum of one fixed random vector per colour, shape, motion and onset of the object owning it, zero for",
        "background (`videochat_flash.train.connector_codes`). On the tower's tokens as they come (any connector",
        "init, trained along) a simulation of this LLM found which object a question names only 50-70% of the time;",
        "on such codes it learned it to 90%+ within 600 steps (`benchmarks/README.md`, connector distillation).",
        "Stage 0 then trains the LLM on that frozen tower and connector (one-shape videos and 1–4-shape scenes), and",
        "`stage0_mc` continues it on their multiple-choice questions alone, each video's questions as one multi-turn",
        "conversation so its visual tokens serve all of them (in the mixed stage an answer letter is one supervised",
        "token against a caption's ~30, and the LLM stayed near chance on colour questions). `stage0_dir` adds",
        "direction questions with a replay of `stage0_mc` (the tower's codes hold a direction only on the clips where",
        "the object moves, and the LLM stayed at chance on it through `stage0_mc`). `stage0_niah` ends",
        "stage 0 on needle videos (about a quarter of its samples, both needle questions in one conversation, every",
        "second of the video: up to 64 frames), the rest a replay of `stage0_mc`: mixed into `stage0_mc` from its start",
        "the needle was learned but which object a question names was not. The replay adds long videos' questions",
        f"(16–48 s, 2–5 shapes, listed {LONG_MC_REPEAT}x), which no earlier phase shows: without them the model",
        "counted long scenes right 8 of 29 times and never answered 4 or 5. Stage 1",
        "aligns the connector on captions, stage 2 tunes all parts on short scenes, stage 3 adds 16–48 s videos with",
        f"2–5 shapes, grounding and needles (needle videos listed {NIAH_REPEAT}x in the mixture, count questions",
        f"{COUNT_REPEAT}x: once each, the model drifted to answering them with a caption), and stage 4 raises",
        "the resolution to 96 px (LLM frozen).",
        "",
        "## Reproduce",
        "",
        "```bash",
        f"videochat-flash demo --out models/videochat-flash-demo --seed {report['seed']} --threads {threads}",
        "videochat-flash eval synth --model models/videochat-flash-demo --seed 1000 --num-samples 60 --size "
        f"{DATA['size']} --fps {DATA['fps']:g} --short-seconds {DATA['short_seconds'][0]},{DATA['short_seconds'][1]} --long-seconds "
        f"{DATA['long_seconds'][0]},{DATA['long_seconds'][1]} --max-new-tokens 24 "
        f"--num-single {EVAL_SINGLE} --json",
        "```",
        "",
        f"Training wall time: {(report['train_seconds'] or 0) / 60:.1f} min (data generation included), {threads} torch "
        f"thread(s) + 1 decoding worker, on a 2-core CPU.{_reuse_note(report)}",
        "",
        "## Stages",
        "",
        "| stage | steps | template | frames | trainable parts | lr | final loss | seconds | samples skipped |",
        "|---|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for s in report["stages"]:
        lines.append(
            f"| {s['stage']} | {s['steps']} | {s['template']} | {s['frames']} | {', '.join(s['parts'])} | {s['lr']} "
            f"| {s['final_loss']} | {s['seconds']} | {s['skipped']} |"
        )
    vision = next((s for s in report["stages"] if s["stage"] == VISION_STAGE), None)
    if vision is not None:
        lines += _vision_table(vision["heldout"])
    codes = next((s for s in report["stages"] if s["stage"] == CODES_STAGE), None)
    if codes is not None:
        held = codes["heldout"]
        per_head = ", ".join(f"{k.removesuffix('_accuracy')} {100 * v:.1f}%" for k, v in held.items() if k != "relative_mse")
        lines += [
            "",
            f"Connector codes, held-out clips: relative MSE {held['relative_mse']}; object tokens whose output is",
            f"nearest their own attribute's vector: {per_head}.",
        ]
    data = report.get("data", {})
    lines += [
        "",
        f"Data (seed {data.get('seed')}): videos {json.dumps(data.get('videos', {}))}; records per annotation file:",
        f"{json.dumps(data.get('records', {}))}.",
        "",
    ]
    if "eval" in report:
        lines += ["## Evaluation (held-out seed, never used in training)", ""]
        lines += _status_lines(report["eval"])
        lines += _eval_table(report["eval"])
    (model_dir / "README.md").write_text("\n".join(lines) + "\n")


def _reuse_note(report: dict) -> str:
    reused = report.get("reused_seconds") or {}
    if not reused:
        return ""
    parts = ", ".join(f"{step} {seconds / 60:.1f} min" for step, seconds in reused.items())
    return f" It includes cached steps reused from an earlier run of the same command in the same work dir ({parts})."


def _vision_table(heldout: dict) -> list[str]:
    """Held-out accuracy of the pre-trained tower's heads (object patches; count per clip), per input size."""
    heads = list(next(iter(heldout.values())))
    lines = [
        "",
        "Vision pre-training, held-out clips (accuracy on object patches; count per clip):",
        "",
        "| input px | " + " | ".join(heads) + " |",
        "|---|" + "---:|" * len(heads),
    ]
    for size, acc in heldout.items():
        lines.append(f"| {size} | " + " | ".join(f"{100 * acc[h]:.1f}%" for h in heads) + " |")
    return lines


def _status_lines(results: dict) -> list[str]:
    """The project's quality bar (>= 90% multiple choice), stated against the measurement."""
    mc = results.get("full", {}).get("mc_accuracy")
    if mc is None:
        return []
    verdict = "meets" if mc >= 0.9 else "does NOT meet"
    return [
        f"Multiple-choice accuracy {100 * mc:.1f}% {verdict} the project's bar of 90% (chance is 20–25% with 4–5",
        "options). NIAH cells hold one question each, so each cell is 0% or 100%.",
        "",
    ]


def _eval_table(results: dict) -> list[str]:
    lines = ["| metric | full | with video-level compression |", "|---|---:|---:|"]
    full, comp = results.get("full", {}), results.get("compressed", {})

    def fmt(v):
        return f"{100 * v:.1f}%" if isinstance(v, float) else str(v)

    for key in ("mc_accuracy", "niah_accuracy", "grounding_r@0.5", "grounding_miou"):
        lines.append(f"| {key} | {fmt(full.get(key))} | {fmt(comp.get(key))} |")
    for task in sorted(full.get("per_task", {})):
        lines.append(
            f"| task {task} | {fmt(full['per_task'][task])} | {fmt(comp.get('per_task', {}).get(task))} |"
        )
    lines += ["", "NIAH accuracy per haystack length (seconds) and needle depth (full model):", ""]
    niah = full.get("niah", {})
    depths = sorted({d for cells in niah.values() for d in cells}, key=float)
    lines.append("| length \\ depth | " + " | ".join(depths) + " |")
    lines.append("|---|" + "---:|" * len(depths))
    for length in sorted(niah, key=float):
        lines.append(f"| {length} | " + " | ".join(fmt(niah[length].get(d)) for d in depths) + " |")
    captions = results.get("captions")
    if captions:
        from ..data.tasks import CAPTION_PROMPT

        lines += [
            "",
            f'Captions ("{CAPTION_PROMPT}", {captions["videos"]} held-out videos, {CAPTION_TOKENS} new tokens at most):',
            f'{captions["ended"]} end with "In total N shapes appear.", {captions["right_count"]} of them with the right N.',
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="videochat-flash demo", description=__doc__.splitlines()[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
